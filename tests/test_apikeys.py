"""Hub API keys in the records database: shared by every hub on it, imported from the legacy file."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx2
import pytest

from mcp_hub import apikeys
from mcp_hub.apikeys import KeyRecord, open_key_store
from mcp_hub.database import SQLiteDatabase
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import asgi_client, create_key
from .test_api import assert_error

CACHE = 0.5  # the stores' cache time in these tests (5 s in service)
LEGACY_SCHEMA = """CREATE TABLE api_keys (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '', role TEXT NOT NULL DEFAULT 'member', created_at REAL NOT NULL, revoked_at REAL)"""


async def status(http: httpx2.AsyncClient, key: str | None = None) -> int:
    return (await http.get("/v1/servers", headers={"x-api-key": key} if key else {})).status_code


async def becomes(http: httpx2.AsyncClient, key: str | None, expected: int) -> float:
    """Seconds until `GET /v1/servers` with `key` answers `expected` (fails after a deadline)."""
    start = time.monotonic()
    with anyio.fail_after(CACHE + 5):
        while await status(http, key) != expected:
            await anyio.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture(params=["sqlite", "postgresql"])
def two_settings(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, Settings]:
    """Settings of two hubs on one records database: PostgreSQL with separate data folders, or one SQLite file."""
    monkeypatch.setattr(apikeys, "CACHE_SECONDS", CACHE)
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        return (Settings.load(data_dir=tmp_path / "a", database_url=url, restart_backoff=0.05),
                Settings.load(data_dir=tmp_path / "b", database_url=url, restart_backoff=0.05))
    shared = Settings.load(data_dir=tmp_path / "data", restart_backoff=0.05)
    return shared, shared


async def test_keys_and_revocations_reach_every_hub(two_settings: tuple[Settings, Settings], registry: Registry) -> None:
    settings_a, settings_b = two_settings
    async with asgi_client(settings_a, registry) as (http_a, hub_a), asgi_client(settings_b, registry) as (http_b, hub_b):
        assert await status(http_a) == 200 and await status(http_b) == 200  # no key anywhere: open
        key, record = await hub_a.keys.create("acme", "shared")
        assert await status(http_a) == 401  # the creating hub closes at once
        assert await becomes(http_b, None, 401) < CACHE + 1  # the other within the cache time
        assert await status(http_b, key) == 200 and await status(http_a, key) == 200
        assert [r.id for r in await hub_b.keys.list()] == [record.id]

        other, other_record = await hub_b.keys.create("other")  # keeps the hubs closed below
        assert await status(http_a, other) == 200
        revoked = await hub_b.keys.revoke(record.id)
        assert revoked.revoked_at is not None
        assert await status(http_b, key) == 401  # the revoking hub at once
        assert await becomes(http_a, key, 401) < CACHE + 1  # the other within the cache time
        assert await status(http_a, other) == 200

        await hub_a.keys.revoke(other_record.id)
        assert await hub_b.keys.active_count() == 0
        # Revoking the last key does not open the hub: not on the revoking hub (its cache was
        # dropped), nor on a hub that starts now (nothing cached).
        assert await status(http_a) == 401
        assert not await hub_b.keys.is_open()
    async with asgi_client(settings_b, registry) as (http_c, hub_c):
        assert await status(http_c) == 401 and not await hub_c.keys.is_open()


async def test_an_unreadable_key_database_answers_503_and_never_opens_the_hub(settings: Settings,
                                                                              registry: Registry) -> None:
    key = await create_key(settings, "acme")
    async with asgi_client(settings, registry) as (http, hub):
        working = hub.keys.database
        hub.keys.database = SQLiteDatabase(settings.records_path)  # never opened: every query fails
        body = assert_error(await http.get("/v1/servers"), 503, "keys_unavailable")
        assert "records database is unavailable" in body["message"]
        assert_error(await http.get("/v1/servers", headers={"x-api-key": key}), 503, "keys_unavailable")
        assert (await http.get("/healthz")).status_code == 200  # public, no key: no lookup
        hub.keys.database = working
        assert_error(await http.get("/v1/servers"), 401, "invalid_api_key")
        assert (await http.get("/v1/servers", headers={"x-api-key": key})).status_code == 200


def write_legacy(path: Path, rows: list[tuple[object, ...]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute(LEGACY_SCHEMA)
        db.executemany("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    db.close()


async def test_legacy_keys_are_imported_once(settings: Settings, registry: Registry,
                                             caplog: pytest.LogCaptureFixture) -> None:
    active, revoked = "mh_0a0a0a0a0a0a_activesecret", "mh_0b0b0b0b0b0b_revokedsecret"
    write_legacy(settings.keys_path, [
        ("0a0a0a0a0a0a", apikeys._digest(active), "acme", "ci", "admin", 1_700_000_000.5, None),
        ("0b0b0b0b0b0b", apikeys._digest(revoked), "other", "", "member", 1_700_000_100.0, 1_700_000_200.0)])
    caplog.set_level(logging.INFO, logger="mcp_hub.apikeys")
    async with asgi_client(settings, registry) as (http, hub):
        assert await status(http) == 401  # an imported active key: the hub is not open
        assert await status(http, active) == 200 and await status(http, revoked) == 401
        assert await hub.keys.list() == [
            KeyRecord("0a0a0a0a0a0a", "acme", "ci", "admin", 1_700_000_000.5, None),
            KeyRecord("0b0b0b0b0b0b", "other", "", "member", 1_700_000_100.0, 1_700_000_200.0)]
        await hub.keys.revoke("0a0a0a0a0a0a")
    imported = [r.getMessage() for r in caplog.records if "imported" in r.getMessage()]
    assert len(imported) == 1 and "imported 2 API key(s) (1 active)" in imported[0]
    assert str(settings.keys_path) in imported[0] and "secret" not in imported[0]

    caplog.clear()
    async with open_key_store(settings) as keys:  # the next start: nothing imported again, the revocation stays
        assert await keys.active_count() == 0 and len(await keys.list()) == 2
        assert await keys.lookup(active) is None
    assert not [r for r in caplog.records if "imported" in r.getMessage()]


async def test_legacy_file_without_keys_is_ignored(settings: Settings) -> None:
    write_legacy(settings.keys_path, [])
    async with open_key_store(settings) as keys:
        assert await keys.list() == [] and await keys.is_open()


def test_cli_keys_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    """`mcp-hub keys` works on the database of `--database-url` or MCP_HUB_DATABASE_URL, whatever the data folder."""
    base = [sys.executable, "-m", "mcp_hub", "keys"]
    created = subprocess.run([*base, "create", "--tenant", "acme", "--database-url", postgres_url,
                              "--data-dir", str(tmp_path / "a")], capture_output=True, text=True, timeout=60)
    assert created.returncode == 0 and created.stdout.startswith("mh_"), created.stderr
    key_id = created.stdout.split("_")[1]
    env = {**os.environ, "MCP_HUB_DATABASE_URL": postgres_url}
    listed = subprocess.run([*base, "list", "--json", "--data-dir", str(tmp_path / "b")], capture_output=True,
                            text=True, timeout=60, env=env)
    assert listed.returncode == 0, listed.stderr
    assert [(r["id"], r["tenant"], r["revoked_at"]) for r in json.loads(listed.stdout)] == [(key_id, "acme", None)]
    assert not (tmp_path / "b" / "records.sqlite3").exists()  # PostgreSQL, not the SQLite default
