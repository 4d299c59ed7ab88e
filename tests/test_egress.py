"""The egress guard: blocked address forms, the allowlist, pinning against DNS rebinding,
cleartext credentials, redirects, and `url_blocked` through the hub.

No traffic leaves the machine: names other than `localhost` resolve through a scripted
resolver, and every server a test connects to listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from anyio.streams.tls import TLSListener
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive, Scope, Send

from mcp_hub.credentials import Credential
from mcp_hub.egress import Allowlist, EgressGuard, EgressSession, parse_host
from mcp_hub.errors import ConfigError, UrlBlocked
from mcp_hub.executor import ToolCall
from mcp_hub.hub import Hub
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings
from mcp_hub.transports import Opener, SharedTransport

from .conftest import ROOT, probe_entry

PUBLIC = "93.184.216.34"


class Resolver:
    """A scripted resolver: each name answers its lists in turn (the last one repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append(host)
        if host.rstrip(".") == "localhost":  # /etc/hosts: no traffic
            infos = await anyio.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)
            return [str(info[4][0]) for info in infos]
        turns = self.answers.get(host.rstrip("."))
        if not turns:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return turns.pop(0) if len(turns) > 1 else turns[0]


def guard(*allow: str, **answers: list[list[str]]) -> EgressGuard:
    names = {name.replace("_", "."): turns for name, turns in answers.items()}
    return EgressGuard(allow, resolver=Resolver(names))


BLOCKED_FORMS = [
    ("http://127.0.0.1/mcp", "loopback"),
    ("http://2130706433/mcp", "loopback"),               # decimal
    ("http://0x7f000001/mcp", "loopback"),               # hex
    ("http://0x7f.1/mcp", "loopback"),                   # hex, short
    ("http://0177.1/mcp", "loopback"),                   # octal, short
    ("http://017700000001/mcp", "loopback"),             # octal, whole
    ("http://127.1/mcp", "loopback"),                    # short form
    ("http://127.0.0.1./mcp", "loopback"),               # trailing dot
    ("http://0/mcp", "unspecified"),
    ("http://0.0.0.0:8080/mcp", "unspecified"),
    ("http://[::1]/mcp", "loopback"),
    ("http://[::]/mcp", "unspecified"),
    ("http://[::ffff:127.0.0.1]/mcp", "IPv6 form of 127.0.0.1"),  # IPv4-mapped, dotted
    ("http://[::ffff:7f00:1]/mcp", "IPv6 form of 127.0.0.1"),     # IPv4-mapped, hex
    ("http://[::127.0.0.1]/mcp", "IPv6 form of 127.0.0.1"),       # IPv4-compatible
    ("http://[::ffff:a9fe:a9fe]/", "metadata"),                   # mapped metadata address
    ("http://[64:ff9b::a00:5]/mcp", "IPv6 form of 10.0.0.5"),     # NAT64
    ("http://[2002:c0a8:101::1]/mcp", "IPv6 form of 192.168.1.1"),  # 6to4
    ("http://[fd12:3456::1]/mcp", "unique-local"),
    ("http://[fe80::1]/mcp", "link-local"),
    ("http://[ff02::1]/mcp", "multicast"),
    ("http://10.0.0.5/mcp", "private"),
    ("http://172.16.3.4/mcp", "private"),
    ("http://192.168.1.1/mcp", "private"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://0xa9fea9fe/latest/meta-data/", "metadata"),  # the metadata address in hex
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://169.254.1.1/mcp", "link-local"),
    ("http://100.64.0.1/mcp", "carrier-grade NAT"),
    ("http://100.100.100.200/", "metadata"),
    ("http://224.0.0.1/mcp", "multicast"),
    ("http://255.255.255.255/mcp", "broadcast"),
    ("http://240.0.0.1/mcp", "reserved"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata host"),
    ("http://METADATA.google.internal./computeMetadata/v1/", "metadata host"),
    ("http://localhost:9/mcp", "resolves to"),          # /etc/hosts: 127.0.0.1 or ::1
    ("http://localhost.:9/mcp", "resolves to"),
    ("https://intranet.example/mcp", "resolves to 10.1.2.3, a private address"),
    ("https://mixed.example/mcp", "resolves to 192.168.0.7, a private address"),  # one bad answer is enough
    ("https://mapped.example/mcp", "resolves to ::ffff:10.0.0.1"),
    ("https://meta.example/mcp", "resolves to 169.254.169.254, a cloud metadata address"),
    ("ftp://files.example/mcp", "only http and https"),
    ("http://0177.0.0.1/mcp", "not a valid"),  # httpx2 itself refuses this one
]
NAMES = {"intranet.example": [["10.1.2.3"]], "mixed.example": [[PUBLIC, "192.168.0.7"]],
         "mapped.example": [["::ffff:10.0.0.1"]], "meta.example": [["169.254.169.254"]]}


@pytest.mark.parametrize(("url", "reason"), BLOCKED_FORMS)
async def test_blocked_forms(url: str, reason: str) -> None:
    resolver = Resolver({name: list(turns) for name, turns in NAMES.items()})
    with pytest.raises(UrlBlocked) as caught:
        await EgressGuard(resolver=resolver).pin("s", url)
    error = caught.value
    assert error.code == "url_blocked" and error.server == "s" and reason in error.message
    assert "allowlist" in error.recommendation or "not a valid" in reason
    assert "/mcp" not in error.message and "meta-data" not in error.message  # only the origin is named
    host = url.split("/")[2].rsplit(":", 1)[0] if "]" not in url else url.split("[")[1].split("]")[0]
    if not isinstance(parse_host(host), str):
        assert resolver.asked == []  # a literal address needs no DNS


def test_blocked_forms_count() -> None:
    assert len(BLOCKED_FORMS) >= 20


@pytest.mark.parametrize("url", ["https://mcp.example.com/mcp", "https://8.8.8.8/mcp", "http://1.1.1.1:8080/mcp",
                                 "https://[2606:4700:4700::1111]/mcp", "https://[::ffff:8.8.8.8]/mcp",
                                 "https://xn--mnchen-3ya.example/mcp", "https://münchen.example/mcp"])
async def test_public_urls_are_allowed(url: str) -> None:
    checked = guard(mcp_example_com=[[PUBLIC]], **{"xn--mnchen-3ya_example": [["8.8.4.4"]]})
    pin = await checked.pin("s", url)
    assert pin.addresses and not pin.allowlisted


async def test_allowlist_by_host_wildcard_and_cidr() -> None:
    answers = {"svc_internal_example": [["10.1.2.3"]], "internal_example": [["10.1.2.4"]],
               "evilinternal_example": [["10.1.2.5"]], "lab_example": [["10.9.9.9"]], "ten_example": [["10.0.0.9"]],
               "mapped_example": [["::ffff:10.0.0.9"]], "home_example": [["192.168.1.1"]]}
    checked = guard("*.internal.example", "lab.example", "10.0.0.0/24", "127.0.0.1", **answers)
    for url in ["http://svc.internal.example/mcp", "http://LAB.example./mcp", "http://ten.example/mcp",
                "http://mapped.example/mcp", "http://10.0.0.200/mcp", "http://127.0.0.1:9/mcp", "http://2130706433/"]:
        assert (await checked.pin("s", url)).allowlisted, url
    for url in ["http://internal.example/mcp", "http://evilinternal.example/mcp", "http://home.example/mcp",
                "http://10.0.1.1/mcp", "http://127.0.0.2/mcp"]:
        with pytest.raises(UrlBlocked):
            await checked.pin("s", url)


def test_allowlist_entries_are_validated() -> None:
    allow = Allowlist.parse(["Localhost.", "*.Corp.example", "[::1]", "10.0.0.0/8", " "])
    assert allow.hosts == {"localhost"} and allow.suffixes == (".corp.example",) and len(allow.networks) == 2
    for bad in ["http://x", "a b", "host:8080", "*."]:
        with pytest.raises(ValueError, match="egress allowlist entry"):
            Allowlist.parse([bad])


def test_settings_read_the_allowlist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MCP_HUB_EGRESS_ALLOW", "localhost, 10.0.0.0/8,*.lab.example")
    assert Settings.load(data_dir=tmp_path).egress_allow == ["localhost", "10.0.0.0/8", "*.lab.example"]
    monkeypatch.setenv("MCP_HUB_EGRESS_ALLOW", '["fd00::/8"]')
    assert Settings.load(data_dir=tmp_path).egress_allow == ["fd00::/8"]
    monkeypatch.delenv("MCP_HUB_EGRESS_ALLOW")
    assert Settings.load(data_dir=tmp_path).egress_allow == []
    with pytest.raises(ConfigError, match="egress allowlist entry"):
        Settings.load(data_dir=tmp_path, egress_allow=["not a host"])


async def test_credentials_need_https_except_to_allowlisted_hosts() -> None:
    checked = guard("lab.example", "10.0.0.0/8", mcp_example_com=[[PUBLIC]], lab_example=[["10.2.2.2"]],
                    ten_example=[["10.3.3.3"]])
    for url in ["http://mcp.example.com/mcp", "http://8.8.8.8/mcp"]:
        with pytest.raises(UrlBlocked, match="credentials are only sent over https"):
            guard().precheck("s", url, credentials=True)  # no CIDR could allow it: refused without DNS
        with pytest.raises(UrlBlocked, match="credentials are only sent over https"):
            await checked.pin("s", url, credentials=True)
    checked.precheck("s", "http://mcp.example.com/mcp", credentials=True)  # a CIDR might: decided after DNS
    assert await checked.pin("s", "https://mcp.example.com/mcp", credentials=True)
    assert (await checked.pin("s", "http://lab.example/mcp", credentials=True)).allowlisted
    assert (await checked.pin("s", "http://ten.example/mcp", credentials=True)).allowlisted  # by CIDR, after DNS
    # An OAuth flow's request to another host (a token endpoint) is pinned and held to the same rule.
    session = EgressSession(checked, "s", credentials=True)
    with pytest.raises(UrlBlocked, match="credentials are only sent over https"):
        await session.admit(httpx2.Request("POST", "http://mcp.example.com/token"))
    with pytest.raises(UrlBlocked, match="private"):
        await session.admit(httpx2.Request("POST", "https://192.168.0.1/token"))


# -- connections: a raw HTTP server on 127.0.0.1 that closes every connection --------------------


@dataclass
class Seen:
    """What the local server saw: one entry per connection."""

    hosts: list[str] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)


@asynccontextmanager
async def http_server(location: str | None = None, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[int, Seen]]:
    """Answers each request with its Host header (or a 302 to `location`), then closes."""
    seen = Seen()

    async def handle(stream: Any) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive()
            host = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"host:"))
            seen.hosts.append(host.decode())
            seen.peers.append(str(stream.extra(anyio.abc.SocketAttribute.local_address)[0]))
            if location:
                reply = f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            else:
                reply = f"HTTP/1.1 200 OK\r\nContent-Length: {len(host)}\r\nConnection: close\r\n\r\n{host.decode()}"
            await stream.send(reply.encode())

    async def guarded(stream: Any) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError):
            await handle(stream)  # suppressed: a client that refused our certificate

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as tcp, anyio.create_task_group() as tg:
        port = tcp.extra(anyio.abc.SocketAttribute.local_port)
        listener: Any = TLSListener(tcp, tls, standard_compatible=False) if tls else tcp
        tg.start_soon(listener.serve, guarded)
        yield port, seen
        tg.cancel_scope.cancel()


async def test_a_session_dials_the_address_it_checked_despite_rebinding() -> None:
    # The name answers an allowed address first and a blocked one afterwards (DNS rebinding).
    resolver = Resolver({"rebind.example": [["127.0.0.1"], ["10.0.0.5"]]})
    checked = EgressGuard(["127.0.0.1/32"], resolver=resolver)
    async with http_server() as (port, seen):
        session = await checked.session("s", f"http://rebind.example:{port}/mcp", credentials=False)
        transport = checked.transport()
        async with httpx2.AsyncClient(transport=SharedTransport(transport, session)) as client:
            for _ in range(3):  # the server closes each connection: three connects
                response = await client.get(f"http://rebind.example:{port}/mcp")
                assert response.text == f"rebind.example:{port}"  # the Host header keeps the name
        await transport.aclose()
    assert resolver.asked == ["rebind.example"]  # resolved once
    assert seen.peers == ["127.0.0.1"] * 3 and seen.hosts == [f"rebind.example:{port}"] * 3


async def test_each_unpinned_connection_is_checked_when_it_is_made() -> None:
    checked = guard("127.0.0.1/32", rebind_example=[["127.0.0.1"], ["10.0.0.5"]])
    async with http_server() as (port, seen):
        transport = checked.transport()
        async with httpx2.AsyncClient(transport=transport) as client:
            assert (await client.get(f"http://rebind.example:{port}/")).status_code == 200
            with pytest.raises(UrlBlocked, match="resolves to 10.0.0.5, a private address"):
                await client.get(f"http://rebind.example:{port}/")
            with pytest.raises(UrlBlocked, match="loopback"):
                await client.get("http://0x7f000002:9/")
    assert len(seen.peers) == 1


def self_signed(name: str, folder: Path) -> Path:
    """A self-signed certificate (and key) for `name`, as one PEM file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


async def test_tls_verifies_the_name_while_dialling_the_pinned_address(tmp_path: Path) -> None:
    pem = self_signed("secure.example", tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pem)
    names: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc,func-returns-value]
    checked = guard("127.0.0.1/32", secure_example=[["127.0.0.1"]], other_example=[["127.0.0.1"]])
    async with http_server(tls=server_tls) as (port, seen):
        transport = checked.transport(verify=ssl.create_default_context(cafile=pem))
        for name in ("secure.example", "other.example"):
            session = await checked.session("s", f"https://{name}:{port}/", credentials=True)
            async with httpx2.AsyncClient(transport=SharedTransport(transport, session)) as client:
                if name == "secure.example":
                    assert (await client.get(f"https://{name}:{port}/")).text == f"{name}:{port}"
                else:  # the same address, but the certificate is not for this name
                    with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                        await client.get(f"https://{name}:{port}/")
        await transport.aclose()
    assert names == ["secure.example", "other.example"]  # SNI carried the name, not the address
    assert seen.peers == ["127.0.0.1"]


async def test_redirects_are_not_followed(tmp_path: Path) -> None:
    checked = guard("127.0.0.1/32")
    async with http_server(location="http://169.254.169.254/latest/meta-data/") as (port, seen):
        transport = checked.transport()
        opener = Opener(logs_dir=tmp_path, data_dir=tmp_path, registry_root=tmp_path, http=transport, egress=checked)
        session = await checked.session("s", f"http://127.0.0.1:{port}/mcp", credentials=False)
        async with opener.http_client({}, egress=session) as client:
            response = await client.get(f"http://127.0.0.1:{port}/mcp")
            assert response.status_code == 302 and response.next_request is not None
            # Even a caller that follows it cannot leave the guard.
            with pytest.raises(UrlBlocked, match="metadata"):
                await client.get(f"http://127.0.0.1:{port}/mcp", follow_redirects=True)
        await transport.aclose()
    assert len(seen.peers) == 2


# -- through the hub ------------------------------------------------------------------------------


def hub_settings(tmp_path: Path, *allow: str) -> Settings:
    return Settings.load(data_dir=tmp_path / "data", connect_timeout=20, restart_backoff=0.05, egress_allow=list(allow))


async def call(hub: Hub, server: Any, tool: str = "echo", **kw: Any) -> Any:
    servers = hub.open_servers(server, **kw)
    name = next(iter(servers.sessions), None) or next(iter(servers.errors))
    batch = await hub.execute([ToolCall(name, tool, {"text": "hi"})], servers)
    return batch.results[0], servers


async def test_hub_blocks_loopback_urls_by_default(tmp_path: Path, probe_http: str, registry: Registry) -> None:
    local = probe_http.replace("127.0.0.1", "localhost")
    async with Hub(hub_settings(tmp_path), registry) as hub:
        servers = hub.open_servers([probe_http, local, "test/probe"])
        assert servers.errors[probe_http].code == "url_blocked"  # a literal: refused before any session
        assert "127.0.0.1 is a loopback address" in servers.errors[probe_http].message
        tools = await hub.list_tools(servers)
        assert servers.errors[local].code == "url_blocked"  # a name: refused after resolving, before connecting
        assert "localhost resolves to" in servers.errors[local].message
        assert set(tools) == {"test/probe"}  # the other server is unaffected
        assert set(servers.error_entries()) == {probe_http, local}


async def test_hub_connects_to_allowlisted_urls(tmp_path: Path, probe_http: str, registry: Registry) -> None:
    async with Hub(hub_settings(tmp_path, "127.0.0.0/8"), registry) as hub:
        result, servers = await call(hub, probe_http)
        assert not result.is_error and result.result == {"result": "hi"}, servers.error_entries()


async def test_tools_call_api_reports_url_blocked(tmp_path: Path, probe_http: str, registry: Registry) -> None:
    from mcp_hub.app import create_app

    from .conftest import owned

    app = create_app(hub_settings(tmp_path), registry)
    async with owned(app.router.lifespan_context(app)) as state:
        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx2.ASGITransport(app=with_state)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as api:
            response = await api.post("/v1/tools/call", json={"server": probe_http, "tool": "echo",
                                                              "arguments": {"text": "hi"}})
    record = response.json()
    assert response.status_code == 200 and record["is_error"] is True
    assert record["mcp_server_errors"][probe_http]["code"] == "url_blocked"


async def test_hub_refuses_credentials_over_http(tmp_path: Path) -> None:
    connection = {"fields": ["token"], "headers": {"Authorization": "Bearer {token}"}}
    entry = {"connections": {"acme": connection}, "versions": {"1.0.0": {"url": "http://mcp.acme.example/mcp"}}}
    registry = Registry.from_data({"servers": {"acme/remote": entry, "test/probe": probe_entry()}}, root=ROOT)
    async with Hub(hub_settings(tmp_path), registry) as hub:
        credential = Credential.model_validate({"connection_name": "acme", "values": {"token": "s3cret"}})
        servers = hub.open_servers("acme/remote", [credential])
        error = servers.errors["acme/remote"]
        assert error.code == "url_blocked" and "credentials are only sent over https" in error.message
        assert "s3cret" not in error.message


# An MCP server inside the test, behind a name that rebinds, to show a whole session is pinned.

@asynccontextmanager
async def named_mcp_server() -> AsyncIterator[tuple[int, Seen]]:
    server = MCPServer("rebind")

    @server.tool()
    def echo(text: str) -> str:
        return text

    app = server.streamable_http_app(transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    seen = Seen()

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.hosts.append(dict(scope["headers"])[b"host"].decode())
            seen.peers.append(scope["server"][0])
        await app(scope, receive, send)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections queue until uvicorn accepts: no wait for start-up needed
    uv = uvicorn.Server(uvicorn.Config(recording, log_level="warning", lifespan="on", timeout_graceful_shutdown=2))
    async with anyio.create_task_group() as tg:
        tg.start_soon(uv.serve, [sock])
        yield sock.getsockname()[1], seen
        uv.should_exit = True
    sock.close()


async def test_a_hub_session_stays_on_its_checked_address(tmp_path: Path, registry: Registry) -> None:
    resolver = Resolver({"mcp.rebind.example": [["127.0.0.1"], ["10.0.0.5"]]})  # rebinds after one answer
    async with named_mcp_server() as (port, seen), Hub(hub_settings(tmp_path, "127.0.0.1/32"), registry) as hub:
        hub.egress.resolver = resolver
        url = f"http://mcp.rebind.example:{port}/mcp"
        for _ in range(2):
            result, servers = await call(hub, url)
            assert not result.is_error and result.result == {"result": "hi"}, servers.error_entries()
    assert resolver.asked == ["mcp.rebind.example"]
    assert len(seen.peers) >= 3 and set(seen.peers) == {"127.0.0.1"}
    assert set(seen.hosts) == {f"mcp.rebind.example:{port}"}
