"""SQLite storage of notes, partitioned by owner.

The owner is the SHA-256 hex digest of the caller's credential token: the
token itself is never stored. Note numbers are per owner (1, 2, 3, ...) and are
never reused, so one owner cannot infer anything about another's notes. Several
processes may share one database file (WAL mode, busy timeout).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS owners (
    owner       TEXT PRIMARY KEY,          -- sha256 hex of the credential token
    last_number INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS notes (
    owner       TEXT NOT NULL,
    number      INTEGER NOT NULL,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (owner, number)
);
CREATE TABLE IF NOT EXISTS note_tags (
    owner       TEXT NOT NULL,
    number      INTEGER NOT NULL,
    tag         TEXT NOT NULL,
    PRIMARY KEY (owner, number, tag),
    FOREIGN KEY (owner, number) REFERENCES notes(owner, number) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS note_tags_by_tag ON note_tags(owner, tag);
"""


def owner_id(token: str) -> str:
    """The stored identity for a credential token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Note:
    """One stored note."""

    id: int
    title: str
    body: str
    tags: list[str]
    created_at: str
    updated_at: str


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class NotesStore:
    """The notes of one owner in one SQLite file."""

    def __init__(self, db_path: str | Path, owner: str) -> None:
        self.db_path = Path(db_path).expanduser()
        self._owner = owner
        self._ready = False
        self._init_lock = threading.Lock()

    @contextmanager
    def _connect(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A fresh connection per operation (tools run in worker threads), in one transaction."""
        self._ensure_schema()
        with closing(sqlite3.connect(self.db_path, timeout=10, isolation_level=None)) as conn:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _ensure_schema(self) -> None:
        with self._init_lock:
            if self._ready:
                return
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.db_path, timeout=10, isolation_level=None)) as conn:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(_SCHEMA)
            self._ready = True

    def _tags(self, conn: sqlite3.Connection, numbers: list[int]) -> dict[int, list[str]]:
        tags: dict[int, list[str]] = {n: [] for n in numbers}
        if numbers:
            marks = ",".join("?" * len(numbers))
            rows = conn.execute(
                f"SELECT number, tag FROM note_tags WHERE owner = ? AND number IN ({marks}) ORDER BY tag",
                (self._owner, *numbers),
            )
            for number, tag in rows:
                tags[number].append(tag)
        return tags

    def _notes(self, conn: sqlite3.Connection, where: str, params: tuple, tail: str = "") -> list[Note]:
        rows = conn.execute(
            f"SELECT number, title, body, created_at, updated_at FROM notes WHERE owner = ? {where} {tail}",
            (self._owner, *params),
        ).fetchall()
        tags = self._tags(conn, [r[0] for r in rows])
        return [Note(r[0], r[1], r[2], tags[r[0]], r[3], r[4]) for r in rows]

    def add(self, title: str, body: str, tags: list[str]) -> Note:
        """Store a new note and return it with its number."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._connect(write=True) as conn:
            conn.execute(
                "INSERT INTO owners (owner, last_number) VALUES (?, 1) "
                "ON CONFLICT(owner) DO UPDATE SET last_number = last_number + 1",
                (self._owner,),
            )
            (number,) = conn.execute("SELECT last_number FROM owners WHERE owner = ?", (self._owner,)).fetchone()
            conn.execute(
                "INSERT INTO notes (owner, number, title, body, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (self._owner, number, title, body, now, now),
            )
            conn.executemany(
                "INSERT INTO note_tags (owner, number, tag) VALUES (?, ?, ?)",
                [(self._owner, number, tag) for tag in tags],
            )
        return Note(number, title, body, sorted(tags), now, now)

    def get(self, number: int) -> Note | None:
        """The note with this number, or None."""
        with self._connect() as conn:
            found = self._notes(conn, "AND number = ?", (number,))
        return found[0] if found else None

    def listing(self, tag: str | None, limit: int, offset: int) -> tuple[list[Note], int]:
        """Newest first, optionally only those with `tag`; also returns the total count."""
        where, params = (
            ("", ())
            if tag is None
            else (
                "AND number IN (SELECT number FROM note_tags WHERE owner = notes.owner AND tag = ?)",
                (tag,),
            )
        )
        with self._connect() as conn:
            (total,) = conn.execute(
                f"SELECT count(*) FROM notes WHERE owner = ? {where}", (self._owner, *params)
            ).fetchone()
            notes = self._notes(conn, where, (*params, limit, offset), "ORDER BY number DESC LIMIT ? OFFSET ?")
        return notes, total

    def search(self, words: list[str], limit: int) -> list[Note]:
        """Notes whose title, body or tags contain every word (case-insensitive), newest first."""
        clauses = []
        params: list[str] = []
        for word in words:
            pattern = f"%{_escape_like(word)}%"
            clauses.append(
                "(title LIKE ? ESCAPE '\\' OR body LIKE ? ESCAPE '\\' OR number IN "
                "(SELECT number FROM note_tags WHERE owner = notes.owner AND tag LIKE ? ESCAPE '\\'))"
            )
            params += [pattern, pattern, pattern]
        with self._connect() as conn:
            return self._notes(conn, "AND " + " AND ".join(clauses), (*params, limit), "ORDER BY number DESC LIMIT ?")

    def delete(self, number: int) -> bool:
        """Delete a note; False if there was none with this number."""
        with self._connect(write=True) as conn:
            cursor = conn.execute("DELETE FROM notes WHERE owner = ? AND number = ?", (self._owner, number))
            return cursor.rowcount > 0
