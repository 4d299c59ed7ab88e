"""The PostgreSQL `Database` (see database.py): psycopg 3 connections from a psycopg_pool pool.

Like the SQLite backend, it drives the synchronous driver from worker threads: one thread
call per statement in `transaction()`, one per whole transaction in `run()` (which also
batches statements into few round trips, see `_run_batched`). Measured on
the audit trail's hot path, this costs the event loop about a fifth of the CPU that the
asyncio driver does (whose every round trip registers and unregisters a reader with the loop).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from .database import (
    _MIGRATION_LOCK,
    BlockingWriter,
    Dialect,
    Method,
    Migration,
    Params,
    Row,
    Steps,
    T,
    Transaction,
    _apply,
    redacted,
)
from .errors import ConfigError

Connection = psycopg.Connection[Row]
CONNECT_TIMEOUT = 10  # seconds the audit writer waits for a connection (unless the URL says): then 503, retried later


_VALUES = re.compile(r"(INSERT\s[^?]+?\sVALUES\s*)(\([^()]*\))\s*", re.IGNORECASE | re.DOTALL)


def _sql(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (a literal `%` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _do(connection: Connection, method: Method, sql: str, params: Any) -> Any:
    """One statement on `connection`, in the calling (worker) thread."""
    if method == "execute_many":
        with connection.cursor() as cursor:
            cursor.executemany(_sql(sql), [tuple(row) for row in params])
        return None
    cursor = connection.execute(_sql(sql), tuple(params))
    if method == "fetch_one":
        return cursor.fetchone()
    if method == "fetch_all":
        return cursor.fetchall()
    return cursor.rowcount if method == "execute" else None


def _many(cursor: psycopg.ClientCursor[Any], sql: str, rows: Sequence[Params]) -> list[str]:
    """`sql` bound to each of `rows`; an `INSERT … VALUES (?, …)` as one multi-row INSERT, which the
    server parses and plans once (statement by statement, that was most of its CPU per audit record)."""
    match = _VALUES.fullmatch(sql)
    if match is None:
        return [cursor.mogrify(_sql(sql), tuple(row)) for row in rows]
    head, group = match[1], _sql(match[2])
    return [head + ", ".join(cursor.mogrify(group, tuple(row)) for row in rows)] if rows else []


def _run_batched(connection: Connection, steps: Steps[T]) -> T:
    """`steps` as one transaction in few round trips.

    Statements whose result is not needed ("send", "execute_many", BEGIN, COMMIT) wait and
    go out with the next one whose result is (or with the COMMIT): several statements in one
    query, bound client-side by psycopg (`ClientCursor.mogrify`, its own quoting). A typical
    read-then-write transaction is two round trips instead of one per statement.
    """
    cursor = psycopg.ClientCursor(connection)
    pending: list[str] = ["BEGIN"]

    def flush(sql: str) -> None:
        cursor.execute("; ".join([*pending, sql]))
        pending.clear()
        while cursor.nextset():  # onto the last statement's result
            pass

    try:
        method, sql, params = next(steps)
        while True:
            result: Any = None
            if method == "send":
                pending.append(cursor.mogrify(_sql(sql), tuple(params)))
            elif method == "execute_many":
                pending.extend(_many(cursor, sql, params))
            else:
                flush(cursor.mogrify(_sql(sql), tuple(params)))
                result = cursor.rowcount if method == "execute" else \
                    cursor.fetchone() if method == "fetch_one" else cursor.fetchall()
            method, sql, params = steps.send(result)
    except StopIteration as stop:
        flush("COMMIT")
        return stop.value
    except BaseException:
        if not connection.broken and connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            connection.execute("ROLLBACK")
        raise


class _PostgresTransaction:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def _run(self, method: Method, sql: str, params: Any) -> Any:
        return await anyio.to_thread.run_sync(_do, self._connection, method, sql, params)

    async def execute(self, sql: str, params: Params = ()) -> int:
        return int(await self._run("execute", sql, params))

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        await self._run("execute_many", sql, list(rows))

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        rows: list[Row] = await self._run("fetch_all", sql, params)
        return rows

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = await self._run("fetch_one", sql, params)
        return row


class PostgresBlockingWriter:
    """One connection of its own (autocommit outside the explicit transactions), for the audit writer process."""

    def __init__(self, url: str) -> None:
        try:
            options: dict[str, Any] = {} if "connect_timeout" in url else {"connect_timeout": CONNECT_TIMEOUT}
            self._connection: Connection = psycopg.Connection.connect(url, autocommit=True, row_factory=dict_row,
                                                                      **options)
        except psycopg.Error as exc:
            raise ConfigError(f"cannot connect to the records database {redacted(url)}: {type(exc).__name__}") from None

    def run(self, steps: Steps[T]) -> T:
        return _run_batched(self._connection, steps)

    @property
    def lost(self) -> bool:
        return bool(self._connection.broken or self._connection.closed)

    def close(self) -> None:
        self._connection.close()


class PostgresDatabase:
    """`Database` on PostgreSQL; connections are in autocommit mode outside transactions."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10, open_timeout: float = 10.0) -> None:
        self.url = url
        self._pool: ConnectionPool[Connection] | None = None
        self._sizes = (min_size, max_size)
        self._open_timeout = open_timeout

    @property
    def pool(self) -> ConnectionPool[Connection]:
        if self._pool is None:
            raise RuntimeError("the database is not open")
        return self._pool

    async def __aenter__(self) -> PostgresDatabase:
        pool: ConnectionPool[Connection] = ConnectionPool(
            self.url, min_size=self._sizes[0], max_size=self._sizes[1], open=False, name="mcp-hub-records",
            kwargs={"autocommit": True, "row_factory": dict_row}, connection_class=Connection,
            # A connection the server closed while idle in the pool (restart, pg_terminate_backend) is
            # replaced when it is taken, not handed to a query that then fails.
            check=ConnectionPool.check_connection)
        try:
            await anyio.to_thread.run_sync(lambda: pool.open(wait=True, timeout=self._open_timeout))
        except (PoolTimeout, psycopg.Error, OSError) as exc:
            await anyio.to_thread.run_sync(pool.close)
            raise ConfigError(f"cannot reach the records database at {redacted(self.url)}: {type(exc).__name__}") from None
        self._pool = pool
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await anyio.to_thread.run_sync(pool.close)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        pool = self.pool
        connection = await anyio.to_thread.run_sync(pool.getconn)
        try:
            await anyio.to_thread.run_sync(connection.execute, "BEGIN")
            try:
                yield _PostgresTransaction(connection)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(connection.rollback)
                raise
            with anyio.CancelScope(shield=True):  # a commit begun is seen through
                await anyio.to_thread.run_sync(connection.commit)
        finally:
            pool.putconn(connection)

    async def run(self, steps: Steps[T]) -> T:
        def whole() -> T:
            with self.pool.connection() as connection:
                return _run_batched(connection, steps)

        return await anyio.to_thread.run_sync(whole)  # not cancellable half-way

    def blocking_writer(self) -> BlockingWriter:
        return PostgresBlockingWriter(self.url)

    def where(self) -> dict[str, Any]:
        return {"url": self.url, "sqlite_path": None}

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        def query() -> list[Row]:
            with self.pool.connection() as connection:
                rows: list[Row] = _do(connection, "fetch_all", sql, params)
                return rows

        return await anyio.to_thread.run_sync(query)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def migrate(self, owner: str, steps: Sequence[Migration]) -> None:
        async with self.transaction() as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            await _apply(tx, self.dialect, owner, steps)
