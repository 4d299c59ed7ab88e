"""The audit trail end to end: completions and direct calls recorded, failed servers recorded,
the HTTP API (filters, pagination, tenants, export, verify after tampering), and the CLI."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import httpx2
import pytest

from mcp_hub.apikeys import open_key_store
from mcp_hub.cli import main
from mcp_hub.hub import Hub
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings
from mcp_hub.tool_hash import tool_hash

from .conftest import ROOT, asgi_client, probe_entry
from .model_fixtures import Reply, ScriptedModel, ToolThenAnswer

MODEL = "openai/gpt-test"
TOKEN = {"probe": {"fields": ["token"], "env": {"PROBE_TOKEN": "{token}"}}}


def registry() -> Registry:
    broken = {"description": "exits at once", "versions": {"1.0.0": {"command": ["{python}", "-c", "raise SystemExit(3)"]}}}
    return Registry.from_data({"servers": {
        "test/probe": {**probe_entry(), "connections": TOKEN},
        "test/plain": probe_entry(),
        "test/broken": broken,
    }}, root=ROOT)


def hub_settings(tmp_path: Path, model: ScriptedModel, **overrides: Any) -> Settings:
    return Settings.load(data_dir=tmp_path / "data", openai_base_url=model.openai_url, openai_api_key="sk-hub-key",
                         restart_backoff=0.05, connect_timeout=10, **overrides)


@pytest.fixture
async def client(tmp_path: Path, scripted_model: ScriptedModel) -> AsyncIterator[tuple[httpx2.AsyncClient, Hub]]:
    async with asgi_client(hub_settings(tmp_path, scripted_model), registry()) as running:
        yield running


def ask(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}


async def records(http: httpx2.AsyncClient, headers: dict[str, str] | None = None, **query: str) -> list[dict[str, Any]]:
    response = await http.get("/v1/audit/tool-calls", params=query, headers=headers or {})
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def test_a_completion_records_each_tool_call(client: tuple[httpx2.AsyncClient, Hub],
                                                   scripted_model: ScriptedModel) -> None:
    http, hub = client
    scripted_model.responder = ToolThenAnswer(tool="__echo", arguments={"text": "pong"}, answer="It said {result}")
    response = await http.post("/v1/chat/completions", json=ask(mcp_servers=["test/plain"]))
    assert response.status_code == 200, response.text
    completion_id = response.json()["id"]
    (record,) = await records(http, completion_id=completion_id)
    assert record["kind"] == "tool_call" and record["source"] == "completion" and record["tenant"] == "default"
    assert record["server_name"] == "test/plain" and record["server_ref"] == "test/plain@1.0.0"
    assert record["tool_name"] == "echo" and record["arguments"] == {"text": "pong"}
    assert record["result"] == {"result": "pong"} and record["is_error"] is False and record["error_code"] is None
    assert record["model"] == MODEL and record["turn"] == 1 and record["seq"] == 1
    assert record["result_bytes"] == len('{"result":"pong"}') and len(record["result_sha256"]) == 64
    assert record["started_at"] <= record["ended_at"] and record["ended_at"].endswith("Z")
    listed = await hub.list_tools(hub.open_servers(["test/plain"]))
    echo = next(tool for tool in listed["test/plain"] if tool.name == "echo")
    assert record["tool_hash"] == tool_hash(echo)
    shown = await http.get(f"/v1/audit/tool-calls/{record['id']}")
    assert shown.status_code == 200 and shown.json() == record


async def test_direct_calls_failed_servers_and_secrets(client: tuple[httpx2.AsyncClient, Hub],
                                                      scripted_model: ScriptedModel, tmp_path: Path) -> None:
    http, hub = client
    secret = f"audit-secret-{uuid4().hex}"
    response = await http.post("/v1/tools/call", json={
        "server": "test/probe", "tool": "env", "arguments": {"name": "PROBE_TOKEN"},
        "credentials": {"connection_name": "probe", "values": {"token": secret}}})
    assert response.status_code == 200, response.text
    (direct,) = await records(http, server="test/probe")
    assert direct["source"] == "direct" and direct["completion_id"].startswith("call-")
    assert secret not in json.dumps(direct) and direct["result"] == {"result": "[REDACTED]"}
    # A server that cannot start: one record per failed server per request, and the calls routed to it.
    scripted_model.push(Reply.call(("test-broken__echo", {"text": "x"})), Reply.say("done"))
    response = await http.post("/v1/chat/completions", json=ask(mcp_servers=["test/broken", "test/plain"]))
    assert response.status_code == 200, response.text
    failed = await records(http, completion_id=response.json()["id"])
    assert [(r["kind"], r["server_name"], r["tool_name"]) for r in failed] == [("server_error", "test/broken", None)]
    assert failed[0]["is_error"] and failed[0]["error_code"] == "connect_failed"
    assert failed[0]["result"]["error"]["code"] == "connect_failed"
    await hub.audit.store.database.fetch_all("PRAGMA wal_checkpoint(FULL)")
    files = list((tmp_path / "data").glob("records.sqlite3*"))
    assert files  # the records were written to SQLite here, so the search below covers them
    for path in files:
        assert secret.encode() not in path.read_bytes()


async def test_filters_pagination_and_bad_queries(client: tuple[httpx2.AsyncClient, Hub]) -> None:
    http, _ = client
    for text in ("a", "b", "c"):
        assert (await http.post("/v1/tools/call", json={"server": "test/plain", "tool": "echo",
                                                        "arguments": {"text": text}})).status_code == 200
    assert (await http.post("/v1/tools/call", json={"server": "test/plain", "tool": "fail",
                                                    "arguments": {"message": "boom"}})).status_code == 200
    first = await http.get("/v1/audit/tool-calls", params={"limit": "3"})
    body = first.json()
    assert [r["seq"] for r in body["data"]] == [4, 3, 2] and body["has_more"] is True
    rest = (await http.get("/v1/audit/tool-calls", params={"limit": "3", "cursor": body["next_cursor"]})).json()
    assert [r["seq"] for r in rest["data"]] == [1] and rest["has_more"] is False and rest["next_cursor"] is None
    assert [r["tool_name"] for r in await records(http, is_error="true")] == ["fail"]
    assert len(await records(http, tool="echo", is_error="false")) == 3
    assert await records(http, since="2999-01-01T00:00:00Z") == []
    assert len(await records(http, until="2999-01-01T00:00:00Z", since="0")) == 4
    for query, param in (({"is_error": "maybe"}, "is_error"), ({"since": "yesterday"}, "since"), ({"limit": "0"}, "limit"),
                         ({"cursor": "x"}, "cursor"), ({"until": "2026-01-01T00:00:00"}, "until")):
        refused = await http.get("/v1/audit/tool-calls", params=query)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, query
    missing = await http.get("/v1/audit/tool-calls/audit_nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "audit_record_not_found"
    export = await http.get("/v1/audit/export", params={"tool": "echo"})
    assert export.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert [line["arguments"]["text"] for line in lines] == ["a", "b", "c"] and all(line["hash"] for line in lines)


async def test_tenants_see_only_their_own_records(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    settings = hub_settings(tmp_path, scripted_model)
    async with open_key_store(settings) as keys:
        key_a, record_a = await keys.create("tenant-a")
        key_b, _ = await keys.create("tenant-b")
    async with asgi_client(settings, registry()) as (http, _):
        a, b = {"x-api-key": key_a}, {"x-api-key": key_b}
        call = {"server": "test/plain", "tool": "echo", "arguments": {"text": "mine"}}
        assert (await http.post("/v1/tools/call", json=call, headers=a)).status_code == 200
        (mine,) = await records(http, a)
        assert mine["tenant"] == "tenant-a" and mine["key_id"] == record_a.id and key_a not in json.dumps(mine)
        assert await records(http, b) == []
        assert (await http.get(f"/v1/audit/tool-calls/{mine['id']}", headers=b)).status_code == 404
        assert (await http.get("/v1/audit/export", headers=b)).text == ""
        assert (await http.get("/v1/audit/verify", headers=b)).json()["records_checked"] == 0
        assert (await http.get("/v1/audit/tool-calls")).status_code == 401
        # /metrics spans every tenant: admin keys only.
        forbidden = await http.get("/metrics", headers=a)
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"


async def test_verify_reports_a_tampered_database(client: tuple[httpx2.AsyncClient, Hub], tmp_path: Path) -> None:
    http, _ = client
    for text in ("one", "two", "three"):
        await http.post("/v1/tools/call", json={"server": "test/plain", "tool": "echo", "arguments": {"text": text}})
    ok = (await http.get("/v1/audit/verify")).json()
    assert ok["ok"] is True and ok["records_checked"] == 3 and ok["first_broken_link"] is None
    with sqlite3.connect(tmp_path / "data" / "records.sqlite3") as db:
        db.execute("UPDATE audit_records SET arguments = ? WHERE seq = 2", ('{"text":"forged"}',))
    broken = (await http.get("/v1/audit/verify")).json()
    assert broken["ok"] is False and broken["first_broken_link"]["seq"] == 2
    assert "edited" in broken["first_broken_link"]["problem"]


def test_cli_list_show_verify_export_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    registry_file = tmp_path / "registry.yaml"
    registry_file.write_text(json.dumps({"servers": {"test/plain": probe_entry()}}).replace(
        "{python}", sys.executable))
    flags = ["--data-dir", str(data), "--registry", str(registry_file)]
    assert main(["call", "test/plain", "echo", "--args", '{"text": "from the cli"}', *flags]) == 0
    capsys.readouterr()
    assert main(["audit", "list", *flags]) == 0
    listing = capsys.readouterr().out
    assert "SEQ" in listing and "test/plain" in listing and "echo" in listing and "ok" in listing
    record_id = listing.strip().splitlines()[-1].split()[-1]
    assert main(["audit", "show", record_id, *flags]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["arguments"] == {"text": "from the cli"} and shown["source"] == "direct"
    assert main(["audit", "export", *flags]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == record_id
    assert main(["audit", "verify", *flags]) == 0
    assert "default: ok, 1 records" in capsys.readouterr().out
    with sqlite3.connect(data / "records.sqlite3") as db:
        db.execute("DELETE FROM audit_records")
    assert main(["audit", "verify", *flags]) == 1
    assert "BROKEN at record 1" in capsys.readouterr().out
    assert main(["audit", "prune", *flags]) == 2  # no retention age given or configured
    assert main(["audit", "prune", "--older-than-days", "1", *flags]) == 0


async def test_audit_off_records_nothing(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    async with asgi_client(hub_settings(tmp_path, scripted_model, audit_enabled=False), registry()) as (http, _):
        assert (await http.post("/v1/tools/call", json={"server": "test/plain", "tool": "echo",
                                                        "arguments": {"text": "x"}})).status_code == 200
        off = await http.get("/v1/audit/tool-calls")
        assert off.status_code == 404 and off.json()["error"]["code"] == "audit_disabled"
    # After the hub stopped (an audit trail would have flushed by then): no record and no intent anywhere.
    assert audit_rows(tmp_path / "data" / "records.sqlite3") == {"audit_records": 0, "audit_intents": 0}


def audit_rows(path: Path) -> dict[str, int]:
    """Rows in the audit trail's tables of a SQLite file (a missing file or table counts as none)."""
    counts = {"audit_records": 0, "audit_intents": 0}
    if not path.exists():
        return counts
    with closing(sqlite3.connect(path)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in counts.keys() & tables:
            counts[table] = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return counts


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_two_hubs_sharing_a_database_keep_one_chain(backend: str, request: pytest.FixtureRequest, tmp_path: Path,
                                                         scripted_model: ScriptedModel) -> None:
    database_url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    settings = hub_settings(tmp_path, scripted_model, database_url=database_url)
    async with asgi_client(settings, registry()) as (one, _), asgi_client(settings, registry()) as (two, _):
        async def calls(http: httpx2.AsyncClient, name: str) -> None:
            for i in range(8):
                response = await http.post("/v1/tools/call", json={"server": "test/plain", "tool": "echo",
                                                                  "arguments": {"text": f"{name}-{i}"}})
                assert response.status_code == 200

        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(calls, one, f"one-{n}")
                tg.start_soon(calls, two, f"two-{n}")
        report = (await one.get("/v1/audit/verify")).json()
        kinds = [record["kind"] for record in await records(one, limit="500")]
        # Every call is a record (a server that failed to start under load adds a server_error record too).
        assert kinds.count("tool_call") == 48 and report["ok"] is True and report["records_checked"] == len(kinds)
        assert (await two.get("/v1/audit/verify")).json()["head"] == report["head"]


async def test_metrics_and_request_ids(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    # /metrics needs an admin: on this keyless hub, the operator made anonymous callers admins.
    async with asgi_client(hub_settings(tmp_path, scripted_model, anonymous_admin=True), registry()) as (http, _):
        await _metrics_and_request_ids(http, scripted_model)


async def _metrics_and_request_ids(http: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    scripted_model.responder = ToolThenAnswer(tool="__echo", arguments={"text": "metric-marker"}, answer="ok")
    response = await http.post("/v1/chat/completions", json=ask(mcp_servers=["test/plain", "test/broken"]),
                               headers={"x-request-id": "has spaces, not sane"})
    assert response.status_code == 200 and response.headers["x-request-id"].startswith("req_")
    assert (await http.get("/v1/servers/test/nope")).status_code == 404
    text = (await http.get("/metrics")).text
    assert 'mcp_hub_model_calls_total{outcome="ok",provider="openai"} 2.0' in text
    assert 'mcp_hub_tool_calls_total{outcome="ok",server="test/plain",tool="echo"} 1.0' in text
    assert 'mcp_hub_errors_total{code="connect_failed",where="server"} 1.0' in text
    assert 'mcp_hub_errors_total{code="server_not_found",where="http"} 1.0' in text
    assert 'route="/v1/servers/{org}/{name}",status="404"' in text and "mcp_hub_audit_records_total 2.0" in text
    assert "metric-marker" not in text and "/v1/servers/test/nope" not in text


async def test_a_record_that_cannot_be_committed_withholds_the_result(client: tuple[httpx2.AsyncClient, Hub],
                                                                      scripted_model: ScriptedModel,
                                                                      tmp_path: Path) -> None:
    http, _ = client
    with sqlite3.connect(tmp_path / "data" / "records.sqlite3") as db:
        db.execute("DROP TABLE audit_records")  # every insert fails from now on
    call = await http.post("/v1/tools/call", json={"server": "test/plain", "tool": "echo", "arguments": {"text": "x"}})
    assert call.status_code == 503 and call.json()["error"]["code"] == "audit_unavailable"
    assert call.headers["x-should-retry"] == "false" and '"x"' not in call.text
    scripted_model.responder = ToolThenAnswer(tool="__echo", arguments={"text": "pong"}, answer="It said {result}")
    completion = await http.post("/v1/chat/completions", json=ask(mcp_servers=["test/plain"]))
    assert completion.status_code == 503 and completion.json()["error"]["code"] == "audit_unavailable"
    # Streamed, the model's next turn may already be under way while the record is committed:
    # its answer (which quotes the result) still never reaches the caller.
    scripted_model.responder = ToolThenAnswer(tool="__echo", arguments={"text": "pong"}, answer="It said {result}")
    async with http.stream("POST", "/v1/chat/completions", json=ask(mcp_servers=["test/plain"], stream=True)) as stream:
        streamed = (await stream.aread()).decode()
    assert "audit_unavailable" in streamed and "pong" not in streamed and "It said" not in streamed


async def test_a_dead_writer_process_is_replaced(client: tuple[httpx2.AsyncClient, Hub]) -> None:
    """The writer process dies between two calls: the next write starts a new one; nothing is lost."""
    http, hub = client

    async def call(text: str) -> httpx2.Response:
        return await http.post("/v1/tools/call", json={"server": "test/plain", "tool": "echo", "arguments": {"text": text}})

    assert (await call("before")).status_code == 200
    process = hub.audit.writer._process
    assert process is not None
    process.kill()
    await process.wait()
    after = await call("after")
    assert after.status_code == 200, after.text
    assert hub.audit.writer._process is not None and hub.audit.writer._process.pid != process.pid
    report = (await http.get("/v1/audit/verify")).json()
    assert report["ok"] is True and report["records_checked"] == 2
    listed = (await http.get("/v1/audit/tool-calls")).json()["data"]
    assert [record["arguments"]["text"] for record in listed] == ["after", "before"]
