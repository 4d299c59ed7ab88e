"""The MCP gateway: registry servers reached by MCP clients at /mcp/{org}/{name}.

The SDK's own client connects to the hub: in-process over the ASGI app for the plain
paths, and over a real socket (uvicorn) where the upstream server talks back mid-call
(sampling, elicitation, progress, logs), which needs a streamed response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import mcp.types as types
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from mcp_hub.hub import Hub
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import ROOT, asgi_client, probe_entry
from .hub_server import HubServer

EVERYTHING = ROOT / "tests" / "fixtures" / "everything_server.py"
BASE = "http://127.0.0.1:8000"


def gateway_registry(header_url: str) -> Registry:
    return Registry.from_data({"servers": {
        "test/probe": probe_entry(),
        "test/everything": {"versions": {"1.0.0": {"command": ["{python}", str(EVERYTHING)]}}},
        "test/headers": {"versions": {"1.0.0": {"url": header_url}},
                         "connections": {"headers": {"fields": ["token"], "headers": {"Authorization": "Bearer {token}"}}}},
    }}, root=ROOT)


@pytest.fixture
async def gateway(settings: Settings, header_url: str) -> AsyncIterator[tuple[httpx2.AsyncClient, Hub]]:
    async with asgi_client(settings, gateway_registry(header_url)) as running:
        yield running


def _client(http: httpx2.AsyncClient, path: str, **options: Any) -> Client:
    return Client(streamable_http_client(f"{BASE}{path}", http_client=http), mode="legacy", **options)


async def test_lists_and_calls_tools_through_the_gateway(gateway: tuple[httpx2.AsyncClient, Hub]) -> None:
    http, hub = gateway
    async with _client(http, "/mcp/test/probe") as client:
        listed = await client.list_tools()
        assert {"echo", "sleep", "pid"} <= {tool.name for tool in listed.tools}
        result = await client.call_tool("echo", {"text": "through the gateway"})
        assert result.is_error is False
        assert result.structured_content == {"result": "through the gateway"}
        pid = await client.call_tool("pid", {})
    # The call ran on the hub's pooled session of the server (one hosted child), not a private one.
    [session] = [s for s in hub.pool.sessions() if s.target.name == "test/probe"]
    assert session.hosted and pid.structured_content is not None
    async with _client(http, "/mcp/test/probe@1.0.0") as again:
        assert (await again.call_tool("pid", {})).structured_content == pid.structured_content
    # Audited like every call, as the gateway's.
    records = (await http.get("/v1/audit/tool-calls", params={"server": "test/probe"})).json()["data"]
    assert [(r["tool_name"], r["source"]) for r in records] == [("pid", "gateway"), ("pid", "gateway"),
                                                                ("echo", "gateway")]
    assert records[-1]["arguments"] == {"text": "through the gateway"}


async def test_content_resources_and_prompts_pass_through(gateway: tuple[httpx2.AsyncClient, Hub]) -> None:
    http, _ = gateway
    async with _client(http, "/mcp/test/everything") as client:
        image = await client.call_tool("test_image_content", {})
        assert [(block.type, block.mime_type) for block in image.content] == [("image", "image/png")]  # type: ignore[union-attr]
        failed = await client.call_tool("test_error_handling", {})
        assert failed.is_error is True
        text = await client.read_resource("test://static-text")
        assert text.contents[0].text == "This is the content of the static text resource."  # type: ignore[union-attr]
        templates = await client.list_resource_templates()
        assert [t.uri_template for t in templates.resource_templates] == ["test://template/{id}/data"]
        prompt = await client.get_prompt("test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
        assert prompt.messages[0].content.text == "Prompt with arguments: arg1='a', arg2='b'"  # type: ignore[union-attr]


async def test_credentials_header_binds_and_is_scrubbed(gateway: tuple[httpx2.AsyncClient, Hub]) -> None:
    http, _ = gateway
    secret = "gw-secret-7f3a9c"
    headers = {"x-hub-credentials": f'{{"connection_name": "headers", "values": {{"token": "{secret}"}}}}'}
    http.headers.update(headers)
    try:
        async with _client(http, "/mcp/test/headers") as client:
            result = await client.call_tool("headers", {})
    finally:
        for name in headers:
            del http.headers[name]
    # The server got the credential as its connection declares; its echo of it never reaches the client.
    assert result.structured_content is not None
    assert result.structured_content["authorization"] == "[REDACTED]"  # the rendered header is a secret too
    assert secret not in result.model_dump_json()


async def test_missing_credentials_is_an_mcp_error_naming_the_connection(gateway: tuple[httpx2.AsyncClient, Hub]) -> None:
    http, _ = gateway
    async with _client(http, "/mcp/test/headers") as client:
        with pytest.raises(MCPError) as raised:
            await client.list_tools()
    assert raised.value.data["code"] == "missing_credentials"
    assert "headers" in raised.value.message


async def test_unknown_server_and_bad_input_are_4xx_in_the_hub_shape(gateway: tuple[httpx2.AsyncClient, Hub]) -> None:
    http, _ = gateway
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    accept = {"accept": "application/json, text/event-stream"}
    missing = await http.post("/mcp/test/nope", json=init, headers=accept)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "server_not_found"
    version = await http.post("/mcp/test/probe@9.9.9", json=init, headers=accept)
    assert version.status_code == 400 and version.json()["error"]["code"] == "version_not_found"
    bad = await http.post("/mcp/test/probe", json=init, headers={**accept, "x-hub-credentials": "{not json"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-hub-credentials"
    rebinding = await http.post("/mcp/test/probe", json=init, headers={**accept, "host": "evil.example"})
    assert rebinding.status_code == 403 and rebinding.json()["error"]["code"] == "forbidden_host"


async def test_gateway_needs_a_hub_api_key_once_keys_exist(settings: Settings, header_url: str) -> None:
    async with asgi_client(settings, gateway_registry(header_url)) as (http, hub):
        key, _ = await hub.keys.create("acme", "gw")
        denied = await http.post("/mcp/test/probe", json={})
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        http.headers["authorization"] = f"Bearer {key}"
        async with _client(http, "/mcp/test/probe") as client:
            assert (await client.call_tool("echo", {"text": "k"})).structured_content == {"result": "k"}
        # The session belongs to the key's tenant.
        assert [s.key.tenant for s in hub.pool.sessions() if s.target.name == "test/probe"] == ["acme"]


def test_back_channel_reaches_the_gateway_client_over_a_socket(tmp_path: Path, header_url: str) -> None:
    """Sampling, elicitation, progress and logs from the upstream server arrive at the gateway's client."""
    import anyio

    settings = Settings.load(data_dir=tmp_path / "data", restart_backoff=0.05)
    asked: list[str] = []

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append(params.messages[0].content.text)  # type: ignore[union-attr]
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="from the client"), model="m")

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"response": "yes"})

    async def main(url: str) -> None:
        logs: list[Any] = []
        reported: list[float] = []

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            logs.append(params.data)

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            reported.append(progress)

        async with Client(f"{url}/mcp/test/everything", mode="legacy", sampling_callback=sampling,
                          elicitation_callback=elicitation, logging_callback=on_log) as client:
            sampled = await client.call_tool("test_sampling", {"prompt": "ping?"})
            assert sampled.content[0].text == "LLM response: from the client"  # type: ignore[union-attr]
            elicited = await client.call_tool("test_elicitation", {"message": "ok?"})
            assert elicited.content[0].text == 'User response: action=accept, content={"response":"yes"}'  # type: ignore[union-attr]
            await client.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)
            await client.call_tool("test_tool_with_logging", {})
        assert reported == [0, 50, 100]
        assert logs == ["Tool execution started", "Tool processing data", "Tool execution completed"]

    with HubServer.serve(settings, gateway_registry(header_url)) as server:
        anyio.run(main, server.url)
    assert asked == ["ping?"]
