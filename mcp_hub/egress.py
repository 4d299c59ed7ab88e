"""The egress guard: outbound connections to MCP server URLs reach only public addresses.

Every URL a user supplies or the registry holds is checked before the hub connects, and
again at the moment it connects:

* The host is normalised first: IPv4 in every form `inet_aton` accepts (`2130706433`,
  `0x7f000001`, `0177.0.0.1`, `127.1`), IPv6 literals (bracketed, with IPv4 embedded as
  mapped, compatible, NAT64, 6to4 or Teredo addresses), trailing dots. Loopback, private,
  link-local, cloud metadata, CGNAT, multicast, unspecified, reserved and unique-local
  addresses, and the well-known metadata host names, are blocked.
* A host name is resolved **once** per session (`Pin`), every address it resolves to is
  checked, and the connection is made to a checked address: `GuardedBackend` sits under
  the HTTP connection pool and dials the pinned address, while the URL keeps the name, so
  the Host header, TLS SNI and certificate verification all use the name. A DNS answer that
  changes between the check and the connection (rebinding) cannot move the session.
* Redirects are never followed by the hub; the MCP SDK follows same-origin 307/308 itself,
  and same origin means the same pinned host.
* `Allowlist` (the `egress_allow` setting) opens hosts, `*.suffix` wildcards and CIDRs for
  self-hosted servers. Credentials (header credentials, OAuth) go only over https, except to
  allowlisted hosts.

A refusal is `UrlBlocked` (`url_blocked`), naming the host and the reason, never the path
or query of the URL (they may carry secrets).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpcore2
import httpx2

from .errors import ConnectError, UrlBlocked

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
METADATA = "a cloud metadata address"
# Most specific first: the first match names the reason.
BLOCKED: tuple[tuple[IPNetwork, str], ...] = (
    (_V4("169.254.169.254/32"), METADATA), (_V4("169.254.170.2/32"), METADATA),
    (_V4("100.100.100.200/32"), METADATA), (_V6("fd00:ec2::254/128"), METADATA),
    (_V4("0.0.0.0/8"), "an unspecified address"), (_V6("::/128"), "an unspecified address"),
    (_V4("127.0.0.0/8"), "a loopback address"), (_V6("::1/128"), "a loopback address"),
    (_V4("10.0.0.0/8"), "a private address"), (_V4("172.16.0.0/12"), "a private address"),
    (_V4("192.168.0.0/16"), "a private address"),
    (_V4("169.254.0.0/16"), "a link-local address"), (_V6("fe80::/10"), "a link-local address"),
    (_V4("100.64.0.0/10"), "a carrier-grade NAT address"),
    (_V4("224.0.0.0/4"), "a multicast address"), (_V6("ff00::/8"), "a multicast address"),
    (_V4("255.255.255.255/32"), "the broadcast address"),
    (_V6("fc00::/7"), "a unique-local address"), (_V6("fec0::/10"), "a site-local address"),
    (_V6("::/96"), "an IPv4-compatible address"), (_V6("2001::/32"), "a Teredo tunnel address"),
)
# The name forms of metadata services (compared without a trailing dot).
METADATA_HOSTS = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "metadata.azure.internal",
    "instance-data", "instance-data.ec2.internal", "metadata.tencentyun.com", "metadata.oraclecloud.com",
})
# IPv6 ranges that carry an IPv4 address in their low 32 bits.
_EMBEDDING = (_V6("::ffff:0:0/96"), _V6("64:ff9b::/96"), _V6("64:ff9b:1::/48"))
CLEARTEXT = "credentials are only sent over https, except to allowlisted hosts"
RECOMMENDATION = ("Use a public https URL, or ask the hub's operator to allowlist this host "
                  "(setting egress_allow, env MCP_HUB_EGRESS_ALLOW).")


_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789abcdef"}


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address `inet_aton` (and browsers) read in `host`: 1–4 parts, each decimal,
    octal (leading 0) or hex (0x), the last filling the remaining bytes. None if not one."""
    parts = host.lower().split(".")
    if parts and parts[-1] == "":
        parts.pop()
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        if part.startswith("0x"):
            text, base = part[2:], 16
        elif len(part) > 1 and part.startswith("0"):
            text, base = part[1:], 8
        else:
            text, base = part, 10
        if (not text and base != 16) or any(c not in _DIGITS[base] for c in text):
            return None
        numbers.append(int(text or "0", base))
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def parse_host(host: str) -> IPAddress | str:
    """The address a URL host denotes, or the lower-case name without a trailing dot."""
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.rstrip(".")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return parse_ipv4(text) or text


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, NAT64, 6to4, Teredo client)."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in net for net in _EMBEDDING) or (int(address) >> 32 == 0 and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def blocked_reason(address: IPAddress) -> str | None:
    """Why `address` must not be reached (a phrase like "a private address"), or None."""
    address = ipaddress.ip_address(str(address).split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and (inner := embedded_ipv4(address)) is not None:
        reason = blocked_reason(inner)
        if reason is not None:
            return f"an IPv6 form of {inner}, {reason}"
        if any(address in net for net in _EMBEDDING[:2]):
            return None  # a public IPv4 address over a dual-stack socket or a NAT64 gateway (DNS64)
    for network, reason in BLOCKED:
        if address.version == network.version and address in network:
            return reason
    if not address.is_global or address.is_reserved:
        return "a reserved address"
    return None


@dataclass(frozen=True)
class Allowlist:
    """Hosts (`mcp.internal`), wildcard hosts (`*.internal.example`: subdomains only) and CIDRs
    (`10.0.0.0/8`, a bare IP is a /32 or /128) the operator opens for self-hosted servers."""

    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        """Raises ValueError naming the first entry that is none of the three forms."""
        hosts, suffixes, networks = set(), [], []
        for raw in entries:
            entry = raw.strip().lower().strip("[]").rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            wildcard = entry.startswith("*.")
            name = _ascii_host(entry[2:] if wildcard else entry)
            if name is None:
                raise ValueError(f"egress allowlist entry {raw!r} is not a host, *.domain or CIDR")
            if wildcard:
                suffixes.append("." + name)
            else:
                hosts.add(name)
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks))

    def allows_host(self, host: str) -> bool:
        name = host.lower().rstrip(".")
        return name in self.hosts or name.endswith(self.suffixes)

    def allows_address(self, address: IPAddress) -> bool:
        address = ipaddress.ip_address(str(address).split("%")[0])
        forms: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and (inner := embedded_ipv4(address)) is not None:
            forms.append(inner)
        return any(form.version == net.version and form in net for form in forms for net in self.networks)


@dataclass(frozen=True)
class Pin:
    """A host resolved once and checked: the addresses connections to it may use."""

    host: str
    addresses: tuple[str, ...]
    allowlisted: bool


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for `host`, in its order."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _ascii_host(name: str) -> str | None:
    """A host name as URLs carry it (IDNA, lower case, no trailing dot), or None if it is not one."""
    try:
        host = httpx2.URL(scheme="http", host=name, path="/").raw_host.decode("ascii")
    except (httpx2.InvalidURL, UnicodeError, ValueError):
        return None
    labels = host.rstrip(".").split(".")
    if not all(label and all(c.isalnum() or c in "-_" for c in label) for label in labels):
        return None
    return ".".join(labels)


def host_of(url: httpx2.URL) -> str:
    """The host as the connection pool dials it: ASCII (IDNA), IPv6 without brackets."""
    return url.raw_host.decode("ascii")


def _origin(url: httpx2.URL) -> str:
    """scheme://host[:port] only: paths, queries and userinfo may carry secrets."""
    host = host_of(url)
    host = f"[{host}]" if ":" in host else host
    return f"{url.scheme}://{host}" + (f":{url.port}" if url.port else "")


class EgressGuard:
    """The hub's egress policy: an allowlist and a resolver (a seam for tests)."""

    def __init__(self, allow: Iterable[str] = (), *, resolver: Resolver | None = None) -> None:
        self.allowlist = Allowlist.parse(allow)
        self.resolver = resolver or system_resolver

    def blocked(self, server: str, url: httpx2.URL, reason: str) -> UrlBlocked:
        return UrlBlocked(f"server {server!r}: {_origin(url)} is blocked: {reason}", server=server,
                          recommendation=RECOMMENDATION)

    def _parse(self, server: str, url: str | httpx2.URL) -> httpx2.URL:
        try:
            parsed = httpx2.URL(url)
        except (httpx2.InvalidURL, TypeError, ValueError):
            raise UrlBlocked(f"server {server!r}: the URL is not a valid http(s) URL", server=server,
                             recommendation="Use an http(s) URL of an MCP endpoint.") from None
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise self.blocked(server, parsed, "only http and https URLs with a host are allowed")
        return parsed

    def precheck(self, server: str, url: str | httpx2.URL, *, credentials: bool = False) -> None:
        """What can be decided without DNS: the scheme, literal addresses, metadata host names,
        and credentials over http to a host that no allowlist entry can cover."""
        parsed = self._parse(server, url)
        host = parse_host(host_of(parsed))
        if isinstance(host, str):
            if self.allowlist.allows_host(host):
                return
            if host in METADATA_HOSTS:
                raise self.blocked(server, parsed, f"{host} is a cloud metadata host")
            allowlisted: bool | None = None if self.allowlist.networks else False  # unknown until resolved
        else:
            allowlisted = self.allowlist.allows_address(host)
            reason = None if allowlisted else blocked_reason(host)
            if reason is not None:
                shown = host_of(parsed)
                raise self.blocked(server, parsed, f"{shown} is {reason}" if shown == str(host)
                                   else f"{shown} means {host}, {reason}")
        if credentials and parsed.scheme != "https" and allowlisted is False:
            raise self.blocked(server, parsed, CLEARTEXT)

    async def pin(self, server: str, url: str | httpx2.URL, *, credentials: bool = False) -> Pin:
        """Resolve the URL's host once and check every address it has.

        Raises `UrlBlocked` (a blocked address, or credentials over http to a host that is
        not allowlisted) or `ConnectError` (the name does not resolve).
        """
        parsed = self._parse(server, url)
        self.precheck(server, parsed, credentials=credentials)
        host = host_of(parsed)
        name = parse_host(host)
        if not isinstance(name, str):
            addresses: Sequence[str] = [str(name)]
        else:
            try:
                addresses = await self.resolver(host, parsed.port or (443 if parsed.scheme == "https" else 80))
            except OSError as exc:
                raise ConnectError(f"server {server!r}: cannot resolve {host}: {exc.strerror or exc}",
                                   server=server) from None
            if not addresses:
                raise ConnectError(f"server {server!r}: {host} has no address", server=server)
            if self.allowlist.allows_host(name):
                return Pin(host, tuple(addresses), allowlisted=True)
        checked = [ipaddress.ip_address(text.split("%")[0]) for text in addresses]
        for text, address in zip(addresses, checked, strict=True):
            if not self.allowlist.allows_address(address) and (reason := blocked_reason(address)) is not None:
                raise self.blocked(server, parsed, f"{host} resolves to {text}, {reason}")
        allowlisted = all(self.allowlist.allows_address(address) for address in checked)
        if credentials and parsed.scheme != "https" and not allowlisted:
            raise self.blocked(server, parsed, CLEARTEXT)
        return Pin(host, tuple(addresses), allowlisted=allowlisted)

    async def session(self, server: str, url: str, *, credentials: bool) -> EgressSession:
        """The egress state of one MCP session to `url`, its host pinned now."""
        pin = await self.pin(server, url, credentials=credentials)
        return EgressSession(self, server, {pin.host: pin}, credentials)

    def transport(self, **options: Any) -> httpx2.AsyncHTTPTransport:
        """An HTTP transport (options as `httpx2.AsyncHTTPTransport`) whose every TCP connection
        goes through `GuardedBackend`."""
        transport = httpx2.AsyncHTTPTransport(**options)
        pool = transport._pool
        assert isinstance(pool, httpcore2.AsyncConnectionPool)
        # httpx2 has no network-backend option; httpcore2's pool hands this attribute to each
        # connection it creates, which is exactly where the address is chosen.
        pool._network_backend = GuardedBackend(self, pool._network_backend)
        return transport


@dataclass
class EgressSession:
    """One MCP session's egress: its pins (one per host) and whether it carries credentials."""

    guard: EgressGuard
    server: str
    pins: dict[str, Pin] = field(default_factory=dict)
    credentials: bool = False

    async def admit(self, request: httpx2.Request) -> None:
        """Check one request: the session's own URL, a same-origin redirect, or an OAuth
        discovery, registration or token call to another host (pinned on first use)."""
        url = request.url
        pin = self.pins.get(host_of(url))
        if pin is None:
            pin = self.pins[host_of(url)] = await self.guard.pin(self.server, url, credentials=self.credentials)
        if self.credentials and url.scheme != "https" and not pin.allowlisted:
            raise self.guard.blocked(self.server, url, CLEARTEXT)


_SESSION: ContextVar[EgressSession | None] = ContextVar("mcp_hub_egress_session", default=None)


@contextmanager
def pinned(session: EgressSession) -> Iterator[None]:
    """Within this block (and the tasks it awaits), connections dial what `session` pinned."""
    token = _SESSION.set(session)
    try:
        yield
    finally:
        _SESSION.reset(token)


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """httpcore2's network backend, dialling only checked addresses.

    Inside `pinned(session)`, a host the session pinned is dialled at its pinned addresses;
    any other connection (no session, or a host the session never pinned) is resolved and
    checked here, so nothing reaches an unchecked address.
    """

    def __init__(self, guard: EgressGuard, inner: httpcore2.AsyncNetworkBackend) -> None:
        self._guard = guard
        self._inner = inner

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore2.AsyncNetworkStream:
        session = _SESSION.get()
        pin = session.pins.get(host) if session is not None else None
        if pin is None:
            pin = await self._guard.pin(session.server if session else host,
                                        httpx2.URL(scheme="https", host=host, port=port, path="/"))
        error: Exception | None = None
        for address in pin.addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("unix sockets are not an egress route")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
