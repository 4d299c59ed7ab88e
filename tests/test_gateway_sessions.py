"""Gateway sessions: bound to the tenant that opened them (another tenant's key gets 404 for POST, GET and
DELETE), capped per tenant (429) and in all (503), and closed when idle."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import httpx2

from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import ROOT, asgi_client, probe_entry

REGISTRY = {"servers": {"test/probe": probe_entry()}}
ACCEPT = {"accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}


def hub_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings.load(data_dir=tmp_path / "data", connect_timeout=20, restart_backoff=0.05, **overrides)


def auth(key: str, session: str | None = None) -> dict[str, str]:
    headers = {**ACCEPT, "authorization": f"Bearer {key}", "mcp-protocol-version": "2025-11-25"}
    return {**headers, "mcp-session-id": session} if session else headers


async def initialize(http: httpx2.AsyncClient, key: str) -> httpx2.Response:
    return await http.post("/mcp/test/probe", json=INIT, headers={**ACCEPT, "authorization": f"Bearer {key}"})


async def open_session(http: httpx2.AsyncClient, key: str) -> str:
    response = await initialize(http, key)
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await http.post("/mcp/test/probe", json=initialized, headers=auth(key, session))).status_code == 202
    return session


async def test_a_session_answers_only_the_tenant_that_opened_it(tmp_path: Path) -> None:
    async with asgi_client(hub_settings(tmp_path), Registry.from_data(REGISTRY, root=ROOT)) as (http, hub):
        acme, _ = await hub.keys.create("acme", "gw")
        globex, _ = await hub.keys.create("globex", "gw")
        acme_too, _ = await hub.keys.create("acme", "another key of the same tenant")
        session = await open_session(http, acme)
        # Another tenant's key with acme's session id: as if the session did not exist.
        post = await http.post("/mcp/test/probe", json=LIST, headers=auth(globex, session))
        assert post.status_code == 404 and "Session not found" in post.text
        async with http.stream("GET", "/mcp/test/probe", headers=auth(globex, session)) as stream:
            assert stream.status_code == 404
        deleted = await http.delete("/mcp/test/probe", headers=auth(globex, session))
        assert deleted.status_code == 404
        # The session is untouched, for its own tenant (whichever of its keys).
        listed = await http.post("/mcp/test/probe", json=LIST, headers=auth(acme_too, session))
        assert listed.status_code == 200 and '"echo"' in listed.text
        assert (await http.delete("/mcp/test/probe", headers=auth(acme, session))).status_code == 200
        gone = await http.post("/mcp/test/probe", json=LIST, headers=auth(acme, session))
        assert gone.status_code == 404


async def test_sessions_are_capped_per_tenant_and_in_all(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path, gateway_sessions_per_tenant=2, gateway_sessions_max=3)
    async with asgi_client(settings, Registry.from_data(REGISTRY, root=ROOT)) as (http, hub):
        acme, _ = await hub.keys.create("acme", "gw")
        globex, _ = await hub.keys.create("globex", "gw")
        initech, _ = await hub.keys.create("initech", "gw")
        first = await open_session(http, acme)
        await open_session(http, acme)
        refused = await initialize(http, acme)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == -32000
        assert "gateway_sessions_per_tenant" in refused.json()["error"]["message"]
        await open_session(http, globex)  # the cap is per tenant
        full = await initialize(http, initech)  # three open: the total cap
        assert full.status_code == 503 and "Too many open sessions" in full.text
        # Closing one makes room again.
        assert (await http.delete("/mcp/test/probe", headers=auth(acme, first))).status_code == 200
        assert hub.gateway.manager.open_sessions("acme") == 1
        await open_session(http, initech)
        # A 2026-era request opens no session: a tenant at its cap is still served.
        modern = await http.post("/mcp/test/probe", json={"jsonrpc": "2.0", "id": 3, "method": "server/discover"},
                                 headers={**ACCEPT, "authorization": f"Bearer {globex}",
                                          "mcp-protocol-version": "2026-07-28"})
        assert modern.status_code != 429


async def test_idle_sessions_expire(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path, gateway_sessions_per_tenant=1, gateway_session_idle_timeout=0.3)
    async with asgi_client(settings, Registry.from_data(REGISTRY, root=ROOT)) as (http, hub):
        key, _ = await hub.keys.create("acme", "gw")
        session = await open_session(http, key)
        assert (await initialize(http, key)).status_code == 429
        deadline = time.monotonic() + 10
        while hub.gateway.manager.open_sessions("acme") and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        assert (await http.post("/mcp/test/probe", json=LIST, headers=auth(key, session))).status_code == 404
        await open_session(http, key)  # its place is free again
