"""Hub API keys: open on loopback without keys, 401 once keys exist, tenants kept apart."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from mcp_hub.apikeys import KeyStore, open_key_store
from mcp_hub.authentication import is_loopback, presented_key
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import ROOT, asgi_client, owned, probe_entry
from .test_api import assert_error


@pytest.fixture
async def keys(settings: Settings) -> AsyncIterator[KeyStore]:
    """A key store of its own on the hub's records database (as another hub, or the CLI, has)."""
    async with owned(open_key_store(settings)) as store:
        yield store


@pytest.fixture
async def secured(settings: Settings, keys: KeyStore) -> AsyncIterator[httpx2.AsyncClient]:
    """A hub whose store already had a key at start-up: authentication is on.

    The probe runs unsandboxed: the tests tell sessions apart by the child's host pid (every
    sandboxed child has its own PID namespace, where its pid is the same small number)."""
    await keys.create("bootstrap")
    registry = Registry.from_data({"servers": {"test/probe": probe_entry(sandbox=False)}}, root=ROOT)
    async with asgi_client(settings, registry) as (client, hub):
        client.hub_keys = hub.keys  # type: ignore[attr-defined]
        yield client


async def test_open_without_keys(api: httpx2.AsyncClient) -> None:
    assert (await api.get("/v1/servers")).status_code == 200
    assert (await api.get("/v1/servers", headers={"Authorization": "Bearer whatever"})).status_code == 200


async def test_keys_required_once_one_exists(secured: httpx2.AsyncClient, keys: KeyStore) -> None:
    body = assert_error(await secured.get("/v1/servers"), 401, "invalid_api_key")
    assert "API key is required" in body["message"]
    assert_error(await secured.get("/v1/servers", headers={"Authorization": "Bearer mh_nope"}), 401, "invalid_api_key")
    key, record = await keys.create("acme", name="test")
    assert (await secured.get("/v1/servers", headers={"Authorization": f"Bearer {key}"})).status_code == 200
    assert (await secured.get("/v1/servers", headers={"x-api-key": key})).status_code == 200
    assert (await secured.get("/healthz")).status_code == 200  # public
    await secured.hub_keys.revoke(record.id)  # type: ignore[attr-defined]  # the hub's own store: no cache delay
    assert_error(await secured.get("/v1/servers", headers={"x-api-key": key}), 401, "invalid_api_key")


async def test_tenants_get_separate_sessions(secured: httpx2.AsyncClient, keys: KeyStore) -> None:
    alice, _ = await keys.create("alice")
    bob, _ = await keys.create("bob")

    async def pid(key: str) -> int:
        response = await secured.post("/v1/tools/call", json={"server": "test/probe", "tool": "pid"},
                                      headers={"Authorization": f"Bearer {key}"})
        return response.json()["result"]["result"]

    first_alice = await pid(alice)
    assert await pid(alice) == first_alice
    assert await pid(bob) != first_alice


async def test_keys_are_stored_hashed(keys: KeyStore, settings: Settings) -> None:
    key, record = await keys.create("acme", role="admin")
    assert key.startswith(f"mh_{record.id}_")
    files = list(settings.records_path.parent.glob(f"{settings.records_path.name}*"))  # with -wal
    assert files and not any(key.encode() in f.read_bytes() for f in files)
    assert record.id.encode() in b"".join(f.read_bytes() for f in files)  # the search could find it
    assert [r.tenant for r in await keys.list()] == ["acme"]
    assert await keys.active_count() == 1


def test_key_presentation_and_loopback() -> None:
    assert presented_key({b"authorization": b"Bearer abc"}) == "abc"
    assert presented_key({b"authorization": b"bearer  abc "}) == "abc"
    assert presented_key({b"x-api-key": b"xyz"}) == "xyz"
    assert presented_key({b"authorization": b"Basic abc"}) is None
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "::", "example.com"))


def test_cli_keys_and_refusal_to_bind_openly(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "mcp_hub"]
    data = ["--data-dir", str(tmp_path)]
    refused = subprocess.run([*base, "serve", "--host", "0.0.0.0", "--port", "0", *data],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "refusing to serve on 0.0.0.0" in refused.stderr
    created = subprocess.run([*base, "keys", "create", "--tenant", "acme", "--name", "ci", *data],
                             capture_output=True, text=True, timeout=60)
    assert created.returncode == 0 and created.stdout.startswith("mh_")
    key_id = created.stdout.split("_")[1]
    listed = subprocess.run([*base, "keys", "list", *data], capture_output=True, text=True, timeout=60)
    assert key_id in listed.stdout and "acme" in listed.stdout and created.stdout.strip() not in listed.stdout
    revoked = subprocess.run([*base, "keys", "revoke", key_id, *data], capture_output=True, text=True, timeout=60)
    assert revoked.returncode == 0 and "revoked" in revoked.stderr
    unknown = subprocess.run([*base, "keys", "revoke", "nope", *data], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "no API key" in unknown.stderr
