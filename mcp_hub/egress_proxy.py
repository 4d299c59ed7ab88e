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

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import anyio
import httpx2

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
        self._serving: set[_Connections] = set()
        self._closed = False

    async def __aenter__(self) -> EgressProxy:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._closed = True
        for live in list(self._serving):
            live.stop()

    @asynccontextmanager
    async def serve(self, path: Path, *, name: str, only_hosts: Sequence[str] | None = None) -> AsyncIterator[None]:
        """Listen on a Unix socket at `path` (mode 0600; its folder is created 0700 if missing and
        should be one only the hub can write) until the context exits, then close it and every
        tunnel and remove the socket file. `name` is the server's, for refusals and log lines;
        `only_hosts`: only these exact names are reachable (package registries), at any address."""
        if self._closed:
            raise RuntimeError("the egress proxy is closed")
        if isinstance(only_hosts, str):  # would otherwise become a set of letters
            raise TypeError("only_hosts is a sequence of host names, not one string")
        only = None if only_hosts is None else frozenset(host.lower().rstrip(".") for host in only_hosts)
        listener = _listen(path)
        live = _Connections(self.max_connections)
        live.tasks.add(asyncio.get_running_loop().create_task(self._accept(listener, name, only, live)))
        self._serving.add(live)
        try:
            yield
        finally:
            # Everything that needs no waiting first: a cancelled owner's awaits raise at once.
            self._serving.discard(live)
            live.stop()
            listener.close()
            path.unlink(missing_ok=True)
            try:
                with anyio.move_on_after(5, shield=True):  # cancelled tasks close their connections at once
                    await asyncio.gather(*live.tasks, return_exceptions=True)
            finally:
                for sock in live.unstarted:
                    sock.close()

    async def _accept(self, listener: socket.socket, name: str, only: frozenset[str] | None,
                      live: _Connections) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError:  # out of descriptors, say: the connection waits in the backlog
                await asyncio.sleep(0.1)
                continue
            live.unstarted.add(sock)
            task = loop.create_task(self._handle(sock, name, only, live))
            live.tasks.add(task)
            task.add_done_callback(live.tasks.discard)

    async def _handle(self, sock: socket.socket, name: str, only: frozenset[str] | None, live: _Connections) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_HEAD)
        live.unstarted.discard(sock)
        upstream: asyncio.StreamWriter | None = None
        try:
            with live.slot() as admitted:
                if not admitted:
                    raise Refused(503, f"over {self.max_connections} concurrent connections")
                try:
                    async with asyncio.timeout(self.header_timeout):
                        head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
                except TimeoutError:
                    raise Refused(408, "the request head took too long") from None
                except asyncio.LimitOverrunError:
                    raise Refused(431, f"the request head is over {MAX_HEAD} bytes") from None
                except asyncio.IncompleteReadError:
                    return  # the client left before finishing its request
                request = parse_request(head)
                upstream_reader, upstream = await self._connect(request, name, only)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n" if request.tunnel else b"")
                upstream.write(request.head)  # what follows the head in `reader` is passed on as it is
                await self._splice(reader, writer, upstream_reader, upstream)
        except Refused as refusal:
            await _answer(reader, writer, refusal.status, refusal.text)
        except OSError:
            pass  # either side went away
        except Exception:  # boundary: one connection's failure never stops the socket
            log.exception("egress proxy for server %r: unexpected error", name)
        finally:
            if upstream is not None:
                upstream.close()
            writer.close()

    async def _connect(self, request: ProxyRequest, name: str,
                       only: frozenset[str] | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
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
        error: OSError | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                for address in pin.addresses:
                    try:
                        return await asyncio.open_connection(address, request.port, limit=CHUNK)
                    except OSError as exc:
                        error = exc
        except TimeoutError:
            raise Refused(504, f"server {name!r}: connecting to {shown} timed out") from None
        reason = error.strerror if error is not None and error.strerror else error
        raise Refused(502, f"server {name!r}: cannot connect to {shown}: {reason}")

    async def _pin_only(self, name: str, url: httpx2.URL, port: int, only: frozenset[str]) -> Pin:
        host = host_of(url)
        parsed = parse_host(host)
        if str(parsed) not in only:
            raise self.guard.blocked(name, url, f"{host} is not one of the package registries this install may reach")
        if not isinstance(parsed, str):
            return Pin(host, (str(parsed),), allowlisted=True)
        try:
            addresses = await self.guard.resolver(parsed, port)  # the listed spelling: no trailing dot
        except OSError as exc:
            raise ConnectError(f"server {name!r}: cannot resolve {host}: {exc.strerror or exc}", server=name) from None
        if not addresses:
            raise ConnectError(f"server {name!r}: {host} has no address", server=name)
        return Pin(host, tuple(addresses), allowlisted=True)

    async def _splice(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter,
                      upstream_reader: asyncio.StreamReader, upstream: asyncio.StreamWriter) -> None:
        """Copy bytes both ways until both sides end (each end's EOF passed on as a half-close),
        either side breaks, or nothing moves for `idle_timeout` seconds."""
        loop = asyncio.get_running_loop()

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while chunk := await reader.read(CHUNK):
                    timer.reschedule(loop.time() + self.idle_timeout)
                    writer.write(chunk)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
            except OSError:  # one side broke: the tunnel is over
                client.transport.abort()
                upstream.transport.abort()

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.idle_timeout) as timer:
                await asyncio.gather(pump(client_reader, upstream), pump(upstream_reader, client))


def _listen(path: Path) -> socket.socket:
    """A listening Unix socket at `path`, 0600, replacing a stale socket (never another file)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)  # before listening: until now nobody could connect
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(eq=False)  # held in a set by identity
class _Connections:
    """One socket's tasks (its accept loop and a task per connection), sockets not yet handed to
    a task, and the cap on connections."""

    cap: int
    count: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    unstarted: set[socket.socket] = field(default_factory=set)

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()

    @contextmanager
    def slot(self) -> Iterator[bool]:
        """Count one connection for its lifetime; yields whether it is within the cap."""
        self.count += 1
        try:
            yield self.count <= self.cap
        finally:
            self.count -= 1


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, text: str) -> None:
    """Send a short text answer, if the client still listens, and linger a moment: closing with
    unread input would reset the connection, and the client might never see the answer."""
    writer.write(_response(status, text))
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(5):
            await writer.drain()
        writer.write_eof()
        async with asyncio.timeout(1):
            unread = 0
            while unread < MAX_HEAD and (chunk := await reader.read(CHUNK)):
                unread += len(chunk)
