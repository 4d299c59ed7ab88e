"""The session pool against the real probe server: reuse, keys, restarts, retries, timeouts, reaping, caps."""

from __future__ import annotations

import os
import signal
import sys
from hashlib import sha256
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from mcp_hub.credentials import Credential
from mcp_hub.executor import ToolCall
from mcp_hub.hub import Hub
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import PROBE, ROOT, probe_entry

SERVER = "test/probe"


@pytest.fixture
def registry() -> Registry:
    """Unsandboxed: these tests tell children apart by host pid and watch marker files in tmp_path
    (a sandboxed child sees its own pids and /tmp); tests/test_sandbox.py covers the sandboxed pool."""
    return Registry.from_data({"servers": {SERVER: probe_entry(sandbox=False)}}, root=ROOT)


async def call(hub: Hub, tool: str, args: dict[str, Any] | None = None, server: Any = SERVER, **kw: Any) -> Any:
    servers = hub.open_servers(server, **kw)
    name = next(iter(servers.sessions), None) or next(iter(servers.errors))
    batch = await hub.execute([ToolCall(name, tool, args or {})], servers)
    return batch.results[0], servers


async def pid_of(hub: Hub, server: Any = SERVER, **kw: Any) -> int:
    result, _ = await call(hub, "pid", server=server, **kw)
    assert not result.is_error, result.result
    return result.result["result"]


async def test_session_is_reused_across_requests(hub: Hub) -> None:
    first = await pid_of(hub)
    assert await pid_of(hub) == first
    assert hub.status()["hosted_children"] == 1


async def test_tenants_and_credentials_never_share_a_session(tmp_path: Path, settings: Settings) -> None:
    entry = probe_entry(sandbox=False)
    entry["connections"] = {"probe": {"fields": ["token"], "env": {"PROBE_TOKEN": "{token}"}}}
    registry = Registry.from_data({"servers": {SERVER: entry}}, root=ROOT)
    alice = [Credential(connection_name="probe", values={"token": "alice-secret"})]
    bob = [Credential(connection_name="probe", values={"token": "bob-secret"})]
    async with Hub(settings, registry) as hub:
        result, _ = await call(hub, "env_sha256", {"name": "PROBE_TOKEN"}, credentials=alice)
        assert result.result == {"result": sha256(b"alice-secret").hexdigest()}
        result, _ = await call(hub, "env", {"name": "PROBE_TOKEN"}, credentials=bob)
        assert result.result == {"result": "[REDACTED]"}  # delivered, and scrubbed when echoed back
        result, _ = await call(hub, "env_sha256", {"name": "PROBE_TOKEN"}, credentials=bob)
        assert result.result == {"result": sha256(b"bob-secret").hexdigest()}
        pids = {await pid_of(hub, credentials=alice), await pid_of(hub, credentials=bob),
                await pid_of(hub, credentials=alice, tenant="other")}
        assert len(pids) == 3
        assert await pid_of(hub, credentials=alice) in pids
        # The SDK convention: server org/name owns the connection named org-name.
        sdk_style = [Credential(connection_name="test-probe", values={"token": "carol"})]
        result, _ = await call(hub, "env_sha256", {"name": "PROBE_TOKEN"}, credentials=sdk_style)
        assert result.result == {"result": sha256(b"carol").hexdigest()}
        _, servers = await call(hub, "pid")
        error = servers.errors[SERVER].to_entry()
        assert error["code"] == "missing_credentials"
        assert "'probe'" in error["message"] and "token" in error["message"]


@pytest.mark.parametrize("protocol", ["legacy", "2026-07-28"])
async def test_tool_list_refreshes_on_list_changed(settings: Settings, protocol: str) -> None:
    registry = Registry.from_data({"servers": {SERVER: probe_entry(sandbox=False, protocol=protocol)}}, root=ROOT)
    async with Hub(settings, registry) as hub:
        await _grow_and_relist(hub, protocol)


async def _grow_and_relist(hub: Hub, protocol: str) -> None:
    servers = hub.open_servers(SERVER)
    before = {t.name for t in (await hub.list_tools(servers))[SERVER]}
    assert "fresh" not in before
    result, _ = await call(hub, "grow", {"name": "fresh"})
    assert not result.is_error
    session = servers.sessions[SERVER]
    assert session._client is not None and session._client.protocol_version == (
        "2025-11-25" if protocol == "legacy" else protocol)
    if protocol == "legacy":
        # The server sends the notification before the result, so the cache is already invalidated.
        assert session.cached_tools() is None
    else:
        # The listen stream is separate from the call's response: wait (bounded) for the event.
        with anyio.fail_after(5):
            while session.cached_tools() is not None:
                await anyio.sleep(0.01)
    # The re-listing sees the new tool; pinning withholds it (it appeared after first use) until approved.
    relisted = hub.open_servers(SERVER)
    assert {t.name for t in (await hub.list_tools(relisted))[SERVER]} == before
    assert relisted.errors[SERVER].code == "tool_definitions_changed" and session.withheld == {"fresh"}
    assert await hub.approve_pins(SERVER, "1.0.0", approved_by="test") == ["fresh"]
    after = {t.name for t in (await hub.list_tools(hub.open_servers(SERVER)))[SERVER]}
    assert after == before | {"fresh"}


async def test_killed_child_is_restarted_and_next_call_succeeds(hub: Hub) -> None:
    first = await pid_of(hub)
    os.kill(first, signal.SIGKILL)
    second = await pid_of(hub)
    assert second != first
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    session = hub.open_servers(SERVER).sessions[SERVER]
    assert session.restarts == 1


async def test_crash_mid_call_is_not_retried_for_a_tool_with_side_effects(hub: Hub, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    first = await pid_of(hub)

    async def kill_when_started() -> None:
        with anyio.fail_after(10):
            while not marker.exists():
                await anyio.sleep(0.01)
        os.kill(first, signal.SIGKILL)

    async with anyio.create_task_group() as tg:
        tg.start_soon(kill_when_started)
        result, _ = await call(hub, "sleep", {"ms": 5000, "marker": str(marker)})
    assert result.is_error and result.error_code == "session_lost"
    assert await pid_of(hub) != first


async def test_crash_mid_call_is_retried_once_for_an_idempotent_tool(hub: Hub, tmp_path: Path) -> None:
    result, _ = await call(hub, "crash_once", {"marker": str(tmp_path / "crashed")})
    assert not result.is_error
    assert result.result == {"result": "survived"}


async def test_timeout_is_an_error_result_and_the_session_survives(tmp_path: Path) -> None:
    entry = probe_entry(sandbox=False)
    entry["limits"] = {"call_timeout": 0.3}
    registry = Registry.from_data({"servers": {SERVER: entry}}, root=ROOT)
    async with Hub(Settings.load(data_dir=tmp_path), registry) as hub:
        first = await pid_of(hub)
        result, _ = await call(hub, "sleep", {"ms": 3000})
        assert result.is_error and result.error_code == "timeout"
        assert "0.3s" in result.result["error"]["message"]
        assert await pid_of(hub) == first


async def test_parallel_calls_share_one_session(hub: Hub) -> None:
    servers = hub.open_servers(SERVER)
    await hub.list_tools(servers)
    started = anyio.current_time()
    batch = await hub.execute([ToolCall(SERVER, "sleep", {"ms": 300}, id=str(i)) for i in range(8)], servers)
    elapsed = anyio.current_time() - started
    assert [r.call_id for r in batch.results] == [str(i) for i in range(8)]
    assert all(not r.is_error for r in batch.results)
    assert elapsed < 8 * 0.3  # ran concurrently, not one after another


async def test_sequential_batch_when_not_parallel(hub: Hub) -> None:
    servers = hub.open_servers(SERVER)
    await hub.list_tools(servers)
    started = anyio.current_time()
    batch = await hub.execute([ToolCall(SERVER, "sleep", {"ms": 150}) for _ in range(3)], servers, parallel=False)
    assert anyio.current_time() - started >= 0.45
    assert len(batch.results) == 3


async def test_idle_sessions_are_reaped_with_their_child(hub: Hub) -> None:
    pid = await pid_of(hub)
    reaped = hub.pool.reap(idle_timeout=0)
    assert [s.target.ident for s in reaped] == ["test/probe@1.0.0"]
    with anyio.fail_after(10):
        await reaped[0].finished.wait()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert await pid_of(hub) != pid


async def test_child_cap_evicts_the_idle_and_refuses_when_all_busy(tmp_path: Path) -> None:
    entry = probe_entry(sandbox=False)
    registry = Registry.from_data({"servers": {"test/a": entry, "test/b": entry}}, root=ROOT)
    async with Hub(Settings.load(data_dir=tmp_path, max_children=1), registry) as hub:
        a = await pid_of(hub, "test/a")
        b = await pid_of(hub, "test/b")
        assert a != b
        assert hub.status()["hosted_children"] == 1
        marker = tmp_path / "busy"

        async def occupy_b() -> None:
            await call(hub, "sleep", {"ms": 2000, "marker": str(marker)}, server="test/b")

        async with anyio.create_task_group() as tg:
            tg.start_soon(occupy_b)
            with anyio.fail_after(10):
                while not marker.exists():
                    await anyio.sleep(0.01)
            result, servers = await call(hub, "pid", server="test/a")
            assert result.is_error
            assert servers.errors["test/a"].code == "capacity"


async def test_connect_failure_is_a_coded_server_error(tmp_path: Path) -> None:
    registry = Registry.from_data({"servers": {
        "test/missing": {"versions": {"1.0.0": {"command": ["/nonexistent/binary"]}}},
        "test/exits": {"versions": {"1.0.0": {"command": ["{python}", "-c", "import sys; sys.exit(1)"]}}},
        SERVER: probe_entry(sandbox=False),
    }}, root=ROOT)
    async with Hub(Settings.load(data_dir=tmp_path), registry) as hub:
        servers = hub.open_servers(["test/missing", "test/exits", SERVER])
        tools = await hub.list_tools(servers)
        assert list(tools) == [SERVER]
        assert servers.errors["test/missing"].code == "connect_failed"
        assert "/nonexistent/binary" in servers.errors["test/missing"].message
        assert servers.errors["test/exits"].code == "connect_failed"


async def test_hosted_stderr_goes_to_the_data_dir(hub: Hub, settings: Settings) -> None:
    await pid_of(hub)
    logs = list((settings.data_dir / "logs").iterdir())
    assert [p.name for p in logs] == ["test_probe@1.0.0.log"]


async def test_streamable_http_session_survives_server_restart(probe_http: str, tmp_path: Path, hub: Hub) -> None:
    from .conftest import spawn, stop

    first = await pid_of(hub, probe_http)
    port = int(probe_http.split(":")[2].split("/")[0])
    proc = psutil.Process(first)
    proc.kill()
    proc.wait(5)
    replacement = spawn([sys.executable, str(PROBE), "--http", str(port)], port, tmp_path / "again.log")
    try:
        assert await pid_of(hub, probe_http) == replacement.pid
    finally:
        stop(replacement)


async def test_sse_transport(tmp_path: Path, hub: Hub) -> None:
    from .conftest import free_port, spawn, stop

    port = free_port()
    proc = spawn([sys.executable, str(PROBE), "--sse", str(port)], port, tmp_path / "sse.log")
    try:
        result, _ = await call(hub, "echo", {"text": "over sse"}, server=f"http://127.0.0.1:{port}/sse")
        assert result.result == {"result": "over sse"}
    finally:
        stop(proc)
