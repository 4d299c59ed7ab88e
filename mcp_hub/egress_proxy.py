"""The egress proxy: the only way out of a sandbox that declares `network: egress`.

A sandboxed hosted server has no network of its own. The hub serves it an HTTP forward
proxy on a Unix socket bind-mounted into its sandbox (`mcp_hub.sandbox_bridge` turns that
into 127.0.0.1:3128 inside, named by `HTTP(S)_PROXY`). Two request forms are served:

* `CONNECT host:port` (HTTPS and any other TLS): a byte tunnel once the destination passes.
* An absolute-URI plain HTTP request (`GET http://host/path HTTP/1.1`): forwarded to the
  origin in origin-form with `Connection: close` (one request per connection).

Every destination passes the hub's own egress rules (`EgressGuard.pin`): the name is
resolved once, every address is checked (no loopback, private, link-local, metadata, CGNAT,
... unless the operator's `egress_allow` opens it), and the proxy dials a checked address,
never the name again. The rules are on the address, as for the hub's own connections, so
any port is allowed, except the mail-submission ports: no HTTP client needs them and
outbound mail is the usual abuse of an open tunnel. With `only_hosts` (a package install)
only those exact names are reachable, at whatever address they resolve to (the operator
configured them, and registry mirrors are often private).

A refusal answers `403` with the guard's reason (host and reason, never the path or query)
and logs one line. Everything is bounded: the request head's size and read time, the connect
time, concurrent connections per socket and tunnel idleness.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import anyio
import httpx2
from anyio.abc import ByteStream, SocketStream

from .egress import EgressGuard, Pin, host_of, parse_host
from .errors import ConnectError, UrlBlocked

log = logging.getLogger("mcp_hub.egress_proxy")

MAX_HEAD = 16 * 1024  # request line + headers
MAX_HEADERS = 100
CHUNK = 64 * 1024
MAIL_PORTS = frozenset({25, 465, 587})
# Hop-by-hop headers (RFC 9110 7.6.1) and the proxy's own: never forwarded to an origin.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization",
                        "proxy-authenticate", "te", "trailer", "upgrade"})
_REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}) (\S{1,8192}) HTTP/1\.[01]")
_HEADER = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
_AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9._-]{1,253}):([0-9]{1,5})")
_REASONS = {400: "Bad Request", 403: "Forbidden", 408: "Request Timeout", 431: "Request Header Fields Too Large",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class Refused(Exception):
    """A request the proxy answers with `status` and a short text, without connecting."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True)
class ProxyRequest:
    """What a client asked for: a destination and the bytes that open the conversation with it."""

    url: httpx2.URL  # scheme://host:port/ for CONNECT (no path); the request's URL otherwise
    port: int
    tunnel: bool  # CONNECT
    head: bytes  # the origin-form request head to send first (empty for CONNECT)


def parse_request(head: bytes) -> ProxyRequest:
    """Parse a proxy request head (up to and without the blank line); raises `Refused` (400)."""
    try:
        lines = head.decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        raise Refused(400, "the request head must be ASCII") from None
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        raise Refused(400, "malformed request line")
    method, target = line.groups()
    if len(lines) - 1 > MAX_HEADERS:
        raise Refused(431, "too many header fields")
    headers: list[tuple[str, str]] = []
    for text in lines[1:]:
        field = _HEADER.fullmatch(text)
        if field is None:
            raise Refused(400, "malformed header field")
        headers.append((field.group(1), field.group(2)))
    if method == "CONNECT":
        authority = _AUTHORITY.fullmatch(target)
        if authority is None:
            raise Refused(400, "CONNECT needs host:port")
        host, port = authority.group(1).strip("[]"), int(authority.group(2))
        url = _url("https", host, port)
        return ProxyRequest(url, port, True, b"")
    if not target.lower().startswith("http://"):
        raise Refused(400, "only absolute http:// URLs are proxied (use CONNECT for https)")
    try:
        url = httpx2.URL(target)
    except (httpx2.InvalidURL, ValueError):
        raise Refused(400, "invalid URL") from None
    if not url.raw_host:
        raise Refused(400, "the URL has no host")
    port = url.port or 80
    return ProxyRequest(url, port, False, _origin_head(method, url, headers))


def _url(scheme: str, host: str, port: int) -> httpx2.URL:
    if not 0 < port < 65536:
        raise Refused(400, "invalid port")
    try:
        return httpx2.URL(scheme=scheme, host=host, port=port, path="/")
    except (httpx2.InvalidURL, ValueError):
        raise Refused(400, "invalid host") from None


def _origin_head(method: str, url: httpx2.URL, headers: list[tuple[str, str]]) -> bytes:
    """The request as the origin sees it: origin-form target, `Host` from the URL, no hop-by-hop headers."""
    named = {value.strip().lower() for name, value in headers if name.lower() == "connection" for value in value.split(",")}
    host = host_of(url)
    authority = (f"[{host}]" if ":" in host else host) + (f":{url.port}" if url.port else "")
    kept = [f"{name}: {value}" for name, value in headers
            if name.lower() not in HOP_BY_HOP and name.lower() not in named and name.lower() != "host"]
    lines = [f"{method} {url.raw_path.decode('ascii')} HTTP/1.1", f"Host: {authority}", *kept, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _response(status: int, text: str) -> bytes:
    body = (text + "\n").encode("utf-8", "replace")
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


async def read_head(stream: ByteStream, limit: int = MAX_HEAD) -> tuple[bytes, bytes]:
    """The request head (without its blank line) and any bytes after it; raises `Refused` (431/400)."""
    buffer = bytearray()
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > limit:
            raise Refused(431, f"the request head is over {limit} bytes")
        try:
            buffer += await stream.receive(CHUNK)
        except anyio.EndOfStream:
            raise Refused(400, "the connection ended before the request head") from None
    if end > limit:
        raise Refused(431, f"the request head is over {limit} bytes")
    return bytes(buffer[:end]), bytes(buffer[end + 4:])


class EgressProxy:
    """HTTP/HTTPS forward proxy (CONNECT + absolute-URI plain HTTP) served on Unix sockets;
    the only way out of a sandbox that declares `network: egress`.

    Enter it (the hub does, on its exit stack) to have every socket still served closed
    when it exits; `serve` works without entering it too.
    """

    def __init__(self, guard: EgressGuard, *, header_timeout: float = 10.0, connect_timeout: float = 10.0,
                 idle_timeout: float = 300.0, max_connections: int = 64) -> None:
        self.guard = guard
        self.header_timeout = header_timeout
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._serving: set[anyio.CancelScope] = set()
        self._closed = False

    async def __aenter__(self) -> EgressProxy:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._closed = True
        for scope in list(self._serving):
            scope.cancel()

    @asynccontextmanager
    async def serve(self, path: Path, *, name: str, only_hosts: Sequence[str] | None = None) -> AsyncIterator[None]:
        """Listen on a Unix socket at `path` (mode 0600; its folder is created 0700 if missing and
        should be one only the hub can write) until the context exits, then close it and every
        tunnel and remove the socket file. `name` is the server's, for refusals and log lines;
        `only_hosts`: only these exact names are reachable (package registries), at any address."""
        if self._closed:
            raise RuntimeError("the egress proxy is closed")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        only = None if only_hosts is None else frozenset(host.lower().rstrip(".") for host in only_hosts)
        listener = await anyio.create_unix_listener(path, mode=0o600)
        live = _Connections(self.max_connections)
        try:
            async with anyio.create_task_group() as tg:
                self._serving.add(tg.cancel_scope)

                async def handle(client: SocketStream) -> None:
                    await self._handle(client, name, only, live)

                tg.start_soon(listener.serve, handle, tg)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self._serving.discard(tg.cancel_scope)
            await anyio.aclose_forcefully(listener)
            path.unlink(missing_ok=True)

    async def _handle(self, client: SocketStream, name: str, only: frozenset[str] | None,
                      live: _Connections) -> None:
        upstream: SocketStream | None = None
        try:
            with live.slot() as admitted:
                if not admitted:
                    raise Refused(503, f"over {self.max_connections} concurrent connections")
                try:
                    with anyio.fail_after(self.header_timeout):
                        head, rest = await read_head(client)
                except TimeoutError:
                    raise Refused(408, "the request head took too long") from None
                request = parse_request(head)
                upstream = await self._connect(request, name, only)
                if request.tunnel:
                    await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if request.head or rest:
                    await upstream.send(request.head + rest)
                await self._splice(client, upstream)
        except Refused as refusal:
            await _answer(client, refusal.status, refusal.text)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
            pass  # either side went away
        except Exception:  # boundary: one connection's failure never stops the socket
            log.exception("egress proxy for server %r: unexpected error", name)
        finally:
            if upstream is not None:
                await anyio.aclose_forcefully(upstream)
            await anyio.aclose_forcefully(client)

    async def _connect(self, request: ProxyRequest, name: str, only: frozenset[str] | None) -> SocketStream:
        """Check the destination and dial a checked address; raises `Refused`."""
        url, host = request.url, host_of(request.url)
        shown = f"[{host}]:{request.port}" if ":" in host else f"{host}:{request.port}"
        try:
            if only is not None:
                pin = await self._pin_only(name, url, request.port, only)
            else:
                if request.port in MAIL_PORTS:
                    raise self.guard.blocked(name, url, f"port {request.port} is a mail port")
                pin = await self.guard.pin(name, url)
        except UrlBlocked as exc:
            log.warning("egress proxy: %s", exc.message)  # names the server, the host and the reason
            raise Refused(403, exc.message) from None
        except ConnectError as exc:
            raise Refused(502, exc.message) from None
        error: Exception | None = None
        with anyio.move_on_after(self.connect_timeout):
            for address in pin.addresses:
                try:
                    return await anyio.connect_tcp(address, request.port)
                except OSError as exc:
                    error = exc
            raise Refused(502, f"server {name!r}: cannot connect to {shown}: {getattr(error, 'strerror', None) or error}")
        raise Refused(504, f"server {name!r}: connecting to {shown} timed out")

    async def _pin_only(self, name: str, url: httpx2.URL, port: int, only: frozenset[str]) -> Pin:
        host = host_of(url)
        parsed = parse_host(host)
        if str(parsed) not in only:
            raise self.guard.blocked(name, url, f"{host} is not one of the package registries this install may reach")
        if not isinstance(parsed, str):
            return Pin(host, (str(parsed),), allowlisted=True)
        try:
            addresses = await self.guard.resolver(host, port)
        except OSError as exc:
            raise ConnectError(f"server {name!r}: cannot resolve {host}: {exc.strerror or exc}", server=name) from None
        if not addresses:
            raise ConnectError(f"server {name!r}: {host} has no address", server=name)
        return Pin(host, tuple(addresses), allowlisted=True)

    async def _splice(self, client: SocketStream, upstream: SocketStream) -> None:
        """Copy bytes both ways until both sides end (each end's EOF passed on as a half-close),
        either side breaks, or nothing moves for `idle_timeout` seconds."""
        with anyio.CancelScope() as scope:
            scope.deadline = anyio.current_time() + self.idle_timeout

            async def pump(source: SocketStream, sink: SocketStream) -> None:
                try:
                    while True:
                        try:
                            chunk = await source.receive(CHUNK)
                        except anyio.EndOfStream:
                            break
                        scope.deadline = anyio.current_time() + self.idle_timeout
                        await sink.send(chunk)
                    await sink.send_eof()
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    scope.cancel()  # one side broke: the tunnel is over

            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, client, upstream)
                tg.start_soon(pump, upstream, client)


@dataclass
class _Connections:
    """How many connections one socket is serving, against its cap."""

    cap: int
    count: int = 0

    @contextmanager
    def slot(self) -> Iterator[bool]:
        """Count one connection for its lifetime; yields whether it is within the cap."""
        self.count += 1
        try:
            yield self.count <= self.cap
        finally:
            self.count -= 1


async def _answer(client: SocketStream, status: int, text: str) -> None:
    """Send a short text answer, if the client still listens."""
    with anyio.move_on_after(5), contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await client.send(_response(status, text))
