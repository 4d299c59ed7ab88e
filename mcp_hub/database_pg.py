"""The PostgreSQL `Database` (see database.py): psycopg 3 async connections from a psycopg_pool pool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .database import _MIGRATION_LOCK, Dialect, Migration, Params, Row, Transaction, _apply, redacted
from .errors import ConfigError


def _sql(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (a literal `%` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PostgresTransaction:
    def __init__(self, connection: psycopg.AsyncConnection[Row]) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Params = ()) -> int:
        cursor = await self._connection.execute(_sql(sql), tuple(params))
        return cursor.rowcount

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        async with self._connection.cursor() as cursor:
            await cursor.executemany(_sql(sql), [tuple(row) for row in rows])

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        cursor = await self._connection.execute(_sql(sql), tuple(params))
        return await cursor.fetchall()

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        cursor = await self._connection.execute(_sql(sql), tuple(params))
        return await cursor.fetchone()


class PostgresDatabase:
    """`Database` on PostgreSQL; connections are in autocommit mode outside `transaction()`."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10, open_timeout: float = 10.0) -> None:
        self.url = url
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] | None = None
        self._sizes = (min_size, max_size)
        self._open_timeout = open_timeout

    @property
    def pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Row]]:
        if self._pool is None:
            raise RuntimeError("the database is not open")
        return self._pool

    async def __aenter__(self) -> PostgresDatabase:
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] = AsyncConnectionPool(
            self.url, min_size=self._sizes[0], max_size=self._sizes[1], open=False, name="mcp-hub-records",
            kwargs={"autocommit": True, "row_factory": dict_row}, connection_class=psycopg.AsyncConnection[Row])
        try:
            await pool.open(wait=True, timeout=self._open_timeout)
        except (PoolTimeout, psycopg.Error, OSError) as exc:
            await pool.close()
            raise ConfigError(f"cannot reach the records database at {redacted(self.url)}: {type(exc).__name__}") from None
        self._pool = pool
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self.pool.connection() as connection, connection.transaction():
            yield _PostgresTransaction(connection)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        async with self.pool.connection() as connection:
            return await _PostgresTransaction(connection).fetch_all(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        async with self.pool.connection() as connection:
            return await _PostgresTransaction(connection).fetch_one(sql, params)

    async def migrate(self, owner: str, steps: Sequence[Migration]) -> None:
        async with self.transaction() as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            await _apply(tx, self.dialect, owner, steps)
