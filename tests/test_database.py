"""The durable-records database: one contract, run against SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import mcp.types as types
import psycopg
import pytest

from mcp_hub.database import Database, Migration, open_database
from mcp_hub.errors import ConfigError
from mcp_hub.hub import Hub
from mcp_hub.tool_hash import tool_hash

STEPS = [
    Migration(1, ("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT NOT NULL, n BIGINT NOT NULL)",)),
    Migration(2, ("ALTER TABLE notes ADD COLUMN score DOUBLE PRECISION",)),
]


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    async with open_database(url, tmp_path / "records.sqlite3") as db:
        yield db


async def test_migrations_apply_once_in_order(database: Database) -> None:
    await database.migrate("notes", STEPS[:1])
    await database.migrate("notes", STEPS)
    await database.migrate("notes", STEPS)  # nothing left to do: no error for the existing column
    rows = await database.fetch_all("SELECT version FROM schema_migrations WHERE owner = ? ORDER BY version", ("notes",))
    assert [row["version"] for row in rows] == [1, 2]


async def test_migration_versions_must_increase(database: Database) -> None:
    with pytest.raises(ValueError, match="increasing"):
        await database.migrate("bad", [STEPS[1], STEPS[0]])


async def test_transaction_commits_or_rolls_back(database: Database) -> None:
    await database.migrate("notes", STEPS)
    async with database.transaction() as tx:
        await tx.execute_many("INSERT INTO notes (id, body, n) VALUES (?, ?, ?)", [("a", "50% off?", 1), ("b", "x", 2)])
        assert await tx.execute("UPDATE notes SET score = ? WHERE n > ?", (0.5, 1)) == 1
    with pytest.raises(RuntimeError, match="roll back"):
        async with database.transaction() as tx:
            await tx.execute("INSERT INTO notes (id, body, n) VALUES (?, ?, ?)", ("c", "lost", 3))
            raise RuntimeError("roll back")
    rows = await database.fetch_all("SELECT id, body, n, score FROM notes ORDER BY id")
    assert rows == [{"id": "a", "body": "50% off?", "n": 1, "score": None}, {"id": "b", "body": "x", "n": 2, "score": 0.5}]
    assert await database.fetch_one("SELECT id FROM notes WHERE id = ?", ("zz",)) is None


async def test_concurrent_transactions_do_not_lose_updates(database: Database) -> None:
    await database.migrate("notes", STEPS)
    async with database.transaction() as tx:
        await tx.execute("INSERT INTO notes (id, body, n) VALUES (?, ?, ?)", ("counter", "", 0))
    lock = "" if database.dialect == "sqlite" else " FOR UPDATE"

    async def bump() -> None:
        async with database.transaction() as tx:
            row = await tx.fetch_one(f"SELECT n FROM notes WHERE id = ?{lock}", ("counter",))
            assert row is not None
            await tx.execute("UPDATE notes SET n = ? WHERE id = ?", (row["n"] + 1, "counter"))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(bump)
    assert await database.fetch_one("SELECT n FROM notes WHERE id = ?", ("counter",)) == {"n": 20}


def test_only_postgresql_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="postgresql://"):
        open_database("mysql://u:secret@host/db", tmp_path / "x.sqlite3")


async def test_unreachable_postgresql_is_a_config_error_without_the_password() -> None:
    from mcp_hub.database_pg import PostgresDatabase

    with pytest.raises(ConfigError) as caught:
        async with PostgresDatabase("postgresql://u:hunter2@127.0.0.1:1/db", open_timeout=1):
            pass
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


async def test_the_hub_opens_sqlite_in_the_data_folder(hub: Hub) -> None:
    assert hub.database.dialect == "sqlite"
    assert hub.settings.records_path.is_file()
    mode = await hub.database.fetch_one("PRAGMA journal_mode")
    assert mode == {"journal_mode": "wal"}


def test_tool_hash_is_canonical() -> None:
    schema = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}
    one = types.Tool(name="t", description="d", input_schema=schema)
    reordered = types.Tool(name="t", description="d", input_schema=dict(reversed(list(schema.items()))),
                           annotations=types.ToolAnnotations(read_only_hint=True))
    changed = types.Tool(name="t", description="d!", input_schema=schema)
    assert tool_hash(one) == tool_hash(reordered) != tool_hash(changed)
    assert len(tool_hash(one)) == 64


async def test_run_executes_a_generator_transaction(database: Database) -> None:
    await database.migrate("notes", STEPS)

    def add(key: str, fail: bool = False):  # type: ignore[no-untyped-def]
        yield ("execute_many", "INSERT INTO notes (id, body, n) VALUES (?, ?, ?)", [(key, "it's 100%", 1), (f"{key}2", "?", 2)])
        yield ("execute_many", "INSERT INTO notes (id, body, n) VALUES (?, ?, ?)", [])
        yield ("execute_many", "INSERT INTO notes (id, body, n) VALUES (?, ?, ?) ON CONFLICT DO NOTHING", [(key, "x", 5)])
        yield ("send", "UPDATE notes SET n = n + 10 WHERE id = ?", (key,))
        row = yield ("fetch_one", "SELECT n, body FROM notes WHERE id = ?", (key,))
        count = yield ("execute", "UPDATE notes SET score = ? WHERE n < ?", (1.5, 100))
        rows = yield ("fetch_all", "SELECT id FROM notes ORDER BY id", ())
        if fail:
            raise RuntimeError("roll back")
        return row, count, [r["id"] for r in rows]

    assert await database.run(add("a")) == ({"n": 11, "body": "it's 100%"}, 2, ["a", "a2"])
    with pytest.raises(RuntimeError, match="roll back"):
        await database.run(add("b", fail=True))
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)):  # the driver's own: a duplicate key
        await database.run(add("a"))
    rows = await database.fetch_all("SELECT id, n FROM notes ORDER BY id")
    assert rows == [{"id": "a", "n": 11}, {"id": "a2", "n": 2}]
    async with database.transaction() as tx:  # the connection is usable after the failures
        assert await tx.execute("DELETE FROM notes WHERE id = ?", ("a2",)) == 1


def _note(key: str):  # type: ignore[no-untyped-def]
    yield ("send", "INSERT INTO notes (id, body, n) VALUES (?, ?, ?)", (key, "", 0))


async def test_sqlite_run_waits_for_another_writer_off_the_event_loop(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` commits on the event loop only when the write lock is free; else it waits in a thread."""
    import mcp_hub.database as database_module

    monkeypatch.setattr(database_module, "CHECKPOINT_EVERY", 2)
    path = tmp_path / "shared.sqlite3"
    async with open_database(None, path) as one, open_database(None, path) as two:
        await one.migrate("notes", STEPS)
        for key in ("w1", "w2", "w3"):  # inline commits, with a checkpoint in a worker thread
            await two.run(_note(key))
        done = anyio.Event()

        async def write() -> None:
            await two.run(_note("waited"))
            done.set()

        async with anyio.create_task_group() as tg, one.transaction() as tx:  # another connection holds the write lock
            await tx.execute("INSERT INTO notes (id, body, n) VALUES (?, ?, ?)", ("first", "", 0))
            tg.start_soon(write)
            await anyio.wait_all_tasks_blocked()
            assert not done.is_set()  # waiting (in a thread), not failed
        rows = await one.fetch_all("SELECT id FROM notes ORDER BY id")
    assert [row["id"] for row in rows] == ["first", "w1", "w2", "w3", "waited"]
