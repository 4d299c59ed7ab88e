"""The egress proxy and the sandbox bridge, over real sockets: what a sandboxed server with
`network: egress` can reach (allowlisted and public destinations), what it cannot (loopback
services, private and metadata addresses in every spelling), package-install mode, the bounds
on heads, connections and tunnels, and the bridge end to end, also inside a real network namespace.

No traffic leaves the machine: names other than `localhost` resolve through a scripted resolver,
and every origin listens on 127.0.0.1 (reachable only where a test allowlists or lists it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from anyio.abc import SocketAttribute, SocketStream

from mcp_hub.egress import EgressGuard
from mcp_hub.egress_proxy import EgressProxy
from mcp_hub.hub import Hub
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import ROOT, free_port, stop, wait_for_port
from .test_egress import PUBLIC, Resolver

BRIDGE = ROOT / "mcp_hub" / "sandbox_bridge.py"


@dataclass
class Origin:
    """A test server on 127.0.0.1: answers HTTP with what it was asked, or echoes (upper-cased)
    everything up to EOF after an `ECHO\\n` line; counts the connections it accepted."""

    port: int = 0
    connections: int = 0
    requests: list[str] = field(default_factory=list)


@asynccontextmanager
async def origin() -> AsyncIterator[Origin]:
    seen = Origin()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    seen.port = listener.extra(SocketAttribute.local_port)

    async def handle(stream: SocketStream) -> None:
        seen.connections += 1
        data = b""
        async with stream:
            try:
                while not data.startswith(b"ECHO\n") and b"\r\n\r\n" not in data:
                    data += await stream.receive()
                if data.startswith(b"ECHO\n"):
                    while True:
                        data += await stream.receive()
            except anyio.EndOfStream:
                pass
            if data.startswith(b"ECHO\n"):
                await stream.send(data[5:].upper())
                return
            head = data.split(b"\r\n\r\n")[0].decode()
            seen.requests.append(head)
            body = head.replace("\r\n", "|").encode()
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                              % (len(body), body))

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield seen
        finally:
            tg.cancel_scope.cancel()
    await listener.aclose()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short folder for sockets (pytest's tmp_path can pass the 108-byte AF_UNIX limit)."""
    with tempfile.TemporaryDirectory(prefix="egress-") as folder:
        yield Path(folder)


@asynccontextmanager
async def serving(sockdir: Path, *allow: str, only_hosts: Sequence[str] | None = None,
                  resolver: Resolver | None = None, **options: Any) -> AsyncIterator[Path]:
    """An entered `EgressProxy` serving one socket; yields its path."""
    proxy = EgressProxy(EgressGuard(allow, resolver=resolver), **options)
    path = sockdir / "run" / "egress.sock"
    async with proxy, proxy.serve(path, name="probe", only_hosts=only_hosts):
        yield path


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to the proxy's socket, as a sandbox's bridge makes one."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def exchange(path: Path, data: bytes, *, half_close: bool = False, timeout: float = 10) -> bytes:
    """Send `data` on a new connection to the proxy and read until it closes."""
    async with opened(path) as (reader, writer):
        writer.write(data)
        if half_close:
            writer.write_eof()
        with anyio.fail_after(timeout):
            with contextlib.suppress(ConnectionResetError):
                return await reader.read()
        return b""


def connect(target: str, then: bytes = b"") -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode() + then


def get(host: str) -> bytes:
    """A request to send inside a tunnel."""
    return f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


# -- reaching what is allowed ------------------------------------------------------------


async def test_connect_reaches_an_allowlisted_origin(sockdir: Path) -> None:
    async with origin() as server, serving(sockdir, "127.0.0.1") as path:
        answer = await exchange(path, connect(f"127.0.0.1:{server.port}", get("tunnel.test")))
    established, _, rest = answer.partition(b"\r\n\r\n")
    assert established == b"HTTP/1.1 200 Connection established"
    assert rest.startswith(b"HTTP/1.1 200 OK") and b"GET / HTTP/1.1|Host: tunnel.test" in rest
    assert server.connections == 1


async def test_absolute_uri_get_goes_in_origin_form(sockdir: Path) -> None:
    async with origin() as server, serving(sockdir, "127.0.0.1") as path:
        request = (f"GET http://user:pw@127.0.0.1:{server.port}/a/b?q=1 HTTP/1.1\r\nHost: elsewhere.test\r\n"
                   "Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic c2VjcmV0\r\nX-Kept: yes\r\n"
                   "Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\n\r\n")
        answer = await exchange(path, request.encode())
    assert answer.startswith(b"HTTP/1.1 200 OK")
    (seen,) = server.requests
    lines = seen.split("\r\n")
    assert lines[0] == "GET /a/b?q=1 HTTP/1.1"  # origin-form; no userinfo
    assert f"Host: 127.0.0.1:{server.port}" in lines and "X-Kept: yes" in lines and lines[-1] == "Connection: close"
    assert not any(line.lower().startswith(("proxy-", "x-drop", "connection: keep")) for line in lines)


async def test_a_name_is_resolved_once_and_the_checked_address_dialled(sockdir: Path) -> None:
    resolver = Resolver({"rebind.test": [["127.0.0.1"], ["10.0.0.1"]]})
    async with origin() as server, serving(sockdir, "127.0.0.1", resolver=resolver) as path:
        answer = await exchange(path, connect(f"rebind.test:{server.port}", get("rebind.test")))
    assert b"200 OK" in answer and server.connections == 1
    assert resolver.asked == ["rebind.test"]


async def test_half_close_passes_through_the_tunnel(sockdir: Path) -> None:
    async with origin() as server, serving(sockdir, "127.0.0.1") as path:
        answer = await exchange(path, connect(f"127.0.0.1:{server.port}", b"ECHO\nhello, world"), half_close=True)
    assert answer.endswith(b"\r\n\r\nHELLO, WORLD")


# -- refusing what is not ------------------------------------------------------------------


@pytest.mark.parametrize(("target", "reason"), [
    ("127.0.0.1:5432", "127.0.0.1 is a loopback address"),
    ("127.0.0.1:6379", "127.0.0.1 is a loopback address"),
    ("127.0.0.1:{port}", "127.0.0.1 is a loopback address"),
    ("localhost:{port}", "localhost resolves to"),
    ("LOCALHOST.:{port}", "resolves to"),
    ("[::1]:{port}", "::1 is a loopback address"),
    ("[::ffff:127.0.0.1]:{port}", "IPv6 form of 127.0.0.1"),
    ("2130706433:{port}", "127.0.0.1, a loopback address"),
    ("0x7f000001:{port}", "127.0.0.1, a loopback address"),
    ("0.0.0.0:{port}", "unspecified"),
    ("10.0.0.1:80", "10.0.0.1 is a private address"),
    ("192.168.1.1:443", "a private address"),
    ("169.254.169.254:80", "a cloud metadata address"),
    ("[fd00:ec2::254]:80", "a cloud metadata address"),
    ("metadata.google.internal:80", "cloud metadata host"),
    ("100.64.0.1:443", "carrier-grade NAT"),
    ("intranet.test:443", "intranet.test resolves to 10.1.2.3, a private address"),
    ("public.test:25", "port 25 is a mail port"),
])
async def test_connect_to_a_blocked_destination_is_refused(sockdir: Path, target: str, reason: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    resolver = Resolver({"intranet.test": [["10.1.2.3"]], "public.test": [[PUBLIC]]})
    async with origin() as server, serving(sockdir, resolver=resolver) as path:
        target = target.format(port=server.port)
        with caplog.at_level(logging.WARNING, logger="mcp_hub.egress_proxy"):
            answer = await exchange(path, connect(target, get("x")))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n") and b"Connection: close" in head
    assert reason.encode() in body and b"server 'probe'" in body
    assert b"200 OK" not in answer  # the bytes after the CONNECT head went nowhere
    assert server.connections == 0
    (line,) = [r.getMessage() for r in caplog.records if r.name == "mcp_hub.egress_proxy"]
    assert "'probe'" in line and reason in line


async def test_a_refusal_names_the_host_never_the_path_or_query(sockdir: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    request = b"GET http://10.0.0.1/private/path?token=s3cret HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n"
    async with serving(sockdir) as path:
        with caplog.at_level(logging.WARNING, logger="mcp_hub.egress_proxy"):
            answer = await exchange(path, request)
    assert answer.startswith(b"HTTP/1.1 403") and b"10.0.0.1 is a private address" in answer
    assert b"s3cret" not in answer and b"private/path" not in answer
    assert "s3cret" not in caplog.text and "private/path" not in caplog.text


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET https://127.0.0.1/ HTTP/1.1\r\n\r\n", b"400"),  # https goes through CONNECT
    (b"GET /relative HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"400"),
    (b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", b"400"),  # no port
    (b"CONNECT 127.0.0.1:70000 HTTP/1.1\r\n\r\n", b"400"),
    (b"CONNECT user@127.0.0.1:80 HTTP/1.1\r\n\r\n", b"400"),
    (b"GET http://127.0.0.1/ HTTP/1.1\r\nBad Header\r\n\r\n", b"400"),
    (b"GET http://127.0.0.1/ HTTP/1.1\r\nX: a\x00b\r\n\r\n", b"400"),
    (b"GET http://127.0.0.1/ HTTP/2.0\r\n\r\n", b"400"),
])
async def test_malformed_requests_get_400(sockdir: Path, request_bytes: bytes, status: bytes) -> None:
    async with origin() as server, serving(sockdir, "127.0.0.1") as path:
        answer = await exchange(path, request_bytes.replace(b"127.0.0.1/", f"127.0.0.1:{server.port}/".encode()))
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert server.connections == 0


# -- package installs: only the listed names -------------------------------------------------


async def test_only_hosts_refuses_every_other_name(sockdir: Path) -> None:
    resolver = Resolver({"public.test": [[PUBLIC]]})
    async with origin() as server, serving(sockdir, "127.0.0.1", only_hosts=["localhost"], resolver=resolver) as path:
        for target in ["public.test:443", f"127.0.0.1:{server.port}", f"localhost.evil.test:{server.port}"]:
            answer = await exchange(path, connect(target))
            assert answer.startswith(b"HTTP/1.1 403"), target
            assert b"is not one of the package registries" in answer
    assert server.connections == 0
    assert resolver.asked == []  # refused by name, before any DNS
    with pytest.raises(TypeError, match="sequence of host names"):
        async with EgressProxy(EgressGuard()).serve(sockdir / "x.sock", name="probe", only_hosts="localhost"):
            pass


async def test_only_hosts_reaches_a_listed_name_at_a_private_address(sockdir: Path) -> None:
    async with origin() as server, serving(sockdir, only_hosts=["LocalHost."]) as path:
        tunnelled = await exchange(path, connect(f"LOCALHOST.:{server.port}", get("localhost")))
        plain = await exchange(path, f"GET http://localhost:{server.port}/simple/ HTTP/1.1\r\n\r\n".encode())
    assert tunnelled.startswith(b"HTTP/1.1 200 Connection established") and b"200 OK" in tunnelled
    assert plain.startswith(b"HTTP/1.1 200 OK") and b"GET /simple/ HTTP/1.1" in plain
    assert server.connections == 2


# -- bounds ------------------------------------------------------------------------------------


async def test_an_oversized_head_is_cut_off_and_the_proxy_stays_healthy(sockdir: Path) -> None:
    async with origin() as server, serving(sockdir, "127.0.0.1") as path:
        huge = b"GET http://127.0.0.1/ HTTP/1.1\r\nX-Big: " + b"a" * 40_000
        answer = await exchange(path, huge)
        assert answer.startswith(b"HTTP/1.1 431")
        assert b"200 OK" in await exchange(path, connect(f"127.0.0.1:{server.port}", get("x")))
    assert server.connections == 1


async def test_a_slow_head_times_out_and_the_proxy_stays_healthy(sockdir: Path) -> None:
    async with origin() as server, serving(sockdir, "127.0.0.1", header_timeout=0.5) as path:
        async with opened(path) as (reader, writer):
            writer.write(b"CONNECT 127.0.0.1:")  # and never the rest
            with anyio.fail_after(10):
                assert (await reader.read()).startswith(b"HTTP/1.1 408")  # and closed
        assert b"200 OK" in await exchange(path, connect(f"127.0.0.1:{server.port}", get("x")))


async def test_connections_over_the_cap_get_503_until_one_ends(sockdir: Path) -> None:
    async with (origin() as server, serving(sockdir, "127.0.0.1", max_connections=2) as path,
                opened(path) as (first_reader, first), opened(path) as (second_reader, second)):
        for reader, writer in ((first_reader, first), (second_reader, second)):  # two tunnels, open and idle
            writer.write(connect(f"127.0.0.1:{server.port}"))
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        assert (await exchange(path, connect(f"127.0.0.1:{server.port}"))).startswith(b"HTTP/1.1 503")
        first.close()
        with anyio.fail_after(10):
            while not (answer := await exchange(path, connect(f"127.0.0.1:{server.port}", get("x")))).startswith(
                    b"HTTP/1.1 200"):
                await anyio.sleep(0.01)  # the proxy notices the close asynchronously
        assert b"200 OK" in answer


async def test_an_idle_tunnel_is_closed(sockdir: Path) -> None:
    async with origin() as server, serving(sockdir, "127.0.0.1", idle_timeout=0.5) as path:
        answer = await exchange(path, connect(f"127.0.0.1:{server.port}", b"ECHO\n"))
    assert answer == b"HTTP/1.1 200 Connection established\r\n\r\n"  # closed by the proxy, nothing echoed


async def test_closing_the_proxy_ends_its_tunnels_and_removes_the_socket(sockdir: Path) -> None:
    path = sockdir / "run" / "egress.sock"
    async with origin() as server:
        proxy = EgressProxy(EgressGuard(["127.0.0.1"]))
        async with proxy, proxy.serve(path, name="probe"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_ISSOCK(path.stat().st_mode)
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            async with opened(path) as (reader, writer):
                writer.write(connect(f"127.0.0.1:{server.port}", b"ECHO\n"))
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                await proxy.__aexit__(None, None, None)  # the hub shutting down around a live socket
                with anyio.fail_after(10):
                    assert await reader.read() == b""  # the tunnel was closed
        assert not path.exists()
        with pytest.raises(RuntimeError, match="closed"):
            async with proxy.serve(path, name="probe"):
                pass


# -- the bridge inside the sandbox -----------------------------------------------------------------


@pytest.fixture
def bridge_port() -> int:
    return free_port()


async def test_the_bridge_splices_tcp_to_the_proxy_for_a_real_http_client(sockdir: Path, bridge_port: int,
                                                                          tmp_path: Path) -> None:
    async with origin() as server, serving(sockdir, "127.0.0.1") as path:
        # As the sandbox runs it: isolated, no site, only the standard library.
        bridge = subprocess.Popen([sys.executable, "-I", "-S", str(BRIDGE), str(bridge_port), str(path)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            await anyio.to_thread.run_sync(wait_for_port, bridge_port, bridge)
            async with httpx2.AsyncClient(proxy=f"http://127.0.0.1:{bridge_port}") as client:
                response = await client.get(f"http://127.0.0.1:{server.port}/via/bridge?x=1")
                blocked = await client.get("http://10.0.0.1/")
            echoed: list[bytes] = []

            async def echo() -> None:
                echoed.append(await anyio.to_thread.run_sync(_raw_echo, bridge_port, server.port))

            async with anyio.create_task_group() as tg:  # several at once through the one bridge thread
                for _ in range(8):
                    tg.start_soon(echo)
        finally:
            stop(bridge)
    assert response.status_code == 200 and "GET /via/bridge?x=1 HTTP/1.1" in response.text
    assert blocked.status_code == 403 and "10.0.0.1 is a private address" in blocked.text
    assert len(echoed) == 8
    assert all(each.endswith(b"\r\n\r\n" + b"PAYLOAD" * 20000) for each in echoed)  # 140 kB each way, half-closed


def _raw_echo(bridge_port: int, origin_port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", bridge_port), timeout=10) as sock:
        sock.sendall(connect(f"127.0.0.1:{origin_port}", b"ECHO\n" + b"payload" * 20000))
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_the_bridge_without_a_proxy_closes_connections(sockdir: Path, bridge_port: int) -> None:
    bridge = subprocess.Popen([sys.executable, "-I", "-S", str(BRIDGE), str(bridge_port), str(sockdir / "absent.sock")],
                              stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(bridge_port, bridge)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", bridge_port), timeout=5) as sock:
                sock.settimeout(5)
                assert sock.recv(1) == b""  # closed at once, not hung
        assert bridge.poll() is None  # and still serving
    finally:
        stop(bridge)


SANDBOXED_CLIENT = """
import socket, sys
sys.path.insert(0, sys.argv[1])
from sandbox_bridge import PROXY_PORT, start_bridge
start_bridge(PROXY_PORT, sys.argv[2])
origin = int(sys.argv[3])
try:
    socket.create_connection(("127.0.0.1", origin), timeout=5)
    print("DIRECT: reached")
except OSError:
    print("DIRECT: refused")
with socket.create_connection(("127.0.0.1", PROXY_PORT), timeout=10) as sock:
    sock.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\\r\\n\\r\\nECHO\\nfrom the sandbox" % origin)
    sock.shutdown(socket.SHUT_WR)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
print("PROXY:", received.decode().split("\\r\\n\\r\\n")[-1])
"""


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
async def test_a_network_namespace_reaches_out_only_through_the_bridge(sockdir: Path) -> None:
    script = sockdir / "client.py"
    script.write_text(SANDBOXED_CLIENT)
    async with origin() as server, serving(sockdir, "127.0.0.1") as path:
        command = ["bwrap", "--unshare-net", "--unshare-pid", "--die-with-parent", "--ro-bind", "/", "/",
                   "--dev", "/dev", "--proc", "/proc", "--bind", str(sockdir), str(sockdir),
                   sys.executable, "-I", "-S", str(script), str(BRIDGE.parent), str(path), str(server.port)]
        result = await anyio.run_process(command, check=False, env={"PATH": os.environ.get("PATH", "")})
    output = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "DIRECT: refused" in output  # its own network namespace: the hub's loopback is not there
    assert "PROXY: FROM THE SANDBOX" in output
    assert server.connections == 1  # the proxied one only


async def test_the_hub_opens_the_proxy_with_its_guard_and_closes_it(settings: Settings, registry: Registry,
                                                                    sockdir: Path) -> None:
    path = sockdir / "hub" / "probe.sock"
    async with origin() as server:
        async with Hub(settings, registry) as hub:
            proxy = hub.pool._opener.egress_proxy
            assert proxy.guard is hub.egress  # the operator's egress_allow (the tests allow 127.0.0.0/8)
            async with proxy.serve(path, name="probe"):
                answer = await exchange(path, connect(f"127.0.0.1:{server.port}", get("x")))
        assert b"200 OK" in answer
        with pytest.raises(RuntimeError, match="closed"):
            async with proxy.serve(path, name="probe"):
                pass
    assert not path.exists()


async def test_a_stale_socket_is_replaced_but_never_another_file(sockdir: Path) -> None:
    stale = sockdir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as leftover:
        leftover.bind(str(stale))  # a socket left by a hub that was killed
    proxy = EgressProxy(EgressGuard())
    async with proxy.serve(stale, name="probe"):
        assert (await exchange(stale, b"CONNECT 10.0.0.1:80 HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 403")
    precious = sockdir / "precious"
    precious.write_text("keep me")
    with pytest.raises(OSError) as raised:
        async with proxy.serve(precious, name="probe"):
            pass
    assert raised.value.errno == errno.EADDRINUSE  # bind refused the path: the file was not removed for it
    assert precious.read_text() == "keep me"


async def test_a_cancelled_owner_still_closes_its_socket_and_tunnels(sockdir: Path) -> None:
    path = sockdir / "run" / "egress.sock"
    proxy = EgressProxy(EgressGuard(["127.0.0.1"]))
    listening, stopped = anyio.Event(), anyio.Event()
    scope = anyio.CancelScope()

    async def owner() -> None:  # a session's owner task, cancelled when the session stops
        with scope:
            async with proxy.serve(path, name="probe"):
                listening.set()
                await anyio.sleep_forever()
        stopped.set()

    async with origin() as server, anyio.create_task_group() as tg:
        tg.start_soon(owner)
        await listening.wait()
        async with opened(path) as (reader, writer):
            writer.write(connect(f"127.0.0.1:{server.port}", b"ECHO\n"))
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            scope.cancel()
            with anyio.fail_after(10):
                assert await reader.read() == b""
                await stopped.wait()
    assert not path.exists()
