"""JSON nested past the hub's depth limit: a 400 at the edge, a tool error for a model's arguments."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcp_hub import jsoncodec
from mcp_hub.jsoncodec import MAX_DEPTH
from mcp_hub.providers.anthropic import _input_text
from mcp_hub.providers.openai import _arguments as openai_arguments
from mcp_hub.registry import Registry

from .conftest import ROOT, asgi_client, probe_entry
from .model_fixtures import Reply, ScriptedModel
from .test_completions import ECHO, MODEL, ask, chat_settings, stream

DEEP = "@DEEP@"


def nested(depth: int) -> str:
    """JSON text `depth` containers deep (objects and arrays in turn); built as text, since
    Python's own `json` cannot write it."""
    return '{"k":[' * (depth // 2) + '"bottom"' + "]}" * (depth // 2)


def body_text(body: Any, depth: int) -> bytes:
    """`body` as JSON with its `DEEP` marker replaced by a value `depth` deep."""
    return json.dumps(body).replace(json.dumps(DEEP), nested(depth)).encode()


@pytest.fixture
async def chat(tmp_path: Path, scripted_model: ScriptedModel) -> AsyncIterator[httpx2.AsyncClient]:
    registry = Registry.from_data({"servers": {"test/probe": probe_entry()}}, root=ROOT)
    async with asgi_client(chat_settings(tmp_path, scripted_model), registry) as (client, _):
        client.headers["content-type"] = "application/json"  # bodies given as raw bytes are JSON too
        yield client


def assert_too_deep(response: httpx2.Response, param: str | None) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "json_too_deep"
    assert error["param"] == param and f"deeper than {MAX_DEPTH} levels" in error["message"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize("depth", [600, 1000])
async def test_deep_request_bodies_are_400(chat: httpx2.AsyncClient, scripted_model: ScriptedModel, depth: int) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": DEEP}}
    for path, body, param in [
        ("/v1/chat/completions", ask(metadata=DEEP), "metadata"),
        ("/v1/chat/completions", ask(tools=[tool]), "tools"),
        ("/v1/chat/completions", ask(mcp_servers=["test/probe"], messages=[{"role": "user", "content": DEEP}]),
         "messages"),
        ("/v1/tools/call", {"server": "test/probe", "tool": "echo", "arguments": {"text": DEEP}}, "arguments"),
        ("/v1/servers", {"slug": "acme/deep", "version": {"version": "1.0.0", "url": "https://example.com/mcp"},
                         "description": DEEP}, "description"),
        ("/v1/servers/test/probe/versions", {"version": "2.0.0", "url": "https://example.com/mcp", "env": DEEP}, "env"),
        ("/v1/servers/import", {"server": DEEP}, "server"),
    ]:
        assert_too_deep(await chat.post(path, content=body_text(body, depth)), param)
    assert_too_deep(await chat.post("/v1/chat/completions", content=nested(depth).encode()), "k")
    assert_too_deep(await chat.post("/v1/tools/call", content=b"[" * 1100 + b"]" * 1100), None)  # past orjson's own limit
    assert scripted_model.requests == []  # nothing reached the model


GATEWAY_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.mark.parametrize("depth", [600, 1000])
async def test_gateway_too_deep(chat: httpx2.AsyncClient, depth: int) -> None:
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    for header in ("x-hub-credentials", "x-hub-encrypted-credentials"):
        response = await chat.post("/mcp/test/probe", headers={**GATEWAY_HEADERS, header: nested(depth)},
                                   json=initialize)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == header and "Traceback" not in response.text
    deep_call = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                            "params": {"name": "echo", "arguments": {"text": DEEP}}})
    response = await chat.post("/mcp/test/probe", headers=GATEWAY_HEADERS,
                               content=deep_call.replace(json.dumps(DEEP), nested(depth)))
    assert response.status_code < 500, response.text


async def test_bodies_at_the_limit_pass(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.say("fine"))
    metadata = '{"m":' + nested(MAX_DEPTH - 2) + "}"  # the body object, `metadata`, then 62 more levels
    body = json.dumps(ask()).replace('"messages"', f'"metadata": {metadata}, "messages"')
    response = await chat.post("/v1/chat/completions", content=body.encode())
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("model", "depth"), [(MODEL, 600), (MODEL, 1000), ("anthropic/claude-test", 600)])
async def test_a_models_deep_arguments_are_a_tool_error(chat: httpx2.AsyncClient, scripted_model: ScriptedModel,
                                                       model: str, depth: int) -> None:
    scripted_model.push(Reply.call((ECHO, '{"text":' + nested(depth) + "}")), Reply.say("recovered"))
    response = await chat.post("/v1/chat/completions", json={**ask(mcp_servers=["test/probe"]), "model": model})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "recovered"
    (result,) = body["mcp_tool_results"]
    assert result["is_error"] and "invalid_arguments" in json.dumps(result["result"])
    assert f"deeper than {MAX_DEPTH} levels" in json.dumps(result["result"])
    (answer,) = [m for m in scripted_model.requests[1].messages if m["role"] in ("tool", "user")][-1:]
    assert f"deeper than {MAX_DEPTH} levels" in json.dumps(answer)  # the model is told why


async def test_a_streamed_models_deep_arguments_are_a_tool_error(chat: httpx2.AsyncClient,
                                                                scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.call((ECHO, '{"text":' + nested(1000) + "}")), Reply.say("recovered"))
    events = await stream(chat, ask(mcp_servers=["test/probe"]))
    chunks = [data for _, data in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "recovered"
    (result,) = chunks[-1]["mcp_tool_results"]
    assert result["is_error"] and f"deeper than {MAX_DEPTH} levels" in json.dumps(result["result"])


def test_deep_argument_objects_become_text_refused_as_too_deep() -> None:
    value: Any = {}
    for _ in range(1000):
        value = {"k": [value]}
    for text in (_input_text(value), openai_arguments(value)):  # Anthropic's `input`; an OpenAI object
        with pytest.raises(jsoncodec.TooDeep):
            jsoncodec.loads_within(text)
    assert json.loads(_input_text({"a": [1]})) == {"a": [1]} == json.loads(openai_arguments({"a": [1]}))


def test_depth_check_is_iterative_and_exact() -> None:
    deepest: Any = []
    for _ in range(200_000):  # far past any recursion limit: the check must not recurse
        deepest = [deepest]
    with pytest.raises(jsoncodec.TooDeep):
        jsoncodec.check_depth(deepest)
    jsoncodec.check_depth(jsoncodec.loads(nested(MAX_DEPTH)))
    with pytest.raises(jsoncodec.TooDeep) as caught:
        jsoncodec.loads_within('{"a": 1, "b": ' + nested(MAX_DEPTH) + "}")
    assert caught.value.where == "b"
    wide = json.dumps({"items": [{"a": [1, 2, {"b": "[[[[["}]} for _ in range(5000)]})
    assert jsoncodec.loads_within(wide)["items"][0]["a"][2]["b"] == "[[[[["
