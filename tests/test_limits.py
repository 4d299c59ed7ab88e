"""Limits with clear errors: body size, servers and tools per request, the time budget, the rate limit."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import dedalus_labs
import httpx
import httpx2
import mcp.types as types
import openai
import pytest

from mcp_hub.app import create_app
from mcp_hub.errors import RequestError
from mcp_hub.hub import Hub
from mcp_hub.limits import check_tool_count, server_count
from mcp_hub.ratelimit import TokenBuckets
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import ROOT, create_key, owned, probe_entry
from .model_fixtures import Reply, ScriptedModel
from .test_api import JSON, assert_error

MODEL = "openai/gpt-test"
ECHO = "test-probe__echo"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Any, Hub]]:
    """The app (ASGI callable with lifespan state) and its hub."""
    registry = Registry.from_data({"servers": {"test/probe": probe_entry()}}, root=ROOT)
    app = create_app(settings, registry)
    async with owned(app.router.lifespan_context(app)) as state:
        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        assert state is not None
        yield with_state, state["hub"]


@asynccontextmanager
async def client(settings: Settings) -> AsyncIterator[tuple[httpx2.AsyncClient, Hub]]:
    async with running(settings) as (app, hub), httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://127.0.0.1:8000", timeout=30) as http:
        yield http, hub


def hub_settings(tmp_path: Path, model: ScriptedModel | None = None, **overrides: Any) -> Settings:
    if model is not None:
        overrides |= {"openai_base_url": model.openai_url, "openai_api_key": "sk-hub-key"}
    return Settings.load(data_dir=tmp_path / "data", restart_backoff=0.05, **overrides)


def ask(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}


def client_tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


# -- body size ---------------------------------------------------------------------------------


async def test_body_size_follows_the_setting(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    async with client(hub_settings(tmp_path, scripted_model, max_body_bytes=2048)) as (http, _):
        big = json.dumps(ask(padding="x" * 3000)).encode()
        for path in ("/v1/chat/completions", "/v1/tools/call"):
            body = assert_error(await http.post(path, content=big, headers=JSON), 413, "body_too_large")
            assert "2048 bytes" in body["message"] and "max_body_bytes" in body["message"]

        async def chunked() -> AsyncIterator[bytes]:  # no content-length: counted while reading
            for _ in range(4):
                yield b" " * 1000

        assert_error(await http.post("/v1/tools/call", content=chunked(), headers=JSON), 413, "body_too_large")
        scripted_model.push(Reply.say("small enough"))
        response = await http.post("/v1/chat/completions", json=ask())
        assert response.status_code == 200, response.text
    assert scripted_model.pending == 0


# -- servers and tools per request -------------------------------------------------------------


async def test_too_many_servers(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    async with client(hub_settings(tmp_path, scripted_model, max_servers_per_request=2)) as (http, _):
        servers = [{"slug": "test/probe", "name": f"p{index}"} for index in range(3)]
        body = assert_error(await http.post("/v1/chat/completions", json=ask(mcp_servers=servers)), 400,
                            "too_many_servers")
        assert body["param"] == "mcp_servers" and body["type"] == "invalid_request_error"
        assert "3 servers" in body["message"] and "at most 2" in body["message"]
        assert "max_servers_per_request" in body["message"]
        assert scripted_model.requests == []  # refused before any model call
        scripted_model.push(Reply.say("two is fine"))
        response = await http.post("/v1/chat/completions", json=ask(mcp_servers=servers[:2]))
        assert response.status_code == 200, response.text
        # tools/call takes exactly one server anyway: a list is not a `server`.
        body = assert_error(await http.post("/v1/tools/call", json={"server": ["test/probe"] * 3, "tool": "echo"}),
                            400, "invalid_request")
        assert body["param"].startswith("server")


def test_server_count_forms() -> None:
    assert [server_count(value) for value in (None, [], "a/b", {"slug": "a/b"}, ["a/b", "c/d"])] == [0, 0, 1, 1, 2]


async def test_too_many_client_tools(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    async with client(hub_settings(tmp_path, scripted_model, max_tools_per_request=5)) as (http, _):
        tools = [client_tool(f"t{index}") for index in range(6)]
        body = assert_error(await http.post("/v1/chat/completions", json=ask(tools=tools)), 400, "too_many_tools")
        assert body["param"] == "tools" and "6 entries" in body["message"] and "at most 5" in body["message"]
        assert scripted_model.requests == []


def test_tool_count_names_each_server() -> None:
    def tools(count: int) -> list[types.Tool]:
        return [types.Tool(name=f"t{index}", input_schema={"type": "object"}) for index in range(count)]

    check_tool_count({"a/one": tools(3), "b/two": tools(2)}, [client_tool("x")], 6)  # exactly at the limit
    with pytest.raises(RequestError) as caught:
        check_tool_count({"b/two": tools(2), "a/one": tools(3)}, [client_tool("x"), client_tool("y")], 6)
    error = caught.value
    assert error.code == "too_many_tools" and error.status == 400 and error.param == "mcp_servers"
    assert "7 tools" in error.message and "a/one: 3, b/two: 2, request tools: 2" in error.message
    assert "at most 6" in error.message


async def test_too_many_mcp_tools(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    async with client(hub_settings(tmp_path, scripted_model, max_tools_per_request=5)) as (http, _):
        body = assert_error(await http.post("/v1/chat/completions", json=ask(mcp_servers=["test/probe"])), 400,
                            "too_many_tools")
        assert re.search(r"\(test/probe: \d+\); at most 5", body["message"]), body["message"]
        assert scripted_model.requests == []


# -- the request's time budget -----------------------------------------------------------------


async def warm(http: httpx2.AsyncClient) -> None:
    """Start the probe server's session, so that the budget is not spent spawning it."""
    response = await http.post("/v1/tools/call", json={"server": "test/probe", "tool": "echo", "arguments": {"text": "w"}})
    assert response.status_code == 200, response.text


async def test_time_budget_without_tools(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    async with client(hub_settings(tmp_path, scripted_model, request_timeout=0.3)) as (http, _):
        scripted_model.push(Reply.say("too late", delay=30))
        response = await http.post("/v1/chat/completions", json=ask())
        body = assert_error(response, 504, "request_timeout")
        assert body["type"] == "timeout_error" and response.headers["x-should-retry"] == "false"
        assert "0.3 s" in body["message"] and "no MCP tool had completed" in body["message"]
        assert body["tools_executed"] == []


async def test_time_budget_reports_the_tools_that_ran(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    async with client(hub_settings(tmp_path, scripted_model, request_timeout=2)) as (http, _):
        await warm(http)
        scripted_model.push(Reply.call((ECHO, {"text": "done"})), Reply.say("too late", delay=30))
        response = await http.post("/v1/chat/completions", json=ask(mcp_servers=["test/probe"]))
        body = assert_error(response, 504, "request_timeout")
        assert body["tools_executed"] == ["echo"] and "1 MCP tool call(s) had completed: echo" in body["message"]


async def test_time_budget_mid_stream_is_an_error_event(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    async with client(hub_settings(tmp_path, scripted_model, request_timeout=2)) as (http, _):
        await warm(http)
        scripted_model.push(Reply.call((ECHO, {"text": "done"})), Reply.say("too late", delay=30))
        options = {"include_tool_events": True}
        async with http.stream("POST", "/v1/chat/completions",
                               json=ask(mcp_servers=["test/probe"], stream=True, stream_options=options)) as response:
            assert response.status_code == 200
            text = (await response.aread()).decode()
        frames = [frame for frame in text.split("\n\n") if frame]
        assert frames[-1] == "data: [DONE]"
        assert frames[-2].startswith("event: error\n")
        error = json.loads(frames[-2].split("data: ", 1)[1])
        assert error["error"]["code"] == error["code"] == "request_timeout"
        assert error["tools_executed"] == ["echo"]


# -- the per-key rate limit --------------------------------------------------------------------


def limited(hub: Hub, clock: Clock, per_minute: int = 60, burst: int = 2) -> None:
    hub.limiter = TokenBuckets(per_minute, burst, clock=clock)


async def test_rate_limit_is_off_by_default(api: httpx2.AsyncClient) -> None:
    for _ in range(3):
        response = await api.get("/v1/servers")
        assert response.status_code == 200
        assert "x-ratelimit-limit-requests" not in response.headers


async def test_rate_limit_answers_429_and_refills(tmp_path: Path) -> None:
    clock = Clock()
    async with client(hub_settings(tmp_path, rate_limit_per_minute=60, rate_limit_burst=2)) as (http, hub):
        assert isinstance(hub.limiter, TokenBuckets)  # the setting turns it on
        limited(hub, clock)
        first = await http.get("/v1/servers")
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-requests"] == "60"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-reset-requests"] == "1s"
        assert (await http.get("/v1/models")).headers["x-ratelimit-remaining-requests"] == "0"
        refused = await http.get("/v1/servers")
        body = assert_error(refused, 429, "rate_limited")
        assert body["type"] == "rate_limit_error" and "60 requests per minute" in body["message"]
        assert refused.headers["retry-after"] == "1" and refused.headers["retry-after-ms"] == "1000"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert "x-should-retry" not in refused.headers  # SDKs retry a 429 after retry-after
        # Public routes are never limited.
        for path in ("/healthz", "/openapi.json", "/.well-known/jwks.json"):
            public = await http.get(path)
            assert public.status_code == 200 and "x-ratelimit-limit-requests" not in public.headers
        clock.now += 0.5
        half = await http.get("/v1/servers")
        assert_error(half, 429, "rate_limited")
        assert half.headers["retry-after"] == "1" and half.headers["retry-after-ms"] == "500"
        clock.now += 0.5
        assert (await http.get("/v1/servers")).status_code == 200
        assert_error(await http.get("/v1/servers"), 429, "rate_limited")
        clock.now += 60
        again = await http.get("/v1/servers")  # refilled to the burst, not beyond
        assert again.status_code == 200 and again.headers["x-ratelimit-remaining-requests"] == "1"


async def test_rate_limit_counts_per_key(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path)
    one = await create_key(settings, "acme")
    two = await create_key(settings, "acme")  # same tenant, another key: its own allowance
    clock = Clock()
    async with client(settings) as (http, hub):
        limited(hub, clock, burst=1)
        assert (await http.get("/v1/servers", headers={"Authorization": f"Bearer {one}"})).status_code == 200
        assert_error(await http.get("/v1/servers", headers={"x-api-key": one}), 429, "rate_limited")
        assert (await http.get("/v1/servers", headers={"x-api-key": two})).status_code == 200
        assert_error(await http.get("/v1/servers", headers={"x-api-key": two}), 429, "rate_limited")
        # An unauthenticated request is refused before it is counted.
        assert_error(await http.get("/v1/servers"), 401, "invalid_api_key")


async def test_anonymous_callers_count_per_address(tmp_path: Path) -> None:
    clock = Clock()
    async with running(hub_settings(tmp_path)) as (app, hub):
        limited(hub, clock, burst=1)
        for address in ("10.0.0.1", "10.0.0.2"):
            transport = httpx2.ASGITransport(app=app, client=(address, 1234))
            async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
                assert (await http.get("/v1/servers")).status_code == 200
                assert_error(await http.get("/v1/servers"), 429, "rate_limited")


async def test_sdks_see_a_rate_limit_error(tmp_path: Path) -> None:
    clock = Clock()
    async with running(hub_settings(tmp_path)) as (app, hub):
        limited(hub, clock, burst=1)
        # Each SDK on the HTTP library it is built on: openai on httpx2, dedalus-labs on httpx.
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)) as http2, \
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
            sdk = openai.AsyncOpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused", http_client=http2, max_retries=0)
            await sdk.models.list()
            with pytest.raises(openai.RateLimitError) as caught:
                await sdk.models.list()
            assert caught.value.code == "rate_limited" and caught.value.response.headers["retry-after"] == "1"
            dedalus = dedalus_labs.AsyncDedalus(base_url="http://127.0.0.1:8000", api_key="unused", http_client=http,
                                               max_retries=0)
            with pytest.raises(dedalus_labs.RateLimitError):
                await dedalus.models.list()


def test_buckets_forget_callers_once_full() -> None:
    clock = Clock()
    buckets = TokenBuckets(60, 3, clock=clock)
    for index in range(5):
        assert buckets.take(f"k{index}").allowed
    assert len(buckets) == 5
    clock.now += 3  # 3 tokens at 1/s: every bucket is full again
    decision = buckets.take("k0")
    assert decision.allowed and decision.remaining == 2 and len(buckets) == 1
