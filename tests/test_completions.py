"""`POST /v1/chat/completions` over real HTTP to a scripted model and real MCP servers."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import ROOT, asgi_client, probe_entry
from .model_fixtures import Reply, ScriptedModel, ToolThenAnswer

MODEL = "openai/gpt-test"
PROVIDER_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ECHO = "test-probe__echo"


def chat_settings(tmp_path: Path, model: ScriptedModel, **overrides: Any) -> Settings:
    return Settings.load(data_dir=tmp_path / "data", openai_base_url=model.openai_url, openai_api_key="sk-hub-key",
                         anthropic_base_url=model.anthropic_url.removesuffix("/v1"), anthropic_api_key="sk-ant-hub",
                         restart_backoff=0.05, **overrides)


async def hub_client(settings: Settings, registry: Registry) -> AsyncIterator[httpx2.AsyncClient]:
    async with asgi_client(settings, registry) as (client, _):
        yield client


@pytest.fixture
async def chat(tmp_path: Path, scripted_model: ScriptedModel) -> AsyncIterator[httpx2.AsyncClient]:
    registry = Registry.from_data({"servers": {"test/probe": {**probe_entry(), "limits": {"call_timeout": 2.0}}}},
                                  root=ROOT)
    async for client in hub_client(chat_settings(tmp_path, scripted_model), registry):
        yield client


def ask(content: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


async def test_plain_completion(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.say("Hello there", usage=(7, 3)))
    response = await chat.post("/v1/chat/completions", json=ask())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert body["turns_consumed"] == 1 and body["tools_executed"] == [] and body["mcp_tool_results"] == []
    sent = scripted_model.requests[0]
    assert sent.api_key == "sk-hub-key" and sent.body["model"] == "gpt-test"
    assert "tools" not in sent.body or sent.body["tools"] in ([], None)


async def test_mcp_tool_loop(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    scripted_model.responder = ToolThenAnswer(tool="__echo", arguments={"text": "pong"}, answer="It said {result}")
    response = await chat.post("/v1/chat/completions", json=ask(mcp_servers=["test/probe"]))
    body = response.json()
    assert body["choices"][0]["message"]["content"] == 'It said {"result":"pong"}'
    assert body["turns_consumed"] == 2 and body["tools_executed"] == ["echo"]
    (result,) = body["mcp_tool_results"]
    assert result["server_name"] == "test/probe" and result["tool_name"] == "echo"
    assert result["arguments"] == {"text": "pong"} and result["result"] == {"result": "pong"}
    assert result["is_error"] is False and isinstance(result["duration_ms"], int)
    assert body["usage"]["total_tokens"] == 30  # two turns of (10, 5)
    first, second = scripted_model.requests
    assert ECHO in first.tool_names and all(PROVIDER_NAME.match(name) for name in first.tool_names)
    assert [m["role"] for m in second.messages] == ["user", "assistant", "tool"]
    assert second.messages[1]["tool_calls"][0]["function"]["name"] == ECHO


async def test_parallel_and_sequential_tool_calls(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    sleeps = [("test-probe__sleep", {"ms": 400}) for _ in range(3)]
    assert (await chat.get("/v1/servers/test/probe")).status_code == 200  # the server is warm before timing
    for parallel, bound in ((True, lambda t: t < 1.0), (False, lambda t: t >= 1.2)):
        scripted_model.push(Reply.call(*sleeps), Reply.say("done"))
        started = anyio.current_time()
        body = (await chat.post("/v1/chat/completions",
                                json=ask(mcp_servers="test/probe", parallel_tool_calls=parallel))).json()
        assert len(body["mcp_tool_results"]) == 3
        assert bound(anyio.current_time() - started), (parallel, anyio.current_time() - started)


async def test_max_turns_exhausted_lists_unexecuted_calls(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    scripted_model.default = Reply.call((ECHO, {"text": "again"}))
    body = (await chat.post("/v1/chat/completions", json=ask(mcp_servers=["test/probe"], max_turns=3))).json()
    assert body["turns_consumed"] == 3
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["turns_exhausted"] is True
    assert len(body["mcp_tool_results"]) == 2  # the third turn's call was not executed
    (pending,) = body["unexecuted_tool_calls"]
    assert pending["name"] == ECHO and pending["tool_name"] == "echo" and pending["arguments"] == {"text": "again"}


async def test_automatic_tool_execution_off(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.call((ECHO, {"text": "x"})))
    body = (await chat.post("/v1/chat/completions",
                            json=ask(mcp_servers="test/probe", automatic_tool_execution=False))).json()
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == ECHO
    assert body["mcp_tool_results"] == [] and body["turns_consumed"] == 1


async def test_client_tools_come_back_after_the_mcp_calls_of_the_turn(chat: httpx2.AsyncClient,
                                                                       scripted_model: ScriptedModel) -> None:
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    scripted_model.push(Reply.call((ECHO, {"text": "a"}), ("get_weather", {"city": "Oslo"})))
    body = (await chat.post("/v1/chat/completions", json=ask(mcp_servers="test/probe", tools=[weather]))).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_weather"]
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert body["tools_executed"] == ["echo"]
    assert "get_weather" in scripted_model.requests[0].tool_names


async def test_failing_servers_and_tools_are_data(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    scripted_model.push(
        Reply.call(("test-probe__crash", {}), ("test-probe__sleep", {"ms": 5000}), (ECHO, "{not json"),
                   ("no_such_tool", {})),
        Reply.say("recovered"),
    )
    body = (await chat.post("/v1/chat/completions", json=ask(mcp_servers=["test/probe", "test/nope"]))).json()
    assert body["choices"][0]["message"]["content"] == "recovered"
    assert body["mcp_server_errors"]["test/nope"]["code"] == "server_not_found"
    assert "test/probe" in body["mcp_server_errors"]["test/nope"]["recommendation"]
    by_tool = {r["tool_name"]: r for r in body["mcp_tool_results"]}
    assert by_tool["crash"]["is_error"] and by_tool["sleep"]["is_error"]  # crash: session lost; sleep: timeout
    assert by_tool["echo"]["is_error"] and "invalid_arguments" in json.dumps(by_tool["echo"]["result"])
    tool_messages = {m["tool_call_id"]: m["content"] for m in scripted_model.requests[1].messages if m["role"] == "tool"}
    assert len(tool_messages) == 4
    assert any("no tool named 'no_such_tool'" in text for text in tool_messages.values())
    assert all(text.startswith("Error:") for text in tool_messages.values())


async def test_fallback_to_the_next_model_on_retryable_failure(chat: httpx2.AsyncClient,
                                                               scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.fail(500), Reply.fail(429, retry_after=1), Reply.say("from the third"))
    models = [MODEL, {"model": "openai/second", "settings": {"temperature": 0.1}}, "openai/third"]
    body = (await chat.post("/v1/chat/completions", json={**ask(), "model": models})).json()
    assert body["model"] == "openai/third" and body["choices"][0]["message"]["content"] == "from the third"
    assert [r.body["model"] for r in scripted_model.requests] == ["gpt-test", "second", "third"]
    assert scripted_model.requests[1].body["temperature"] == 0.1


@pytest.mark.parametrize(("reply", "status", "code"), [
    (Reply.fail(500, "upstream exploded"), 502, "provider_error"),
    (Reply.fail(429, retry_after=3), 429, "provider_rate_limited"),
    (Reply.fail(401, "bad key sk-hub-key"), 502, "provider_auth"),
])
async def test_provider_failures(chat: httpx2.AsyncClient, scripted_model: ScriptedModel, reply: Reply, status: int,
                                 code: str) -> None:
    scripted_model.push(reply)
    response = await chat.post("/v1/chat/completions", json=ask())
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert "sk-hub-key" not in response.text


async def test_provider_timeout(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    settings = chat_settings(tmp_path, scripted_model, provider_timeout=0.3)
    async for client in hub_client(settings, Registry({}, root=ROOT)):
        scripted_model.push(Reply.say("late", delay=3))
        response = await client.post("/v1/chat/completions", json=ask())
        assert response.status_code == 504 and response.json()["error"]["code"] == "provider_timeout"


@pytest.mark.parametrize(("body", "param", "fragment"), [
    ({"model": MODEL}, "messages", "Field required"),
    ({"model": MODEL, "messages": []}, "messages", "at least 1"),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages", "role"),
    ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, "messages", "tool_call_id"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model", "Field required"),
    ({**ask(), "model": "nope/model"}, "model", "openai"),
    ({**ask(), "model": "no-prefix"}, "model", "openai"),
    ({**ask(), "model": []}, "model", "empty"),
    ({**ask(), "n": 2}, "n", "less than or equal to 1"),
    ({**ask(), "max_turns": 0}, "max_turns", "greater than or equal to 1"),
    ({**ask(), "agent_attributes": {"speed": 2}}, "agent_attributes", "less than or equal to 1"),
    ({**ask(), "tools": [{"type": "function"}]}, "tools", "function"),
    ({**ask(), "credentials": {"values": {}}}, "credentials", "connection_name"),
])
async def test_bad_requests(chat: httpx2.AsyncClient, body: dict[str, Any], param: str, fragment: str) -> None:
    response = await chat.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] is not None and error["param"].startswith(param), error
    assert fragment in error["message"], error


async def test_nullable_fields_and_passthrough(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.say("ok"))
    nulls = {key: None for key in ("tools", "tool_choice", "stream", "stream_options", "mcp_servers", "credentials",
                                   "max_turns", "automatic_tool_execution", "handoff_mode", "correlation_id",
                                   "deferred_calls", "deferred", "temperature", "max_tokens")}
    response = await chat.post("/v1/chat/completions", json={**ask(), **nulls, "mcp_servers": [], "seed": 7,
                                                             "top_k": 3, "response_format": {"type": "text"}})
    assert response.status_code == 200, response.text
    sent = scripted_model.requests[0].body
    assert sent["seed"] == 7 and sent["top_k"] == 3 and sent["response_format"] == {"type": "text"}
    assert "temperature" not in sent and "mcp_servers" not in sent and "tool_choice" not in sent


async def test_byok_header_reaches_the_provider(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.say("ok"))
    await chat.post("/v1/chat/completions", json=ask(), headers={"X-Provider-Key": "sk-callers-own"})
    assert scripted_model.requests[0].api_key == "sk-callers-own"


async def test_anthropic_provider_runs_the_same_loop(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    scripted_model.responder = ToolThenAnswer(tool="__echo", arguments={"text": "claude"}, answer="got {result}")
    body = (await chat.post("/v1/chat/completions",
                            json={**ask(mcp_servers="test/probe"), "model": "anthropic/claude-test"})).json()
    assert body["model"] == "anthropic/claude-test"
    assert body["choices"][0]["message"]["content"] == 'got {"result":"claude"}'
    assert body["tools_executed"] == ["echo"]
    assert scripted_model.requests[0].path.endswith("/messages")


async def test_models_listing(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    body = (await chat.get("/v1/models")).json()
    ids = [model["id"] for model in body["data"]]
    assert body["object"] == "list" and ids and all("/" in i for i in ids)
    assert {i.split("/", 1)[0] for i in ids} >= {"openai"}


# -- idempotency ---------------------------------------------------------------------------

async def test_idempotent_retry_does_not_run_tools_twice(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    scripted_model.responder = ToolThenAnswer(tool="__echo", arguments={"text": "once"})
    request = ask(mcp_servers="test/probe")
    headers = {"Idempotency-Key": "key-1"}
    first = await chat.post("/v1/chat/completions", json=request, headers=headers)
    second = await chat.post("/v1/chat/completions", json=request, headers=headers)
    assert first.json() == second.json()
    assert second.headers.get("idempotent-replayed") == "true"
    assert len(scripted_model.requests) == 2  # one tool turn and one answer, not four requests
    other = await chat.post("/v1/chat/completions", json=ask("different"), headers=headers)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"


async def test_concurrent_retry_waits_for_the_first(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.say("slow answer", delay=0.5))
    headers = {"Idempotency-Key": "key-2"}
    responses: list[httpx2.Response] = []

    async def send() -> None:
        responses.append(await chat.post("/v1/chat/completions", json=ask(), headers=headers))

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        tg.start_soon(send)
    assert [r.json()["choices"][0]["message"]["content"] for r in responses] == ["slow answer"] * 2
    assert len(scripted_model.requests) == 1


async def test_failure_before_any_tool_ran_can_be_retried(chat: httpx2.AsyncClient,
                                                          scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.fail(500), Reply.say("second time lucky"))
    headers = {"Idempotency-Key": "key-3"}
    assert (await chat.post("/v1/chat/completions", json=ask(), headers=headers)).status_code == 502
    retry = await chat.post("/v1/chat/completions", json=ask(), headers=headers)
    assert retry.json()["choices"][0]["message"]["content"] == "second time lucky"


# -- streaming ----------------------------------------------------------------------------

def parse_sse(text: str) -> list[tuple[str | None, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        name, data = None, None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        events.append((name, data if data == "[DONE]" else json.loads(data or "null")))
    return events


async def stream(chat: httpx2.AsyncClient, body: dict[str, Any]) -> list[tuple[str | None, Any]]:
    response = await chat.post("/v1/chat/completions", json={**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text)


async def test_stream_carries_content_of_every_turn_and_extensions_on_the_final_chunk(
        chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.call((ECHO, {"text": "s"}), text="Checking. "), Reply.say("The answer is s.", chunk_size=3))
    events = await stream(chat, ask(mcp_servers="test/probe"))
    assert events[-1] == (None, "[DONE]")
    chunks = [data for _, data in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and len(c["choices"]) == 1 for c in chunks)  # naive loops survive
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Checking. The answer is s."
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) > 3  # streamed in pieces
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["tools_executed"] == ["echo"] and final["turns_consumed"] == 2
    assert final["mcp_tool_results"][0]["result"] == {"result": "s"}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


async def test_stream_opt_ins_usage_and_tool_events(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.call((ECHO, {"text": "e"})), Reply.say("fine"))
    events = await stream(chat, ask(mcp_servers="test/probe",
                                    stream_options={"include_usage": True, "include_tool_events": True}))
    chunks = [data for _, data in events[:-1]]
    activity = [c["event"] for c in chunks if not c["choices"] and "event" in c]
    assert [a["type"] for a in activity] == ["tool_call.started", "tool_call.completed"]
    assert activity[1]["server"] == "test/probe" and activity[1]["tool"] == "echo" and "duration_ms" in activity[1]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 30
    scripted_model.push(Reply.say("x"))
    plain = await stream(chat, ask())
    assert all(data == "[DONE]" or data["choices"] for _, data in plain)  # no opt-in, no choices-less chunk


async def test_stream_ending_in_client_calls(chat: httpx2.AsyncClient, scripted_model: ScriptedModel) -> None:
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    scripted_model.push(Reply.call(("get_weather", {"city": "Rome"})))
    events = await stream(chat, ask(tools=[weather]))
    final = events[-2][1]
    assert final["choices"][0]["finish_reason"] == "tool_calls"
    call = final["choices"][0]["delta"]["tool_calls"][0]
    assert call["index"] == 0 and call["function"]["name"] == "get_weather"


async def test_failure_after_the_stream_began_is_an_error_event(chat: httpx2.AsyncClient,
                                                                scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.call((ECHO, {"text": "x"}), text="Let me see. "), Reply.fail(500))
    events = await stream(chat, ask(mcp_servers="test/probe"))
    name, data = events[-2]
    assert name == "error" and data["error"]["code"] == "provider_error"
    assert events[-1] == (None, "[DONE]")


async def test_failure_before_the_stream_began_is_an_http_error(chat: httpx2.AsyncClient,
                                                                scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.fail(429, retry_after=2))
    response = await chat.post("/v1/chat/completions", json={**ask(), "stream": True})
    assert response.status_code == 429 and response.json()["error"]["code"] == "provider_rate_limited"
