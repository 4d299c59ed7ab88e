"""A real `mcp-hub serve` process killed with SIGKILL right after answering has lost no audit
record (SQLite and PostgreSQL); its JSON log lines carry the request id the responses returned."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import httpx2
import pytest

from mcp_hub.audit import AuditStore
from mcp_hub.database import open_database

from .conftest import free_port, probe_entry, spawn, stop


@dataclass
class HubProcess:
    url: str
    proc: Any
    data: Path
    log: Path
    database_url: str | None


@pytest.fixture(params=["sqlite", "postgresql"])
def hub_process(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubProcess]:
    database_url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    registry = tmp_path / "registry.yaml"
    registry.write_text(json.dumps({"servers": {"test/plain": probe_entry()}}))
    port = free_port()
    env = {"MCP_HUB_ANONYMOUS_ADMIN": "true"}  # keyless, and /metrics needs an admin
    if database_url:
        env["MCP_HUB_DATABASE_URL"] = database_url
    log = tmp_path / "hub.log"
    proc = spawn([sys.executable, "-m", "mcp_hub", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
                  "--registry", str(registry), "--log-format", "json"], port, log, env=env)
    try:
        yield HubProcess(f"http://127.0.0.1:{port}", proc, tmp_path / "data", log, database_url)
    finally:
        stop(proc)


async def test_sigkill_right_after_answering_loses_no_record(hub_process: HubProcess) -> None:
    marker = f"marker-{uuid4().hex}"
    answered: list[httpx2.Response] = []

    async def call(i: int, http: httpx2.AsyncClient) -> None:
        answered.append(await http.post("/v1/tools/call", json={"server": "test/plain", "tool": "echo",
                                                                "arguments": {"text": f"{marker}-{i}"}}))

    async with httpx2.AsyncClient(base_url=hub_process.url, timeout=30) as http:
        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(call, i, http)
        os.killpg(hub_process.proc.pid, signal.SIGKILL)  # at once: nothing gets to flush or close
    hub_process.proc.wait(timeout=10)
    assert [response.status_code for response in answered] == [200] * 24
    async with open_database(hub_process.database_url, hub_process.data / "records.sqlite3") as database:
        store = AuditStore(database)
        report = await store.verify("default")
        texts = sorted([record.view()["arguments"]["text"] async for record in store.export("default")])
    assert report.ok and report.checked == 24
    assert texts == sorted(f"{marker}-{i}" for i in range(24))


async def test_json_logs_carry_the_request_id_and_no_values(hub_process: HubProcess) -> None:
    marker = f"marker-{uuid4().hex}"
    async with httpx2.AsyncClient(base_url=hub_process.url, timeout=30) as http:
        response = await http.post("/v1/tools/call?note=" + marker,
                                   json={"server": "test/plain", "tool": "echo", "arguments": {"text": marker}})
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        given = await http.get("/healthz", headers={"x-request-id": "trace-123"})
        assert given.headers["x-request-id"] == "trace-123"
        metrics = (await http.get("/metrics")).text
    assert 'mcp_hub_tool_calls_total{outcome="ok",server="test/plain",tool="echo"} 1.0' in metrics
    assert 'mcp_hub_http_requests_total{method="POST",route="/v1/tools/call",status="200"} 1.0' in metrics
    assert "mcp_hub_sessions 1.0" in metrics and "mcp_hub_hosted_children 1.0" in metrics
    assert marker not in metrics
    deadline = anyio.current_time() + 10
    while True:  # the access line is written after the response is sent
        lines = [json.loads(line) for line in hub_process.log.read_text().splitlines() if line.startswith("{")]
        access = [line for line in lines if line["logger"] == "mcp_hub.access" and line["request_id"] == request_id]
        if access or anyio.current_time() > deadline:
            break
        await anyio.sleep(0.05)
    (line,) = access
    assert line["http"] == {"method": "POST", "route": "/v1/tools/call", "status": 200,
                            "duration_ms": line["http"]["duration_ms"]}
    assert any(entry["request_id"] == "trace-123" for entry in lines)
    assert marker not in hub_process.log.read_text()
