"""A read-only SQLite connection with limits, for the sql server.

Three layers keep it read-only: the file is opened with ``mode=ro`` (the sample
lives in memory), ``PRAGMA query_only`` is on, and an authorizer refuses every
action but reading. The authorizer also admits only the reviewed SQL functions of
`ALLOWED_FUNCTIONS`: built-ins such as ``fts3_tokenizer`` (which hands out a native
pointer and can replace a tokenizer) or ``load_extension`` are refused by name, and so
is anything a future SQLite adds until it is reviewed. Queries also get a wall-clock
budget (a progress handler interrupts them) and a cap on string/blob sizes.
"""

from __future__ import annotations

import base64
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

SAMPLE_SCRIPT = "bookstore.sql"

# Pragmas that only read the schema; everything else (they can write) is refused.
_READ_PRAGMAS = frozenset({"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"})
_READ_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})
# Functions a query may call: pure computations on values, reviewed one by one. Not here, on
# purpose: fts3_tokenizer (native pointers), load_extension, fts5 (pointer passing), optimize
# and the R-tree debugging functions, sqlite_compileoption_*, sqlite_log, changes/total_changes.
ALLOWED_FUNCTIONS = frozenset({
    # core scalar
    "abs", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex", "if", "ifnull", "iif", "instr",
    "last_insert_rowid", "length", "like", "likelihood", "likely", "lower", "ltrim", "max", "min", "nullif",
    "octet_length", "printf", "quote", "random", "randomblob", "replace", "round", "rtrim", "sign", "soundex",
    "sqlite_version", "substr", "substring", "trim", "typeof", "unhex", "unicode", "unistr", "unlikely", "upper",
    "zeroblob",
    # aggregate and window
    "avg", "count", "group_concat", "string_agg", "sum", "total", "median", "percentile", "percentile_cont",
    "percentile_disc", "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
    # date and time
    "date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff", "current_date", "current_time",
    "current_timestamp",
    # math
    "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos", "cosh", "degrees", "exp",
    "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow", "power", "radians", "sin", "sinh", "sqrt", "tan",
    "tanh", "trunc",
    # JSON (json_each and json_tree are table-valued: reading them is a read, not a call)
    "->", "->>", "json", "json_array", "json_array_length", "json_error_position", "json_extract", "json_insert",
    "json_object", "json_patch", "json_pretty", "json_quote", "json_remove", "json_replace", "json_set", "json_type",
    "json_valid", "json_group_array", "json_group_object", "jsonb", "jsonb_array", "jsonb_extract", "jsonb_insert",
    "jsonb_object", "jsonb_patch", "jsonb_remove", "jsonb_replace", "jsonb_set", "jsonb_group_array",
    "jsonb_group_object",
    # querying a full-text table of a served file (not optimize, which rewrites its index)
    "match", "snippet", "offsets", "matchinfo", "highlight", "bm25",
})
_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_temp_master"})
_LEADING_NOISE = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_MAX_BLOB_INLINE = 1024


class QueryError(Exception):
    """A query was refused or failed; the message is meant for the caller."""


@dataclass(frozen=True)
class Column:
    """One column of a table or view."""

    name: str
    type: str
    not_null: bool
    default: str | None
    primary_key: bool


@dataclass(frozen=True)
class TableInfo:
    """What `describe` knows about a table or view."""

    name: str
    kind: str
    columns: list[Column]
    sql: str | None
    row_count: int | None
    foreign_keys: list[str]


@dataclass(frozen=True)
class Rows:
    """A query result, cut at the row limit."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    if action in _READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:  # arg2 is the function's name
        return sqlite3.SQLITE_OK if (arg2 or "").lower() in ALLOWED_FUNCTIONS else sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_UPDATE and arg1 in _SCHEMA_TABLES:
        # SQLite reports its own schema loading (e.g. for pragma_table_info()) as an
        # update of sqlite_master; a real write there is still stopped by query_only.
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _READ_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _cell(value: Any) -> Any:
    """JSON-friendly cell: blobs become base64 (or a size note when large)."""
    if isinstance(value, bytes):
        if len(value) > _MAX_BLOB_INLINE:
            return f"<blob: {len(value)} bytes>"
        return "base64:" + base64.b64encode(value).decode("ascii")
    return value


class ReadOnlyDatabase:
    """One SQLite connection shared by worker threads, one statement at a time."""

    def __init__(self, connection: sqlite3.Connection, *, label: str, timeout_seconds: float) -> None:
        self.label = label
        self._connection = connection
        self._lock = threading.Lock()
        self._timeout = timeout_seconds
        self._deadline = 0.0
        connection.execute("PRAGMA query_only = ON")
        connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 10_000_000)
        connection.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, 100_000)
        connection.set_authorizer(_authorize)
        connection.set_progress_handler(self._over_time, 10_000)

    @classmethod
    def sample(cls, *, timeout_seconds: float = 5.0) -> ReadOnlyDatabase:
        """The bundled bookstore database, built in memory from its SQL script."""
        script = resources.files("mcp_hub_servers.sql").joinpath("data", SAMPLE_SCRIPT).read_text("utf-8")
        connection = sqlite3.connect(":memory:", check_same_thread=False)
        connection.executescript(script)
        return cls(connection, label="sample bookstore database", timeout_seconds=timeout_seconds)

    @classmethod
    def open_file(cls, path: str | Path, *, timeout_seconds: float = 5.0) -> ReadOnlyDatabase:
        """Open an existing SQLite file read-only.

        Raises:
            ValueError: if the file is missing or is not an SQLite database.
        """
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise ValueError(f"SQLite database file not found: {file}")
        connection = sqlite3.connect(f"{file.as_uri()}?mode=ro", uri=True, check_same_thread=False)
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            connection.close()
            raise ValueError(f"{file} is not a readable SQLite database: {exc}") from None
        return cls(connection, label=file.name, timeout_seconds=timeout_seconds)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._connection.close()

    def _over_time(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0

    def _run(self, sql: str, params: Any = (), *, max_rows: int | None = None) -> Rows:
        with self._lock:
            self._deadline = time.monotonic() + self._timeout
            try:
                cursor = self._connection.execute(sql, params)
                try:
                    fetched = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows + 1)
                    columns = [d[0] for d in cursor.description or ()]
                finally:
                    cursor.close()
            except (sqlite3.Error, ValueError, OverflowError) as exc:
                raise QueryError(self._explain(exc)) from None
        truncated = max_rows is not None and len(fetched) > max_rows
        rows = [[_cell(v) for v in row] for row in fetched[:max_rows]]
        return Rows(columns=columns, rows=rows, truncated=truncated)

    def _explain(self, exc: Exception) -> str:
        message = str(exc)
        if message == "interrupted":
            return f"the query ran longer than {self._timeout:g} s and was stopped"
        if message.startswith("not authorized to use function: "):
            name = message.removeprefix("not authorized to use function: ")[:64]
            return (f"the SQL function {name!r} is not allowed here; allowed: core scalar, aggregate, window, "
                    "date/time, math and JSON functions")
        if message == "not authorized" or "readonly database" in message:
            return "only reading is allowed: the statement tried to change, attach or load something"
        return message

    def tables(self) -> list[tuple[str, str]]:
        """(name, "table" | "view") for every user table and view, by name."""
        result = self._run(
            "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
        )
        return [(row[0], row[1]) for row in result.rows]

    def describe(self, table: str) -> TableInfo:
        """Columns, CREATE statement, row count and foreign keys of a table or view (any letter case).

        Raises:
            QueryError: if there is no such table or view.
        """
        known = {name.lower(): (name, kind) for name, kind in self.tables()}
        if table.strip().lower() not in known:
            raise QueryError(f"no table or view named {table!r}; tables: {', '.join(n for n, _ in known.values())}")
        name, kind = known[table.strip().lower()]
        quoted = '"' + name.replace('"', '""') + '"'
        info = self._run(f"PRAGMA table_info({quoted})").rows
        columns = [Column(r[1], r[2] or "", bool(r[3]), r[4], bool(r[5])) for r in info]
        sql = self._run("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).rows
        keys = self._run(f"PRAGMA foreign_key_list({quoted})").rows
        foreign = [f"{r[3]} -> {r[2]}({r[4]})" for r in keys]
        try:
            count = self._run(f"SELECT count(*) FROM {quoted}").rows[0][0]
        except QueryError:
            count = None  # too slow to count; the description is still useful
        return TableInfo(name, kind, columns, sql[0][0] if sql else None, count, foreign)

    def query(self, sql: str, params: list[Any] | dict[str, Any] | None, max_rows: int) -> Rows:
        """Run one SELECT (or WITH ... SELECT, or VALUES) statement.

        Raises:
            QueryError: for other statements, SQL errors, or a query over its time budget.
        """
        body = _LEADING_NOISE.sub("", sql)
        first = body.split(None, 1)[0].upper() if body.strip() else ""
        first = re.split(r"\W", first, maxsplit=1)[0]
        if first not in ("SELECT", "WITH", "VALUES"):
            raise QueryError(
                "only read queries are allowed: the statement must start with SELECT or WITH "
                f"(got {first or 'nothing'!r})"
            )
        return self._run(sql, params if params is not None else (), max_rows=max_rows)
