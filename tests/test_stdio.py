"""Hosted servers' stdout: read in linear time, never buffered past the limit; a child left busy by a timeout is replaced."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import psutil
import pytest
from mcp.shared.message import SessionMessage

from mcp_hub.executor import ToolCall
from mcp_hub.hub import Hub
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings
from mcp_hub.stdio import MESSAGE_TOO_LARGE, AbandonWatch, LineReader, MessageTooLarge, _runnable

from .conftest import ROOT

HEAVY = ROOT / "tests" / "fixtures" / "heavy_server.py"
SERVER = "test/heavy"


def parse(line: bytes) -> SessionMessage | Exception:
    return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def feed(reader: LineReader, data: bytes, size: int = 7) -> list[SessionMessage | Exception]:
    out: list[SessionMessage | Exception] = []
    for chunk in chunks(data, size):
        out += reader.feed(chunk)
        assert reader.buffered <= reader.limit
    return out


def test_messages_split_across_reads_are_whole() -> None:
    first = b'{"jsonrpc":"2.0","id":1,"result":{"a":"' + b"y" * 100 + b'"}}'
    second = b'{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}'
    out = feed(LineReader(1000, parse), first + b"\n\n" + second + b"\r\n")
    assert [type(item) for item in out] == [SessionMessage, SessionMessage]
    assert isinstance(out[0], SessionMessage) and isinstance(out[0].message, types.JSONRPCResponse)
    assert out[0].message.id == 1 and out[0].message.result == {"a": "y" * 100}


@pytest.mark.parametrize(("message", "request_id"), [
    (b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"' + b"x" * 5000 + b'"}]}}', 7),
    (b'{"jsonrpc": "2.0", "id": "call-3", "error": {"code": 1, "message": "' + b"x" * 5000 + b'"}}', "call-3"),
    # The TypeScript SDK writes the result first and the id last.
    (b'{"result":{"content":[{"type":"text","text":"' + b"x" * 5000 + b'"}]},"jsonrpc":"2.0","id":12}', 12),
])
def test_an_over_limit_response_fails_the_request_it_answers(message: bytes, request_id: int | str) -> None:
    after = b'{"jsonrpc":"2.0","id":8,"result":{}}'
    out = feed(LineReader(1000, parse), message + b"\n" + after + b"\n", size=300)
    assert len(out) == 2
    dropped, following = out
    assert isinstance(dropped, SessionMessage) and isinstance(dropped.message, types.JSONRPCError)
    assert dropped.message.id == request_id and dropped.message.error.code == MESSAGE_TOO_LARGE
    assert f"message of {len(message)} bytes was over the hub's limit of 1000" in dropped.message.error.message
    assert isinstance(following, SessionMessage) and isinstance(following.message, types.JSONRPCResponse)


@pytest.mark.parametrize("message", [
    b'{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"' + b"x" * 5000 + b'"}}',
    # A server's own request has an id too: failing the hub's request of the same number would be wrong.
    b'{"jsonrpc":"2.0","id":3,"method":"sampling/createMessage","params":{"x":"' + b"x" * 5000 + b'"}}',
    b'{"jsonrpc":"2.0","params":{"id":3},"result":"' + b"x" * 5000 + b'"}',
])
def test_an_over_limit_message_of_unknown_purpose_is_a_transport_error(message: bytes) -> None:
    out = feed(LineReader(1000, parse), message + b"\n", size=4096)
    assert len(out) == 1 and isinstance(out[0], MessageTooLarge)


def test_reading_is_linear() -> None:
    """50 MB in 64 KiB reads: well under a second linear, minutes quadratic (not a benchmark: a bound far off both)."""
    message = b'{"jsonrpc":"2.0","id":1,"result":{"text":"' + b"x" * 50_000_000 + b'"}}\n'
    reader = LineReader(64 << 20, lambda line: SessionMessage(types.JSONRPCResponse(jsonrpc="2.0", id=1,
                                                                                     result={"n": len(line)})))
    started = time.process_time()
    out = [item for chunk in chunks(message, 65536) for item in reader.feed(chunk)]
    assert time.process_time() - started < 10
    assert len(out) == 1 and isinstance(out[0], SessionMessage)
    assert out[0].message.result == {"n": len(message) - 1}  # type: ignore[union-attr]


def test_abandon_watch_tracks_requests_but_not_listen_streams() -> None:
    watch = AbandonWatch(os.getpid())
    assert not watch.sent(types.JSONRPCRequest(jsonrpc="2.0", id=1, method="tools/call", params={"name": "x"}))
    assert not watch.sent(types.JSONRPCRequest(jsonrpc="2.0", id=2, method="subscriptions/listen", params={}))
    assert watch.outstanding == {"1"}
    assert watch.sent(types.JSONRPCNotification(jsonrpc="2.0", method="notifications/cancelled",
                                                params={"requestId": 1}))
    assert watch.outstanding == set()
    watch.sent(types.JSONRPCRequest(jsonrpc="2.0", id=3, method="tools/list"))
    watch.received(SessionMessage(types.JSONRPCResponse(jsonrpc="2.0", id=3, result={})))
    assert watch.outstanding == set()


def test_thread_states_of_a_process_tree() -> None:
    """This thread is running while it looks; a shell waiting on a sleeping child is not."""
    assert _runnable(os.getpid()) is True
    with subprocess.Popen(["sh", "-c", "sleep 30; true"], start_new_session=True) as idle:
        try:
            deadline = time.monotonic() + 10
            while not psutil.Process(idle.pid).children() and time.monotonic() < deadline:
                time.sleep(0.02)
            # Just after fork and exec the child may still be runnable for a moment: it settles asleep.
            while _runnable(idle.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _runnable(idle.pid) is False
        finally:
            os.killpg(idle.pid, signal.SIGKILL)


def heavy_registry(*, sandbox: bool = True, **limits: Any) -> Registry:
    entry = {"description": "heavy", "tags": ["test"], "limits": limits, "sandbox": sandbox,
             "versions": {"1.0.0": {"command": ["{python}", str(HEAVY)]}}}
    return Registry.from_data({"servers": {SERVER: entry}}, root=ROOT)


async def call(hub: Hub, tool: str, args: dict[str, Any] | None = None, server: str = SERVER) -> Any:
    servers = hub.open_servers(server)
    batch = await hub.execute([ToolCall(server, tool, args or {})], servers)
    return batch.results[0]


async def test_large_results_are_read_in_linear_time_and_capped(tmp_path: Path) -> None:
    settings = Settings.load(data_dir=tmp_path, call_timeout=120)
    async with Hub(settings, heavy_registry()) as hub:
        first = (await call(hub, "pid")).result["result"]
        with anyio.fail_after(120):  # generous: 60 MB through the SDK's reader never finished
            started = time.process_time()
            big = await call(hub, "blob", {"megabytes": 20})
            cpu = time.process_time() - started
            over = await call(hub, "blob", {"megabytes": 60})
        after = await call(hub, "pid")
    # Cut by today's rule (tool_output_max_bytes), with the full size recorded.
    assert not big.is_error and big.truncated and big.result_bytes > 20_000_000
    assert f"the first {settings.tool_output_max_bytes} are shown" in big.result
    assert cpu < 8  # loose: linear reading takes well under a second of it (bench/README.md has figures)
    assert over.is_error and over.error_code == "result_too_large"
    assert f"over the hub's limit of {settings.stdio_message_max_bytes}" in over.result["error"]["message"]
    assert after.result["result"] == first  # the session lived on: the dropped message cost only its call


async def test_hub_sql_huge_results_take_the_same_path(tmp_path: Path) -> None:
    rows = "SELECT printf('%.*c', {size}, 'x') AS filler FROM (VALUES (1), (2), (3))"
    async with Hub(Settings.load(data_dir=tmp_path), Registry.from_file(ROOT / "registry.yaml")) as hub:
        with anyio.fail_after(120):
            cut = await call(hub, "run_query", {"sql": rows.format(size=1_000_000)}, server="hub/sql")
            over = await call(hub, "run_query", {"sql": rows.format(size=8_000_000)}, server="hub/sql")
            fine = await call(hub, "run_query", {"sql": "SELECT count(*) FROM books"}, server="hub/sql")
    assert not cut.is_error and cut.truncated and cut.result_bytes > 3_000_000
    assert over.is_error and over.error_code == "result_too_large", json.dumps(over.result)[:300]
    assert not fine.is_error and fine.result["rows"] == [[55]]


@pytest.mark.parametrize("tool", ["spin", "spin_in_thread"])
async def test_a_child_busy_after_a_timeout_is_replaced(tmp_path: Path, tool: str) -> None:
    """spin blocks the server's event loop (it answers nothing); spin_in_thread leaves it answering."""
    settings = Settings.load(data_dir=tmp_path, busy_probe_timeout=2.0, restart_backoff=0.05)
    # Unsandboxed: the test follows the child by its host pid (a sandboxed one has its own PID namespace).
    async with Hub(settings, heavy_registry(call_timeout=1.0, sandbox=False)) as hub:
        first = (await call(hub, "pid")).result["result"]
        spun = await call(hub, tool)
        assert spun.is_error and spun.error_code == "timeout"
        with anyio.fail_after(30):
            after = await call(hub, "pid")
        assert not after.is_error and after.result["result"] != first
        assert await gone(first)


async def gone(pid: int, timeout: float = 15.0) -> bool:
    """Whether process `pid` has exited (poll with a deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await anyio.sleep(0.05)
    return False
