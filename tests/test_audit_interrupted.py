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

from .conftest import free_port, probe_entry, spawn, stop

DEADLINE = 60.0


def serve(tmp_path: Path, database_url: str | None) -> tuple[str, Any]:
    registry = tmp_path / "registry.yaml"
    registry.write_text(json.dumps({"servers": {"test/plain": probe_entry()}}))
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
