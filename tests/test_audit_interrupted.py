"""A hub killed (SIGKILL) while a tool call runs leaves that call in the audit trail: its intent was committed
before the call was sent, and once the dead instance's heartbeat lapses a hub records it as `interrupted`
(SQLite and PostgreSQL, real `mcp-hub serve` processes). Normal calls leave one `completed` record and no intent."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from mcp_hub.audit import AuditStore
from mcp_hub.database import Database, open_database
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import ROOT, asgi_client, free_port, probe_entry, spawn, stop
from .model_fixtures import Call, Reply, ScriptedModel

DEADLINE = 60.0


def serve(tmp_path: Path, database_url: str | None) -> tuple[str, Any]:
    registry = tmp_path / "registry.yaml"
    # Unsandboxed: the sleep tool signals through a marker file in the test's folder.
    registry.write_text(json.dumps({"servers": {"test/plain": probe_entry(sandbox=False)}}))
    port = free_port()
    env = {"MCP_HUB_AUDIT_INSTANCE_TIMEOUT": "1"}
    if database_url:
        env["MCP_HUB_DATABASE_URL"] = database_url
    proc = spawn([sys.executable, "-m", "mcp_hub", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
                  "--registry", str(registry)], port, tmp_path / "hub.log", env=env)
    return f"http://127.0.0.1:{port}", proc


async def intents(database: Database) -> list[dict[str, Any]]:
    return await database.fetch_all("SELECT id, tenant, instance FROM audit_intents")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else None


async def test_a_call_cut_short_by_sigkill_is_recorded_as_interrupted(tmp_path: Path, database_url: str | None) -> None:
    marker = tmp_path / "sleep-started"
    url, proc = serve(tmp_path, database_url)
    try:
        async with httpx2.AsyncClient(base_url=url, timeout=90) as http:
            done = await http.post("/v1/tools/call", json={"server": "test/plain", "tool": "echo",
                                                           "arguments": {"text": "finished"}})
            assert done.status_code == 200
            async with open_database(database_url, tmp_path / "data" / "records.sqlite3") as database:
                assert await intents(database) == []  # a finished call leaves its record, not its intent

            async def slow() -> None:
                with pytest.raises(httpx2.TransportError):  # the hub dies under it
                    await http.post("/v1/tools/call", json={"server": "test/plain", "tool": "sleep",
                                                            "arguments": {"ms": 60000, "marker": str(marker)}})

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                deadline = time.monotonic() + DEADLINE
                while not marker.exists():  # the call reached the server
                    assert time.monotonic() < deadline, "the slow call never started"
                    await anyio.sleep(0.02)
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop(proc)

    async with open_database(database_url, tmp_path / "data" / "records.sqlite3") as database:
        (pending,) = await intents(database)  # committed before the call was sent

    url, proc = serve(tmp_path, database_url)  # a new instance: it sweeps the dead one's intents
    try:
        async with httpx2.AsyncClient(base_url=url, timeout=30) as http:
            deadline = time.monotonic() + DEADLINE
            while True:
                listed = (await http.get("/v1/audit/tool-calls")).json()["data"]
                if len(listed) == 2 or time.monotonic() > deadline:
                    break
                await anyio.sleep(0.1)
            assert [(r["tool_name"], r["status"]) for r in listed] == [("sleep", "interrupted"), ("echo", "completed")]
            cut = listed[0]
            assert cut["error_code"] == "interrupted" and cut["is_error"] is True
            assert cut["arguments"] == {"ms": 60000, "marker": str(marker)}
            assert cut["result"]["call_record_id"] == pending["id"]
            report = (await http.get("/v1/audit/verify")).json()
            assert report["ok"] is True and report["records_checked"] == 2
            exported = [json.loads(line) for line in (await http.get("/v1/audit/export")).text.splitlines()]
            assert [r["status"] for r in exported] == ["completed", "interrupted"]
    finally:
        stop(proc)
    async with open_database(database_url, tmp_path / "data" / "records.sqlite3") as database:
        assert await intents(database) == []
        assert (await AuditStore(database).verify("default")).ok


async def test_a_turn_of_calls_leaves_one_record_each_and_no_intent(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    """The normal case: every call of a turn (parallel, one failing) gets one record under its intent's id; the
    intents are gone once the records are committed; a server that could not be opened gets no intent."""
    registry = Registry.from_data({"servers": {"test/plain": probe_entry(), "test/broken": {
        "versions": {"1.0.0": {"command": ["{python}", "-c", "raise SystemExit(3)"]}}}}}, root=ROOT)
    settings = Settings.load(data_dir=tmp_path / "data", openai_base_url=scripted_model.openai_url,
                             openai_api_key="sk-hub-key", restart_backoff=0.05, connect_timeout=10)
    async with asgi_client(settings, registry) as (http, hub):
        scripted_model.push(Reply(tool_calls=[Call(name="test-plain__echo", arguments={"text": "a"}, id="c1"),
                                              Call(name="test-plain__fail", arguments={"message": "no"}, id="c2"),
                                              Call(name="test-plain__echo", arguments={"text": "b"}, id="c3")]),
                            Reply.say("done"))
        response = await http.post("/v1/chat/completions", json={
            "model": "openai/gpt-test", "messages": [{"role": "user", "content": "go"}],
            "mcp_servers": ["test/plain", "test/broken"]})
        assert response.status_code == 200, response.text
        listed = (await http.get("/v1/audit/tool-calls")).json()["data"]
        calls = sorted((r["tool_name"], r["status"]) for r in listed if r["kind"] == "tool_call")
        assert calls == [("echo", "completed"), ("echo", "completed"), ("fail", "failed")]
        assert [r["status"] for r in listed if r["kind"] == "server_error"] == ["failed"]
        assert len({r["id"] for r in listed}) == 4
        report = (await http.get("/v1/audit/verify")).json()
        assert report["ok"] is True and report["records_checked"] == 4 and report["unfinished"] == 0
        assert await intents(hub.audit.store.database) == []


async def test_a_hub_stopping_mid_call_leaves_exactly_one_record(tmp_path: Path) -> None:
    """A clean shutdown while a call runs: the call ends with one record (interrupted, or failed when its session
    closed first), never none, never two, and no intent is left behind."""
    from mcp_hub.hub import Hub

    from .conftest import owned

    marker = tmp_path / "sleep-started"
    settings = Settings.load(data_dir=tmp_path / "data", restart_backoff=0.05, connect_timeout=10)
    registry = Registry.from_data({"servers": {"test/plain": probe_entry(sandbox=False)}}, root=ROOT)
    outcome: list[BaseException | None] = []

    async def slow(hub: Hub) -> None:
        try:
            await hub.call_tool("test/plain", "sleep", {"ms": 60000, "marker": str(marker)})
        except Exception as exc:  # the trail or the session closed under it
            outcome.append(exc)
        else:
            outcome.append(None)

    async with anyio.create_task_group() as tg, owned(Hub(settings, registry)) as hub:
        tg.start_soon(slow, hub)
        deadline = time.monotonic() + DEADLINE
        while not marker.exists():
            assert time.monotonic() < deadline, "the slow call never started"
            await anyio.sleep(0.02)
    assert len(outcome) == 1
    async with open_database(None, tmp_path / "data" / "records.sqlite3") as database:
        store = AuditStore(database)
        records = [record async for record in store.export("default")]
        assert [(r.tool_name, r.status) for r in records] in ([("sleep", "interrupted")], [("sleep", "failed")])
        assert await intents(database) == [] and (await store.verify("default")).ok
