"""The database of durable records (audit trail, marketplace registrations): SQLite or PostgreSQL.

`open_database(url, path)` picks the backend: a postgresql:// URL (`database_url`) opens a
psycopg 3 connection pool; none, the SQLite file `data_dir/records.sqlite3` in WAL mode. Both
drive their synchronous driver from worker threads, so the event loop never blocks.
Both offer the same small async interface, so an owner of tables writes its SQL once:

- SQL uses `?` placeholders (translated to `%s` for PostgreSQL); write no literal `%` or `?`
  in statements, pass values as parameters. Rows come back as dicts.
- Use portable types: TEXT, BIGINT, INTEGER, DOUBLE PRECISION (epoch seconds for times),
  BOOLEAN (SQLite returns 0/1: wrap in `bool()`). Where the dialects differ, a `Migration`
  carries a PostgreSQL variant.
- Each owner (a name such as "audit") declares its schema as a list of `Migration`s with
  increasing versions; `migrate(owner, steps)` applies those not yet in `schema_migrations`,
  in one transaction, serialized across processes (PostgreSQL: an advisory lock; SQLite:
  BEGIN IMMEDIATE), so that two hubs starting at once migrate once.
- `transaction()` yields a `Transaction`; it commits when the block ends and rolls back on
  an exception. On SQLite every write transaction is BEGIN IMMEDIATE on one connection
  (SQLite has a single writer anyway); reads outside transactions use a second connection.
- `run(steps)` runs a transaction written as a generator of `(method, sql, params)` that
  receives each statement's result: the same code for both dialects, and one call in a worker
  thread instead of one per statement (hot paths). On SQLite with synchronous=normal, when the
  write lock is free, it even runs on the event loop: such a commit is a few write() calls
  into the page cache, cheaper than the hand-off to a thread; WAL checkpoints (which fsync)
  then run in a worker thread every CHECKPOINT_EVERY commits.

Example::

    def bump(key):  # a generator: yields statements, receives their results
        row = yield ("fetch_one", "SELECT n FROM counters WHERE id = ?", (key,))
        yield ("execute", "UPDATE counters SET n = ? WHERE id = ?", (row["n"] + 1, key))
        return row["n"] + 1
    value = await hub.database.run(bump("a"))


    STEPS = [Migration(1, ("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT NOT NULL)",))]
    await hub.database.migrate("notes", STEPS)
    async with hub.database.transaction() as tx:
        await tx.execute("INSERT INTO notes (id, body) VALUES (?, ?)", ("a", "hello"))
    rows = await hub.database.fetch_all("SELECT body FROM notes WHERE id = ?", ("a",))
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.to_thread

from .errors import ConfigError
from .private_files import DIR_MODE, private_file

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("mcp_hub.database")

Row = dict[str, Any]
Params = Sequence[Any]
Dialect = Literal["sqlite", "postgresql"]
T = TypeVar("T")

_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    owner TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (owner, version)
)"""
_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}
_MIGRATION_LOCK = 0x6D63_7068_7562  # PostgreSQL advisory lock key ("mcphub")


# "send": execute, the result not needed (None).
Method = Literal["execute", "send", "execute_many", "fetch_one", "fetch_all"]
Statement = tuple[Method, str, Any]  # (method, sql, params; for execute_many, a list of params)
Steps = Generator[Statement, Any, T]  # a transaction: yields statements, receives their results


async def drive_in(tx: Transaction, steps: Steps[T]) -> T:
    """Run `steps` inside the open transaction `tx`; the generator's return value."""
    try:
        method, sql, params = next(steps)
        while True:
            result: Any = None
            if method == "fetch_one":
                result = await tx.fetch_one(sql, params)
            elif method == "fetch_all":
                result = await tx.fetch_all(sql, params)
            elif method == "execute_many":
                await tx.execute_many(sql, params)
            else:
                result = await tx.execute(sql, params)
            method, sql, params = steps.send(result)
    except StopIteration as stop:
        return stop.value


def drive(steps: Steps[T], do: Callable[[Method, str, Any], Any]) -> T:
    """Run `steps` to the end, each statement through `do`; the generator's return value."""
    try:
        statement = next(steps)
        while True:
            statement = steps.send(do(*statement))
    except StopIteration as stop:
        return stop.value


@dataclass(frozen=True)
class Migration:
    """One versioned schema step of an owner: `statements`, or `postgresql` there when given; then
    `after`, a data step in the same transaction (run once, like the statements)."""

    version: int
    statements: tuple[str, ...]
    postgresql: tuple[str, ...] | None = None
    after: Callable[[Transaction], Awaitable[None]] | None = None

    def for_dialect(self, dialect: Dialect) -> tuple[str, ...]:
        return self.postgresql if dialect == "postgresql" and self.postgresql is not None else self.statements


class Transaction(Protocol):
    """Statements inside one database transaction."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; the number of rows it changed."""

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        """Run one statement once per parameter tuple."""

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None: ...


class Database(Protocol):
    """The durable-records database; an async context manager, opened on the Hub's exit stack."""

    dialect: Dialect

    async def __aenter__(self) -> Database: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    def blocking_writer(self) -> BlockingWriter:
        """A synchronous writer on the same database, for another process (`open_blocking_writer(**where())`)."""

    def where(self) -> dict[str, Any]:
        """What `open_blocking_writer` needs to reach this database (JSON; a URL may hold a password)."""

    async def run(self, steps: Steps[T]) -> T:
        """Run the transaction `steps` (see the module docstring); commit, or roll back if it raises."""

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        """Rows of one query, outside any transaction (it sees committed data)."""

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None: ...

    async def migrate(self, owner: str, steps: Sequence[Migration]) -> None:
        """Apply `owner`'s steps that are not applied yet, in version order."""


def redacted(url: str) -> str:
    """`url` with any password masked, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def open_database(url: str | None, sqlite_path: Path, *, sqlite_synchronous: str = "normal") -> Database:
    """The (unopened) database: PostgreSQL for a postgresql:// `url`, else SQLite at `sqlite_path`.

    `sqlite_synchronous`: "normal" (WAL: a commit survives the process being killed, an OS
    crash or power loss may lose the last ones) or "full" (every commit waits for fsync).
    """
    if url is None:
        return SQLiteDatabase(sqlite_path, synchronous=sqlite_synchronous)
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise ConfigError("database_url must be a postgresql:// URL (unset: SQLite in the data folder)")
    from .database_pg import PostgresDatabase  # psycopg loads only when configured

    return PostgresDatabase(url)


def records_database(settings: Settings) -> Database:
    """The (unopened) records database that `settings` name: `database_url`, else SQLite in the data folder."""
    url = settings.database_url.get_secret_value() if settings.database_url else None
    return open_database(url, settings.records_path, sqlite_synchronous=settings.sqlite_synchronous)


class BlockingWriter(Protocol):
    """Transactions for a process or thread of their own (never the event loop): it blocks on locks."""

    def run(self, steps: Steps[T]) -> T:
        """Run the transaction `steps`; commit, or roll back if it raises."""

    @property
    def lost(self) -> bool:
        """The connection is gone (the server closed it): open a new writer."""

    def close(self) -> None: ...


def open_blocking_writer(url: str | None, sqlite_path: str | None, sqlite_synchronous: str = "normal") -> BlockingWriter:
    """A synchronous writer on the same database as `open_database(url, sqlite_path)` (the audit writer process)."""
    if url is None:
        assert sqlite_path is not None
        return _SQLiteBlockingWriter(Path(sqlite_path), sqlite_synchronous)
    from .database_pg import PostgresBlockingWriter

    return PostgresBlockingWriter(url)


async def _apply(tx: Transaction, dialect: Dialect, owner: str, steps: Sequence[Migration]) -> None:
    versions = [step.version for step in steps]
    if versions != sorted(set(versions)):
        raise ValueError(f"migrations of {owner!r} must have increasing, unique versions")
    await tx.execute(_MIGRATIONS_TABLE)
    done = {row["version"] for row in await tx.fetch_all("SELECT version FROM schema_migrations WHERE owner = ?", (owner,))}
    for step in steps:
        if step.version in done:
            continue
        for statement in step.for_dialect(dialect):
            await tx.execute(statement)
        if step.after is not None:
            await step.after(tx)
        await tx.execute("INSERT INTO schema_migrations (owner, version, applied_at) VALUES (?, ?, ?)",
                         (owner, step.version, time.time()))


# -- SQLite ------------------------------------------------------------------------------------


def _rows(cursor: sqlite3.Cursor) -> list[Row]:
    names = [column[0] for column in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


BUSY_MS = 30_000  # how long a writer waits for another process's write lock (in a worker thread)
CHECKPOINT_EVERY = 256  # inline commits between WAL checkpoints (which fsync: run in a worker thread)


class _SQLiteConnection:
    """One sqlite3 connection used from worker threads (and, for `run`, the event loop), one operation at a time."""

    def __init__(self, path: Path, synchronous: str, *, busy_ms: int = BUSY_MS, autocheckpoint: bool = True) -> None:
        # Autocommit mode (isolation_level=None): transactions are the explicit BEGIN/COMMIT below.
        self.raw = sqlite3.connect(path, timeout=busy_ms / 1000, isolation_level=None, check_same_thread=False)
        self.raw.execute("PRAGMA journal_mode=WAL")
        self.raw.execute(f"PRAGMA synchronous={_SYNCHRONOUS[synchronous]}")
        self.raw.execute(f"PRAGMA busy_timeout={busy_ms}")
        if not autocheckpoint:
            self.raw.execute("PRAGMA wal_autocheckpoint=0")
        self.lock = anyio.Lock(fast_acquire=True)  # no yield to the event loop when it is free (the hot path)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(fn, self.raw)


class _SQLiteTransaction:
    def __init__(self, connection: _SQLiteConnection) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._connection.run(lambda raw: raw.execute(sql, tuple(params)).rowcount)

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        batch = [tuple(row) for row in rows]
        await self._connection.run(lambda raw: raw.executemany(sql, batch))

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._connection.run(lambda raw: _rows(raw.execute(sql, tuple(params))))

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None


def _try_begin(raw: sqlite3.Connection) -> bool:
    """BEGIN IMMEDIATE if no other process holds the write lock (busy_timeout is 0: never waits)."""
    try:
        raw.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:  # "database is locked"
        return False
    return True


def _begin_waiting(raw: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting up to BUSY_MS for another process's write lock (worker threads only)."""
    raw.execute(f"PRAGMA busy_timeout={BUSY_MS}")
    try:
        raw.execute("BEGIN IMMEDIATE")
    finally:
        raw.execute("PRAGMA busy_timeout=0")


def _fetch_one(raw: sqlite3.Connection, sql: str, params: Params) -> Row | None:
    rows = _rows(raw.execute(sql, tuple(params)))
    return rows[0] if rows else None


_SYNC: dict[str, Callable[[sqlite3.Connection, str, Any], Any]] = {
    "execute": lambda raw, sql, params: raw.execute(sql, tuple(params)).rowcount,
    "send": lambda raw, sql, params: raw.execute(sql, tuple(params)) and None,
    "execute_many": lambda raw, sql, rows: raw.executemany(sql, [tuple(row) for row in rows]) and None,
    "fetch_one": _fetch_one,
    "fetch_all": lambda raw, sql, params: _rows(raw.execute(sql, tuple(params))),
}


def _finish(raw: sqlite3.Connection, steps: Steps[T]) -> T:
    """The transaction `steps` after its BEGIN: committed, or rolled back if it raises."""
    try:
        result = drive(steps, lambda method, sql, params: _SYNC[method](raw, sql, params))
    except BaseException:
        raw.execute("ROLLBACK")
        raise
    raw.execute("COMMIT")
    return result


class _SQLiteBlockingWriter:
    """One connection that waits for the write lock (up to BUSY_MS), like any other writer of the file."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self._raw = sqlite3.connect(path, timeout=BUSY_MS / 1000, isolation_level=None)
        self._raw.execute(f"PRAGMA synchronous={_SYNCHRONOUS[synchronous]}")

    def run(self, steps: Steps[T]) -> T:
        self._raw.execute("BEGIN IMMEDIATE")
        return _finish(self._raw, steps)

    @property
    def lost(self) -> bool:
        return False  # a file: every failure is one transaction's; the next may succeed on the same connection

    def close(self) -> None:
        self._raw.close()


class SQLiteDatabase:
    """`Database` in one SQLite file (WAL): a writer connection and a reader connection."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, *, synchronous: str = "normal") -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ConfigError("sqlite_synchronous must be normal or full")
        self.path = path
        self.synchronous = synchronous
        # With synchronous=normal a commit is a few write() calls into the page cache: `run`
        # then commits on the event loop itself, cheaper than a hand-off to a worker thread.
        self.inline = synchronous == "normal"
        self._commits = 0
        self._writer: _SQLiteConnection | None = None
        self._reader: _SQLiteConnection | None = None

    async def __aenter__(self) -> SQLiteDatabase:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)  # the data folder, when new
            private_file(self.path)  # before SQLite creates it with the umask's mode
            self._writer = await anyio.to_thread.run_sync(
                lambda: _SQLiteConnection(self.path, self.synchronous, busy_ms=0, autocheckpoint=not self.inline))
            self._reader = await anyio.to_thread.run_sync(_SQLiteConnection, self.path, self.synchronous)
        except (sqlite3.Error, OSError) as exc:
            await self.__aexit__(None, None, None)
            raise ConfigError(f"cannot open the records database {self.path}: {exc}") from None
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for connection in (self._writer, self._reader):
            if connection is not None:
                async with connection.lock:
                    await connection.run(lambda raw: raw.close())
        self._writer = self._reader = None

    def _open(self, connection: _SQLiteConnection | None) -> _SQLiteConnection:
        if connection is None:
            raise RuntimeError("the database is not open")
        return connection

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        writer = self._open(self._writer)
        async with writer.lock:
            await writer.run(_begin_waiting)
            try:
                yield _SQLiteTransaction(writer)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await writer.run(lambda raw: raw.execute("ROLLBACK"))
                raise
            with anyio.CancelScope(shield=True):  # a commit begun is seen through
                await writer.run(lambda raw: raw.execute("COMMIT"))

    async def run(self, steps: Steps[T]) -> T:
        writer = self._open(self._writer)

        def body(raw: sqlite3.Connection) -> T:  # after BEGIN
            return _finish(raw, steps)

        def whole(raw: sqlite3.Connection) -> T:
            _begin_waiting(raw)
            return body(raw)

        async with writer.lock:
            inline = self.inline and _try_begin(writer.raw)
            result = body(writer.raw) if inline else await writer.run(whole)  # a thread is not cancelled half-way
        if inline:
            self._commits += 1
            if self._commits % CHECKPOINT_EVERY == 0:
                await self._checkpoint()
        return result

    def blocking_writer(self) -> BlockingWriter:
        return _SQLiteBlockingWriter(self.path, self.synchronous)

    def where(self) -> dict[str, Any]:
        return {"url": None, "sqlite_path": str(self.path.resolve()), "sqlite_synchronous": self.synchronous}

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database file (and fsync it), off the event loop, not blocking writers."""
        reader = self._open(self._reader)
        try:
            async with reader.lock:
                await reader.run(lambda raw: raw.execute("PRAGMA wal_checkpoint(PASSIVE)"))
        except sqlite3.Error as exc:  # the commit stands; the next checkpoint catches up
            log.warning("records database: WAL checkpoint failed: %s", type(exc).__name__)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        reader = self._open(self._reader)
        async with reader.lock:
            return await _SQLiteTransaction(reader).fetch_all(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def migrate(self, owner: str, steps: Sequence[Migration]) -> None:
        async with self.transaction() as tx:
            await _apply(tx, self.dialect, owner, steps)
