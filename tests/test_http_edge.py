"""The HTTP edge of a real `mcp-hub serve` process, over raw sockets.

Request heads are capped (431 and the connection closes, nothing buffered past the cap),
slow heads and bodies are disconnected, proxy headers are believed only from configured
addresses, a client that leaves mid-request is no error in the log, and a failed start-up
is one line without a traceback.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
import yaml

from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import ROOT, free_port, probe_entry, spawn, stop
from .fixtures.scripted_model import Reply, ScriptedModel
from .hub_server import HubServer

MODEL = "openai/edge-model"


@dataclass
class EdgeHub:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    model: ScriptedModel

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.settimeout(10)
        return sock

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeHub]:
    """One keyless hub process with short head/body timeouts (anonymous_admin: the tests read /metrics)."""
    root = tmp_path_factory.mktemp("edge")
    registry = root / "registry.yaml"
    registry.write_text(yaml.safe_dump({"servers": {"test/probe": probe_entry()}}))
    with ScriptedModel.serve() as model:
        port = free_port()
        env = {"MCP_HUB_HEADER_TIMEOUT": "1", "MCP_HUB_BODY_TIMEOUT": "1", "MCP_HUB_ANONYMOUS_ADMIN": "true",
               "OPENAI_BASE_URL": model.openai_url, "OPENAI_API_KEY": "sk-edge"}
        log = root / "hub.log"
        proc = spawn([sys.executable, "-m", "mcp_hub", "serve", "--port", str(port), "--registry", str(registry),
                      "--data-dir", str(root / "data")], port, log, env=env)
        try:
            yield EdgeHub(port, proc, log, model)
        finally:
            stop(proc)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset after the data counts as closed)."""
    received = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(received)
        if not chunk:
            return bytes(received)
        received += chunk


def send_until_refused(sock: socket.socket, data: bytes, chunk: int = 64 * 1024) -> int:
    """Send `data` in chunks until done or the server stops taking it; the bytes sent."""
    sent = 0
    try:
        while sent < len(data):
            sock.sendall(data[sent:sent + chunk])
            sent += chunk
    except OSError:  # the server closed: a reset or a broken pipe
        pass
    return min(sent, len(data))


def counted(hub: EdgeHub, route: str, status: int) -> int:
    """How many requests to `route` the hub has counted with `status` (its /metrics)."""
    text = httpx2.get(f"{hub.url}/metrics", timeout=10).text
    pattern = rf'^mcp_hub_http_requests_total\{{[^}}]*route="{re.escape(route)}"[^}}]*status="{status}"[^}}]*\}} (\S+)$'
    return sum(int(float(m.group(1))) for m in re.finditer(pattern, text, re.MULTILINE))


def wait_counted(hub: EdgeHub, route: str, status: int, at_least: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while counted(hub, route, status) < at_least:
        assert time.monotonic() < deadline, f"{route} {status} was not counted"
        time.sleep(0.05)


def assert_quiet_log(hub: EdgeHub, since: int) -> None:
    """No error and no traceback in what the hub logged from offset `since` on."""
    text = hub.log_text()[since:]
    assert "Traceback" not in text and "ERROR" not in text and "unhandled" not in text, text[-3000:]


def head(path: str = "/healthz", *lines: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *lines]).encode() + b"\r\n"


# -- request-head caps -------------------------------------------------------------------------


def test_a_one_mib_header_gets_431_and_the_connection_closes(edge: EdgeHub) -> None:
    with edge.connect() as sock:
        send_until_refused(sock, head("/healthz", "X-Big: " + "a" * (1 << 20)) + b"\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"connection: close" in answer.lower()
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "headers_too_large" and body["error"]["type"] == "invalid_request_error"
    assert httpx2.get(f"{edge.url}/healthz", timeout=10).status_code == 200  # and serves the next caller


def test_too_many_headers_get_431(edge: EdgeHub) -> None:
    with edge.connect() as sock:
        sock.sendall(head("/healthz", *(f"X-H{i}: 1" for i in range(200))) + b"\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 ") and b"headers_too_large" in answer
    fine = httpx2.get(f"{edge.url}/healthz", headers={f"x-h{i}": "1" for i in range(50)}, timeout=10)
    assert fine.status_code == 200


def test_a_long_request_line_gets_431(edge: EdgeHub) -> None:
    with edge.connect() as sock:
        send_until_refused(sock, b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")


def test_unfinished_huge_headers_do_not_grow_the_hub(edge: EdgeHub) -> None:
    process = psutil.Process(edge.proc.pid)
    with edge.connect() as warm:  # allocations a first refusal makes once
        send_until_refused(warm, head("/healthz", "X-Big: " + "a" * (1 << 20)))
    before = process.memory_info().rss
    held: list[socket.socket] = []
    try:
        for _ in range(12):  # 12 unfinished 4 MiB headers, every connection kept open by the client
            sock = edge.connect()
            held.append(sock)
            send_until_refused(sock, head("/healthz", "X-Big: " + "a" * (4 << 20)))
        grown = process.memory_info().rss - before
    finally:
        for sock in held:
            sock.close()
    assert grown < 8 << 20, f"the hub grew by {grown >> 20} MiB for 48 MiB of unfinished headers"


# -- slow clients --------------------------------------------------------------------------------


def test_half_a_request_line_is_disconnected_after_the_header_timeout(edge: EdgeHub) -> None:
    with edge.connect() as sock:
        sock.sendall(b"GET /heal")
        started = time.monotonic()
        assert read_until_closed(sock) == b""  # closed by the hub (a recv timeout would fail the test)
    assert time.monotonic() - started < 9


def test_a_connection_that_sends_nothing_is_closed(edge: EdgeHub) -> None:
    with edge.connect() as sock:
        assert read_until_closed(sock) == b""


def test_headers_that_never_end_are_disconnected(edge: EdgeHub) -> None:
    with edge.connect() as sock:
        sock.sendall(head("/healthz", "X-A: 1"))  # no blank line: the head never completes
        assert read_until_closed(sock) == b""


def test_a_stalled_body_is_disconnected_quietly(edge: EdgeHub) -> None:
    logged = len(edge.log_text())
    before = counted(edge, "/v1/tools/call", 499)
    with edge.connect() as sock:
        request = (b"POST /v1/tools/call HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 1000\r\n\r\n{\"server\":")
        sock.sendall(request)
        assert read_until_closed(sock) == b""
    wait_counted(edge, "/v1/tools/call", 499, before + 1)  # the handler saw the client leave, and ended
    assert_quiet_log(edge, logged)


def test_a_slow_but_steady_body_is_served(edge: EdgeHub) -> None:
    body = json.dumps({"server": "test/probe", "tool": "echo", "arguments": {"text": "steady"}}).encode()
    with edge.connect() as sock:
        sock.sendall(("POST /v1/tools/call HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode())
        for i in range(0, len(body), 16):
            sock.sendall(body[i:i + 16])
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"steady" in answer


# -- client disconnects ---------------------------------------------------------------------------


def test_a_client_leaving_mid_body_is_no_error(edge: EdgeHub) -> None:
    logged = len(edge.log_text())
    before = counted(edge, "/v1/chat/completions", 499)
    with edge.connect() as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 5000\r\n\r\n{\"model\": ")
    wait_counted(edge, "/v1/chat/completions", 499, before + 1)
    assert_quiet_log(edge, logged)


def test_a_client_leaving_mid_body_on_the_gateway_is_no_error(edge: EdgeHub) -> None:
    logged = len(edge.log_text())
    before = counted(edge, "/mcp/{org}/{name}", 499)
    with edge.connect() as sock:
        sock.sendall(b"POST /mcp/test/probe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Accept: application/json, text/event-stream\r\nContent-Length: 5000\r\n\r\n{\"jsonrpc\"")
    wait_counted(edge, "/mcp/{org}/{name}", 499, before + 1)
    assert_quiet_log(edge, logged)


def test_a_client_leaving_mid_stream_is_no_error(edge: EdgeHub) -> None:
    logged = len(edge.log_text())
    edge.model.push(Reply.say("one two three four five six seven eight", chunk_size=4, stall=3))
    before = counted(edge, "/v1/chat/completions", 200)
    body = json.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    with edge.connect() as sock:
        sock.sendall(("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        received = b""
        while b"data: " not in received:  # the stream has begun: leave
            chunk = sock.recv(4096)
            assert chunk, "the hub closed before streaming"
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 ")
    wait_counted(edge, "/v1/chat/completions", 200, before + 1)
    assert_quiet_log(edge, logged)


# -- proxy headers --------------------------------------------------------------------------------


def rate_limited_hub(tmp_path: Path, **extra: Any) -> AbstractContextManager[HubServer]:
    settings = Settings.load(data_dir=tmp_path / "data", rate_limit_per_minute=1, rate_limit_burst=1, **extra)
    registry = Registry.from_data({"servers": {"test/probe": probe_entry()}}, root=ROOT)
    return HubServer.serve(settings, registry)


def statuses(url: str, forwarded: list[str]) -> list[int]:
    return [httpx2.get(f"{url}/v1/servers", headers={"x-forwarded-for": address, "x-forwarded-proto": "https"},
                       timeout=10).status_code for address in forwarded]


def test_x_forwarded_for_is_believed_from_nobody_by_default(tmp_path: Path) -> None:
    with rate_limited_hub(tmp_path) as server:
        # Each request claims another client; all come from 127.0.0.1, and so share its allowance.
        assert statuses(server.url, ["203.0.113.1", "203.0.113.2", "203.0.113.3"]) == [200, 429, 429]


def test_x_forwarded_for_is_believed_from_a_configured_proxy(tmp_path: Path) -> None:
    with rate_limited_hub(tmp_path, forwarded_allow_ips=["127.0.0.1"]) as server:
        assert statuses(server.url, ["203.0.113.1", "203.0.113.2", "203.0.113.1"]) == [200, 200, 429]


def test_forwarded_allow_ips_parse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_HUB_FORWARDED_ALLOW_IPS", "10.0.0.1, 10.1.0.0/16")
    assert Settings.load().forwarded_allow_ips == ["10.0.0.1", "10.1.0.0/16"]


# -- start-up failures ------------------------------------------------------------------------------


def serve(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcp_hub", "serve", "--port", str(free_port()),
                           "--data-dir", str(tmp_path / "data"), *flags], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_a_bad_registry_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "registry.yaml"
    bad.write_text("servers:\n  x: [1\n")
    result = serve(tmp_path, "--registry", str(bad))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error: " in result.stderr and "not valid YAML" in result.stderr


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"servers": {"test/probe": probe_entry()}}))
    result = serve(tmp_path, "--registry", str(registry), "--database-url", "postgresql://postgres@127.0.0.1:1/test")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines == ["error: cannot reach the records database at postgresql://postgres@127.0.0.1:1/test: PoolTimeout"]


def test_a_bad_setting_and_a_port_in_use_are_one_line(tmp_path: Path) -> None:
    result = serve(tmp_path, env={"MCP_HUB_HEADER_TIMEOUT": "soon"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error: invalid settings: header_timeout" in result.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        registry = tmp_path / "registry.yaml"
        registry.write_text(yaml.safe_dump({"servers": {}}))
        result = subprocess.run([sys.executable, "-m", "mcp_hub", "serve", "--port", str(taken.getsockname()[1]),
                                 "--data-dir", str(tmp_path / "data"), "--registry", str(registry)],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "address already in use" in result.stderr and "error: could not serve on 127.0.0.1" in result.stderr
