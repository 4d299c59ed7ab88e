"""Interop: the official Node `@modelcontextprotocol/server-everything` through the hub.

The same facts are checked over every transport the hub speaks (hosted stdio,
streamable HTTP, legacy SSE), as registry entries and as the URL forms a request
may name directly. The HTTP and SSE servers are real subprocesses on free ports.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_hub.executor import ToolCall
from mcp_hub.hub import Hub, Servers
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from ..conftest import ROOT, free_port, spawn, stop
from .node_packages import node_package_file

TRANSPORTS = ["stdio", "streamable-http", "sse"]


@pytest.fixture(scope="module")
def everything() -> Path:
    return node_package_file("@modelcontextprotocol", "server-everything", "dist", "index.js")


def _serve(everything: Path, mode: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    return spawn(["node", str(everything), mode], port, log, env={"PORT": str(port)}), port


@pytest.fixture(scope="module")
def http_url(everything: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, port = _serve(everything, "streamableHttp", tmp_path_factory.mktemp("everything") / "http.log")
    yield f"http://127.0.0.1:{port}/mcp"
    stop(proc)


@pytest.fixture(scope="module")
def sse_url(everything: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, port = _serve(everything, "sse", tmp_path_factory.mktemp("everything") / "sse.log")
    yield f"http://127.0.0.1:{port}/sse"
    stop(proc)


@pytest.fixture
def registry_of(everything: Path, request: pytest.FixtureRequest) -> Any:
    """`registry_of(transport, **version_fields)`: a registry whose `ext/everything` speaks that transport."""

    def make(transport: str, **extra: Any) -> Registry:
        if transport == "stdio":
            version = {"command": ["node", str(everything), "stdio"], **extra}
        else:  # the HTTP servers start only for the tests that use them
            url = request.getfixturevalue("http_url" if transport == "streamable-http" else "sse_url")
            version = {"url": url, "transport": transport, **extra}
        return Registry.from_data({"servers": {"ext/everything": {"versions": {"1.0.0": version}}}}, root=ROOT)

    return make


async def _open(hub: Hub, spec: Any) -> tuple[Servers, str, list[str]]:
    servers = hub.open_servers(spec)
    tools = await hub.list_tools(servers)
    assert servers.errors == {}, servers.error_entries()
    [(name, listed)] = tools.items()
    return servers, name, [tool.name for tool in listed]


def _texts(result: Any) -> list[str]:
    return [block["text"] for block in result if block.get("type") == "text"]


async def _check_core_facts(hub: Hub, spec: Any) -> str:
    """The facts every transport must deliver unchanged; returns the server's instance name."""
    servers, name, tools = await _open(hub, spec)
    assert {"echo", "get-sum", "get-structured-content"} <= set(tools)

    batch = await hub.execute([
        ToolCall(name, "echo", {"message": "hello hub"}),
        ToolCall(name, "get-sum", {"a": 2, "b": 3}),
        ToolCall(name, "get-structured-content", {"location": "Chicago"}),
    ], servers)
    echo, total, weather = batch.results
    assert batch.server_errors == {}
    assert (echo.is_error, _texts(echo.result)) == (False, ["Echo: hello hub"])
    assert (total.is_error, _texts(total.result)) == (False, ["The sum of 2 and 3 is 5."])
    # The hub passes structured content through as the result, not the JSON text beside it.
    assert weather.is_error is False
    assert weather.result == {"temperature": 36, "conditions": "Light rain / drizzle", "humidity": 82}
    return name


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_registry_entry_over_each_transport(transport: str, registry_of: Any, settings: Settings) -> None:
    async with Hub(settings, registry_of(transport)) as hub:
        name = await _check_core_facts(hub, "ext/everything")
        session = hub.open_servers("ext/everything").sessions[name]
        assert session.target.version.kind == transport
        client, generation = await session.client(5)
        # A legacy-mode hub session to a Node server is a handshake-era session.
        assert client.protocol_version == "2025-11-25"
        assert client.server_info is not None and client.server_info.name == "mcp-servers/everything"
        assert generation == 1


@pytest.mark.parametrize("form", ["string", "object"])
@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_url_forms(transport: str, form: str, http_url: str, sse_url: str, settings: Settings) -> None:
    url = http_url if transport == "streamable-http" else sse_url
    spec: Any = url if form == "string" else {"url": url}
    async with Hub(settings, Registry({}, root=ROOT)) as hub:
        name = await _check_core_facts(hub, spec)
        assert name == url
        # The transport is guessed from the URL: `/sse` means legacy SSE, anything else streamable HTTP.
        assert hub.open_servers(spec).sessions[url].target.version.kind == transport


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tool_errors_are_data(transport: str, registry_of: Any, settings: Settings) -> None:
    async with Hub(settings, registry_of(transport)) as hub:
        servers, name, _ = await _open(hub, "ext/everything")
        batch = await hub.execute([
            ToolCall(name, "echo", {}),                       # missing required argument
            ToolCall(name, "get-sum", {"a": "two", "b": 3}),  # wrong argument type
            ToolCall(name, "no-such-tool", {}),
            ToolCall(name, "echo", "{not json"),              # rejected by the hub before any call
            ToolCall(name, "echo", {"message": "still alive"}),
        ], servers)
        missing, wrong_type, unknown, malformed, after = batch.results
        assert batch.server_errors == {} and servers.errors == {}
        assert missing.is_error and "message" in _texts(missing.result)[0]
        assert wrong_type.is_error and "get-sum" in _texts(wrong_type.result)[0]
        assert unknown.is_error and "no-such-tool" in _texts(unknown.result)[0]
        assert malformed.is_error and malformed.error_code == "invalid_arguments"
        # Failures did not cost the session: the next call on it succeeds.
        assert (after.is_error, _texts(after.result)) == (False, ["Echo: still alive"])
        _, generation = await servers.sessions[name].client(5)
        assert generation == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_parallel_batch_on_one_session(transport: str, registry_of: Any, settings: Settings) -> None:
    async with Hub(settings, registry_of(transport)) as hub:
        servers, name, _ = await _open(hub, "ext/everything")
        calls = [ToolCall(name, "echo", {"message": f"m{i}"}, id=f"c{i}") for i in range(12)]
        batch = await hub.execute(calls, servers, parallel=True)
        assert [r.call_id for r in batch.results] == [f"c{i}" for i in range(12)]
        assert [_texts(r.result) for r in batch.results] == [[f"Echo: m{i}"] for i in range(12)]
        # Every call of the batch (and the listing before it) went through one pooled session.
        assert hub.open_servers("ext/everything").sessions[name] is servers.sessions[name]
        assert len(hub.pool.sessions()) == 1


@pytest.mark.parametrize("transport", ["stdio", "streamable-http"])
async def test_auto_mode_falls_back_to_the_handshake(transport: str, registry_of: Any, settings: Settings) -> None:
    """A Node server answers `server/discover` with an error, so `protocol: auto` must land on 2025-11-25."""
    async with Hub(settings, registry_of(transport, protocol="auto")) as hub:
        servers, name, _ = await _open(hub, "ext/everything")
        client, _ = await servers.sessions[name].client(5)
        assert client.protocol_version == "2025-11-25"
        batch = await hub.execute([ToolCall(name, "get-sum", {"a": 40, "b": 2})], servers)
        assert _texts(batch.results[0].result) == ["The sum of 40 and 2 is 42."]


# server-everything answers a forgotten Mcp-Session-Id with HTTP 400 and a JSON-RPC body without `id`,
# which the SDK reports as -32603 "Server returned an error response": the hub must reopen on that too.
@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_upstream_restart_is_survived(transport: str, everything: Path, settings: Settings,
                                            tmp_path: Path) -> None:
    """The upstream restarts on the same port: the hub must reopen its pooled session, not fail forever."""
    mode, path = ("streamableHttp", "mcp") if transport == "streamable-http" else ("sse", "sse")
    port = free_port()
    url = f"http://127.0.0.1:{port}/{path}"
    proc = spawn(["node", str(everything), mode], port, tmp_path / "first.log", env={"PORT": str(port)})
    try:
        async with Hub(settings, Registry({}, root=ROOT)) as hub:
            servers, _, _ = await _open(hub, url)
            batch = await hub.execute([ToolCall(url, "echo", {"message": "before"})], servers)
            assert _texts(batch.results[0].result) == ["Echo: before"]

            stop(proc)
            proc = spawn(["node", str(everything), mode], port, tmp_path / "second.log", env={"PORT": str(port)})

            # One failed call is tolerable (it may have been in flight); the session must then recover.
            results = []
            for attempt in range(3):
                servers = hub.open_servers(url)
                batch = await hub.execute([ToolCall(url, "echo", {"message": f"after {attempt}"})], servers)
                results.append(batch.results[0])
            assert [_texts(r.result) for r in results[1:]] == [["Echo: after 1"], ["Echo: after 2"]], \
                [r.result for r in results]
    finally:
        stop(proc)
