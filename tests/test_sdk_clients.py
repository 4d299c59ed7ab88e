"""Unmodified `openai` and `dedalus-labs` SDK clients against a hub running on a real socket.

The hub runs under uvicorn in a background thread (`tests/hub_server.py`); the model is
the scripted upstream server; MCP servers are the probe (stdio, or streamable HTTP for the
URL form) and the project's hosted `hub/calc`. SDK retries are off (`max_retries=0`)
unless a test is about retries.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import dedalus_labs
import openai
import pytest
import yaml
from dedalus_labs import AsyncDedalus, Dedalus, DedalusRunner
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from mcp_hub.registry import Registry
from mcp_hub.sessions import ManagedSession
from mcp_hub.settings import Settings

from .conftest import PROBE, ROOT
from .hub_server import HubServer
from .model_fixtures import Recorded, Reply, ScriptedModel, ToolThenAnswer

MODEL = "openai/gpt-test"
ECHO = "test-probe__echo"
WEATHER: Any = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
StartHub = Callable[..., HubServer]


def sdk_registry() -> Registry:
    """`test/probe` in two versions that differ only by an env var, and the hosted `hub/calc`."""
    calc = yaml.safe_load((ROOT / "registry.yaml").read_text())["servers"]["hub/calc"]
    probe = {"description": "probe", "tags": ["test"], "limits": {"call_timeout": 30},
             "versions": {v: {"command": ["{python}", str(PROBE)], "env": {"PROBE_TAG": tag}}
                          for v, tag in (("1.0.0", "one"), ("2.0.0", "two"))}}
    return Registry.from_data({"servers": {"test/probe": probe, "hub/calc": calc}}, root=ROOT)


@pytest.fixture
def start_hub(tmp_path: Path, scripted_model: ScriptedModel) -> Iterator[StartHub]:
    """Start a hub (settings overridable) that reaches the scripted model as its providers."""
    with contextlib.ExitStack() as stack:
        def start(**overrides: Any) -> HubServer:
            settings = Settings.load(data_dir=tmp_path / "data", openai_base_url=scripted_model.openai_url,
                                     openai_api_key="sk-hub-key", anthropic_base_url=scripted_model.anthropic_url,
                                     anthropic_api_key="sk-ant-hub", restart_backoff=0.05, **overrides)
            return stack.enter_context(HubServer.serve(settings, sdk_registry()))

        yield start


@pytest.fixture
def hub(start_hub: StartHub) -> HubServer:
    return start_hub()


def openai_client(hub: HubServer, **options: Any) -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"{hub.url}/v1", api_key="sk-client", max_retries=0, **options)
    hub.clients.append(client)  # closed with the hub: no socket is left for the GC (ResourceWarning)
    return client


def dedalus_client(hub: HubServer, **options: Any) -> Dedalus:
    client = Dedalus(base_url=hub.url, api_key="dsk-client", **{"max_retries": 0, **options})
    hub.clients.append(client)
    return client


def user(text: str = "hi") -> list[Any]:
    return [{"role": "user", "content": text}]


def extra(model: Any, key: str) -> Any:
    """An extension field: a declared field of the Dedalus types, or a pydantic extra the SDK kept."""
    assert key in type(model).model_fields or key in (model.model_extra or {}), key
    return getattr(model, key)


def poll(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Bounded polling of an observable (no sleeps as synchronisation)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not hold within {timeout}s")
        time.sleep(0.01)


def probe_session(hub: HubServer) -> ManagedSession:
    (session,) = [s for s in hub.hub.pool.sessions() if s.alive and "probe" in repr(s)]
    return session


def tool_messages(record: Recorded) -> list[str]:
    return [m["content"] for m in record.messages if m["role"] == "tool"]


def asked_and_answered(record: Recorded) -> list[tuple[str, str, str]]:
    """(kind, call id, tool name or result text) in conversation order, in either wire format."""
    items: list[tuple[str, str, str]] = []
    for message in record.messages:
        if record.format == "openai":
            items += [("call", c["id"], c["function"]["name"]) for c in message.get("tool_calls") or []]
            if message["role"] == "tool":
                items.append(("result", message["tool_call_id"], message["content"]))
        elif isinstance(message["content"], list):
            for block in message["content"]:
                if block["type"] == "tool_use":
                    items.append(("call", block["id"], block["name"]))
                elif block["type"] == "tool_result":
                    content = block["content"]
                    text = content if isinstance(content, str) else "".join(part["text"] for part in content)
                    items.append(("result", block["tool_use_id"], text))
    return items


def assert_well_formed(record: Recorded) -> None:
    """Every tool result answers a tool call made earlier in the conversation (real providers insist)."""
    asked: set[str] = set()
    for kind, ident, _ in asked_and_answered(record):
        if kind == "call":
            asked.add(ident)
        else:
            assert ident in asked, record.messages


# -- openai SDK ----------------------------------------------------------------------------------

def test_openai_plain_completion(hub: HubServer, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.say("Hello there", usage=(7, 3)))
    completion = openai_client(hub).chat.completions.create(model=MODEL, messages=user(), temperature=0.2)
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.choices[0].message.content == "Hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 10
    assert extra(completion, "turns_consumed") == 1
    sent = scripted_model.requests[0]
    assert sent.body["model"] == "gpt-test" and sent.body["temperature"] == 0.2 and sent.api_key == "sk-hub-key"


def test_openai_naive_stream_loop_across_tool_turns(hub: HubServer, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.call((ECHO, {"text": "s"}), text="Checking. "), Reply.say("The answer is s.", chunk_size=3))
    stream = openai_client(hub).chat.completions.create(model=MODEL, messages=user(), stream=True,
                                                       extra_body={"mcp_servers": ["test/probe"]})
    pieces, chunks = [], []
    for chunk in stream:  # the loop every tutorial shows: must not crash on any chunk
        pieces.append(chunk.choices[0].delta.content or "")
        chunks.append(chunk)
    assert "".join(pieces) == "Checking. The answer is s."
    final = chunks[-1]
    assert final.choices[0].finish_reason == "stop"
    assert extra(final, "tools_executed") == ["echo"]
    assert extra(final, "mcp_tool_results")[0]["result"] == {"result": "s"}
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_openai_client_tools(hub: HubServer, scripted_model: ScriptedModel) -> None:
    client = openai_client(hub)
    scripted_model.push(Reply.call(("get_weather", {"city": "Oslo"})))
    completion = client.chat.completions.create(model=MODEL, messages=user("weather?"), tools=[WEATHER])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall) and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert "get_weather" in scripted_model.requests[0].tool_names

    # The same, streamed: the deltas assemble into the call, and the naive loop still survives.
    scripted_model.push(Reply.call(("get_weather", {"city": "Rome"}), chunk_size=3))
    stream = client.chat.completions.create(model=MODEL, messages=user("weather?"), tools=[WEATHER], stream=True)
    names, arguments, finish = "", "", None
    for chunk in stream:
        assert chunk.choices[0].delta.content in (None, "")
        for delta in chunk.choices[0].delta.tool_calls or []:
            names += delta.function.name or "" if delta.function else ""
            arguments += delta.function.arguments or "" if delta.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and names == "get_weather" and json.loads(arguments) == {"city": "Rome"}


def test_openai_mcp_server_extension_fields(hub: HubServer, scripted_model: ScriptedModel) -> None:
    scripted_model.responder = ToolThenAnswer(tool="__evaluate", arguments={"expression": "6 * 7"}, answer="It is {result}")
    completion = openai_client(hub).chat.completions.create(model=MODEL, messages=user("6*7?"),
                                                           extra_body={"mcp_servers": ["hub/calc"]})
    assert completion.choices[0].message.content is not None and "42" in completion.choices[0].message.content
    assert extra(completion, "tools_executed") == ["evaluate"]
    (result,) = cast(Any, completion).mcp_tool_results  # attribute access to a field the SDK does not declare
    assert result["server_name"] == "hub/calc" and result["tool_name"] == "evaluate"
    assert result["arguments"] == {"expression": "6 * 7"} and result["result"]["result"] == 42
    assert result["is_error"] is False
    assert extra(completion, "turns_consumed") == 2


# -- dedalus-labs SDK ----------------------------------------------------------------------------

@pytest.mark.parametrize(("servers", "server_name", "tag"), [
    ("test/probe", "test/probe", "two"),  # latest version
    (["test/probe@1.0.0"], "test/probe", "one"),  # the SDK splits it into {"slug", "version"}
    ([{"slug": "test/probe", "version": "2.0.0"}], "test/probe", "two"),  # a spec object
    ("URL", None, ""),  # the probe over streamable HTTP, started without PROBE_TAG
])
def test_dedalus_mcp_server_forms(request: pytest.FixtureRequest, hub: HubServer, scripted_model: ScriptedModel,
                                  servers: Any, server_name: str | None, tag: str) -> None:
    if servers == "URL":
        servers = server_name = request.getfixturevalue("probe_http")
    scripted_model.responder = ToolThenAnswer(tool="__env", arguments={"name": "PROBE_TAG"}, answer="tag={result}")
    response = dedalus_client(hub).chat.completions.create(model=MODEL, messages=user(), mcp_servers=servers)
    assert response.choices[0].message.content == f'tag={{"result":"{tag}"}}'
    assert response.tools_executed == ["env"]
    (result,) = response.mcp_tool_results or []
    assert isinstance(result, dedalus_labs.types.shared.MCPToolResult)
    assert result.server_name == server_name
    assert result.tool_name == "env"
    assert result.arguments == {"name": "PROBE_TAG"}
    assert result.result == {"result": tag}
    assert result.is_error is False
    assert isinstance(result.duration_ms, int) and 0 <= result.duration_ms < 30_000
    sent = scripted_model.requests[0].body
    assert sent["model"] == "gpt-test" and "mcp_servers" not in sent


def test_dedalus_streaming(hub: HubServer, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.call(("hub-calc__evaluate", {"expression": "2 ** 10"}), text="Let me compute. "),
                        Reply.say("It is 1024.", chunk_size=2))
    stream = dedalus_client(hub).chat.completions.create(model=[MODEL], messages=user(), mcp_servers=["hub/calc"],
                                                         stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Let me compute. It is 1024."
    final = chunks[-1]
    assert final.choices[0].finish_reason == "stop"
    assert extra(final, "tools_executed") == ["evaluate"] and extra(final, "turns_consumed") == 2
    (result,) = extra(final, "mcp_tool_results")
    assert result["server_name"] == "hub/calc" and result["result"]["result"] == 1024


# -- DedalusRunner -------------------------------------------------------------------------------

def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


TASKS: dict[str, tuple[dict[str, Any], ToolThenAnswer, str]] = {
    # task -> (runner arguments, model responder, the answer it must finish with)
    "mcp-only": ({"mcp_servers": ["hub/calc"]},
                 ToolThenAnswer(tool="__evaluate", arguments={"expression": "(2 + 3) * 4"}, answer="Result: {result}"),
                 '"result":20'),
    "local-only": ({"tools": [add]}, ToolThenAnswer(tool="add", arguments={"a": 2, "b": 3}, answer="Sum: {result}"),
                   "Sum: 5"),
}


def check_runner_conversation(scripted_model: ScriptedModel, task: str) -> None:
    """The model saw a well-formed conversation, the real tool result and never an `Error: '…'` message."""
    requests = scripted_model.requests
    assert len(requests) == 2, [r.messages for r in requests]  # a tool turn, then the answer: no re-sent request
    for record in requests:
        assert_well_formed(record)
    calls = asked_and_answered(requests[1])
    assert [(kind, name) for kind, _, name in calls if kind == "call"] == [
        ("call", "add" if task == "local-only" else "hub-calc__evaluate")]
    (result,) = [text for kind, _, text in calls if kind == "result"]
    assert not result.startswith("Error")
    if task == "local-only":
        assert result == "5"
    else:
        assert json.loads(result)["result"] == 20
    if task == "mcp-only":
        assert "hub-calc__evaluate" in requests[0].tool_names
    else:
        assert requests[0].tool_names == ["add"]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_dedalus_runner(hub: HubServer, scripted_model: ScriptedModel, task: str) -> None:
    arguments, responder, answer = TASKS[task]
    scripted_model.responder = responder
    result = DedalusRunner(dedalus_client(hub)).run(input="compute", model=MODEL, **arguments)
    assert answer in result.final_output
    assert not any(str(m.get("content", "")).startswith("Error") for m in result.messages if m.get("role") == "tool")
    if task == "mcp-only":
        assert [r.tool_name for r in result.mcp_results] == ["evaluate"]
    else:
        assert result.tools_called == ["add"]
    check_runner_conversation(scripted_model, task)


@pytest.mark.parametrize(("task", "model"), [("mcp-only", MODEL), ("local-only", MODEL),
                                            ("local-only", "anthropic/claude-test")])
def test_dedalus_runner_streaming(hub: HubServer, scripted_model: ScriptedModel, task: str, model: str) -> None:
    """The streaming runner sends its local tool's result without the assistant message that asked
    for it (PROTOCOL.md section 5); the hub must still give the provider a valid conversation."""
    arguments, responder, answer = TASKS[task]
    scripted_model.responder = responder
    stream = DedalusRunner(dedalus_client(hub)).run(input="compute", model=model, stream=True, **arguments)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert answer in text
    check_runner_conversation(scripted_model, task)


@pytest.mark.parametrize("stream", [False, True])
async def test_async_dedalus_runner(hub: HubServer, scripted_model: ScriptedModel, stream: bool) -> None:
    arguments, responder, answer = TASKS["mcp-only"]
    scripted_model.responder = responder
    async with AsyncDedalus(base_url=hub.url, api_key="dsk-client", max_retries=0) as client:
        runner = DedalusRunner(client)
        if stream:
            chunks = [chunk async for chunk in runner.run(input="compute", model=MODEL, stream=True, **arguments)]
            text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
        else:
            text = (await runner.run(input="compute", model=MODEL, **arguments)).final_output
    assert answer in text
    check_runner_conversation(scripted_model, "mcp-only")


# -- errors as the SDKs see them -----------------------------------------------------------------

def test_bad_request_parses_in_both_sdks(hub: HubServer) -> None:
    with pytest.raises(openai.BadRequestError) as oai:
        openai_client(hub).chat.completions.create(model="nope/model", messages=user())
    assert oai.value.status_code == 400 and oai.value.code == "unknown_provider" and oai.value.param == "model"
    assert oai.value.type == "invalid_request_error" and "openai" in oai.value.message
    with pytest.raises(dedalus_labs.BadRequestError) as ded:
        dedalus_client(hub).chat.completions.create(model=MODEL, messages=user(), max_turns=0)
    assert ded.value.code == "invalid_request" and ded.value.param == "max_turns"
    assert ded.value.type == "invalid_request_error"


@pytest.mark.parametrize(("reply", "openai_error", "dedalus_error", "code"), [
    (Reply.fail(500, "upstream exploded"), openai.InternalServerError, dedalus_labs.InternalServerError, "provider_error"),
    (Reply.fail(429, retry_after=3), openai.RateLimitError, dedalus_labs.RateLimitError, "provider_rate_limited"),
])
def test_provider_failure_without_fallback(hub: HubServer, scripted_model: ScriptedModel, reply: Reply,
                                           openai_error: type[openai.APIStatusError],
                                           dedalus_error: type[dedalus_labs.APIStatusError], code: str) -> None:
    scripted_model.push(reply, reply)
    with pytest.raises(openai_error) as oai:
        openai_client(hub).chat.completions.create(model=MODEL, messages=user())
    assert oai.value.code == code
    with pytest.raises(dedalus_error) as ded:
        dedalus_client(hub).chat.completions.create(model=[MODEL], messages=user(), stream=True)
    assert ded.value.code == code
    assert len(scripted_model.requests) == 2  # max_retries=0: one call each


def test_provider_500_and_429_fall_back_to_the_next_model(hub: HubServer, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.fail(500), Reply.fail(429, retry_after=1), Reply.say("from the third"))
    models: Any = [MODEL, {"model": "openai/second", "settings": {"temperature": 0.1}}, "openai/third"]
    response = dedalus_client(hub).chat.completions.create(model=models, messages=user())
    assert response.model == "openai/third" and response.choices[0].message.content == "from the third"
    assert [r.body["model"] for r in scripted_model.requests] == ["gpt-test", "second", "third"]
    assert scripted_model.requests[1].body["temperature"] == 0.1


def test_provider_timeout_falls_back_through_the_openai_sdk(start_hub: StartHub, scripted_model: ScriptedModel) -> None:
    hub = start_hub(provider_timeout=0.5)
    scripted_model.push(Reply.say("too late", delay=60), Reply.say("in time"))
    started = time.monotonic()
    completion = openai_client(hub).chat.completions.create(model=MODEL, messages=user(),
                                                           extra_body={"model": [MODEL, "openai/backup"]})
    assert completion.model == "openai/backup" and completion.choices[0].message.content == "in time"
    assert time.monotonic() - started < 30  # far less than the slow model's 60 s: the hub gave up on it
    first = scripted_model.wait_for_requests(2, predicate=lambda rs: rs[0].disconnected)[0]
    assert first.disconnected  # the hub hung up on the slow model instead of leaving the call running
    scripted_model.push(Reply.say("too late", delay=60))
    with pytest.raises(openai.APIStatusError) as exc:
        openai_client(hub).chat.completions.create(model=MODEL, messages=user())
    assert exc.value.status_code == 504 and exc.value.code == "provider_timeout"


def test_failure_mid_stream_is_an_error_both_sdks_raise(hub: HubServer, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.call((ECHO, {"text": "x"}), text="Let me see. "), Reply.fail(500))
    stream = openai_client(hub).chat.completions.create(model=MODEL, messages=user(), stream=True,
                                                       extra_body={"mcp_servers": ["test/probe"]})
    seen = []
    with pytest.raises(openai.APIError) as oai:
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "Let me see. " and oai.value.code == "provider_error"

    scripted_model.push(Reply.call((ECHO, {"text": "x"}), text="Let me see. "), Reply.fail(500))
    stream2 = dedalus_client(hub).chat.completions.create(model=MODEL, messages=user(), stream=True,
                                                          mcp_servers=["test/probe"])
    with pytest.raises(dedalus_labs.APIStatusError) as ded:
        for _ in stream2:
            pass
    assert ded.value.code == "provider_error" and ded.value.type == "api_error"


def test_max_turns_exhausted_through_the_sdks(hub: HubServer, scripted_model: ScriptedModel) -> None:
    scripted_model.default = Reply.call((ECHO, {"text": "again"}))
    response = dedalus_client(hub).chat.completions.create(model=MODEL, messages=user(), mcp_servers="test/probe",
                                                           max_turns=2)
    assert response.choices[0].finish_reason == "length"
    assert extra(response, "turns_exhausted") is True and extra(response, "turns_consumed") == 2
    assert len(response.mcp_tool_results or []) == 1 and response.tools_executed == ["echo"]
    (pending,) = extra(response, "unexecuted_tool_calls")
    assert pending["name"] == ECHO and pending["arguments"] == {"text": "again"}
    completion = openai_client(hub).chat.completions.create(model=MODEL, messages=user(),
                                                           extra_body={"mcp_servers": "test/probe", "max_turns": 1})
    assert completion.choices[0].finish_reason == "length" and extra(completion, "turns_exhausted") is True
    assert extra(completion, "mcp_tool_results") == []


def test_malformed_tool_arguments_from_the_model(hub: HubServer, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.call((ECHO, "{not json")), Reply.say("recovered"))
    response = dedalus_client(hub).chat.completions.create(model=MODEL, messages=user(), mcp_servers=["test/probe"])
    assert response.choices[0].message.content == "recovered"
    (result,) = response.mcp_tool_results or []
    assert result.is_error is True and result.tool_name == "echo" and result.arguments == {}
    assert "invalid_arguments" in json.dumps(result.result)
    (told,) = tool_messages(scripted_model.requests[1])
    assert told.startswith("Error:") and "JSON" in told  # the model is told why, so it can try again


def test_server_crash_mid_call_is_an_error_result_and_the_loop_goes_on(hub: HubServer,
                                                                      scripted_model: ScriptedModel) -> None:
    client = dedalus_client(hub)
    scripted_model.push(Reply.call(("test-probe__crash", {})), Reply.say("the server crashed"))
    response = client.chat.completions.create(model=MODEL, messages=user(), mcp_servers=["test/probe"])
    assert response.choices[0].message.content == "the server crashed"
    (result,) = response.mcp_tool_results or []
    assert result.tool_name == "crash" and result.is_error is True
    assert tool_messages(scripted_model.requests[1])[0].startswith("Error:")
    # The next request gets a restarted server.
    scripted_model.reset()
    scripted_model.responder = ToolThenAnswer(tool="__echo", arguments={"text": "back"}, answer="{result}")
    again = client.chat.completions.create(model=MODEL, messages=user(), mcp_servers=["test/probe"])
    assert again.choices[0].message.content == '{"result":"back"}'


def test_sdk_retry_does_not_run_tools_twice(hub: HubServer, scripted_model: ScriptedModel) -> None:
    """The Dedalus SDK retries a 502 with the same Idempotency-Key: the hub replays, no tool runs again."""
    scripted_model.push(Reply.call(("test-probe__pid", {})), Reply.fail(500))
    with pytest.raises(dedalus_labs.InternalServerError) as exc:
        dedalus_client(hub, max_retries=1).chat.completions.create(model=MODEL, messages=user(), mcp_servers="test/probe")
    assert exc.value.code == "provider_error"
    assert len(scripted_model.requests) == 2  # one tool turn and one failed answer turn; the retry was a replay


# -- client disconnects ----------------------------------------------------------------------------

def test_disconnect_mid_stream_cancels_the_model_call(hub: HubServer, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.say("Hello, this answer never finishes", chunk_size=5, stall=60))
    stream = openai_client(hub).chat.completions.create(model=MODEL, messages=user(), stream=True)
    for chunk in stream:
        if chunk.choices[0].delta.content:
            assert chunk.choices[0].delta.content == "Hello"
            break
    stream.close()
    (record,) = scripted_model.wait_for_requests(1, timeout=20, predicate=lambda rs: rs[0].disconnected)
    assert record.disconnected


def test_disconnect_mid_stream_cancels_pending_tool_calls(hub: HubServer, scripted_model: ScriptedModel,
                                                          tmp_path: Path) -> None:
    client = dedalus_client(hub)
    scripted_model.push(Reply.call(("test-probe__pid", {})), Reply.say("pid known"))
    before = client.chat.completions.create(model=MODEL, messages=user(), mcp_servers=["test/probe"])
    pid = (before.mcp_tool_results or [])[0].result
    session = probe_session(hub)

    scripted_model.reset()  # the sandboxed probe writes only in its session's folder (MCP_HUB_DATA_DIR)
    scripted_model.push(Reply.call(("test-probe__env", {"name": "MCP_HUB_DATA_DIR"})), Reply.say("folder known"))
    folder = client.chat.completions.create(model=MODEL, messages=user(), mcp_servers=["test/probe"])
    answer = (folder.mcp_tool_results or [])[0].result
    marker = Path(str(answer["result"] if isinstance(answer, dict) else answer)) / "sleep-started"
    scripted_model.reset()
    scripted_model.push(Reply.call(("test-probe__sleep", {"ms": 30_000, "marker": str(marker)}), text="Working. "),
                        Reply.say("never asked for"))
    stream = client.chat.completions.create(model=MODEL, messages=user(), mcp_servers=["test/probe"], stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content in ("", "Working. ")
    poll(marker.exists, what="the probe's sleep started")
    poll(lambda: session.in_flight == 1, what="the sleep is in flight")
    stream.close()
    poll(lambda: session.in_flight == 0, timeout=15, what="the cancelled sleep left the session")  # it sleeps 30 s
    assert len(scripted_model.requests) == 1 and scripted_model.pending == 1  # the answer turn never ran

    # The session survived the cancellation: same server process, still answering.
    scripted_model.reset()
    scripted_model.push(Reply.call(("test-probe__pid", {})), Reply.say("pid again"))
    after = client.chat.completions.create(model=MODEL, messages=user(), mcp_servers=["test/probe"])
    assert (after.mcp_tool_results or [])[0].result == pid and probe_session(hub) is session


# -- client-tool handoffs with the dedalus-labs SDK ------------------------------------------------

class CalcAddCalc:
    """A model that needs an MCP tool, then a local tool, then the MCP tool again with the local result."""

    def __call__(self, request: Recorded) -> Reply:
        results = [m["content"] for m in request.messages if m.get("role") == "tool"]
        evaluate = next(name for name in request.tool_names if name.endswith("__evaluate"))
        if not results:
            return Reply.call((evaluate, {"expression": "6 * 7"}))
        if len(results) == 1:
            return Reply.call(("add", {"a": json.loads(results[0])["result"], "b": 8}))
        if len(results) == 2:
            return Reply.call((evaluate, {"expression": f"{results[1]} * 2"}))
        return Reply.say(f"Final: {json.loads(results[2])['result']}")


def counting_client(hub: HubServer) -> tuple[Dedalus, list[str]]:
    """A Dedalus client that records the path of every HTTP request it sends to the hub."""
    import httpx

    sent: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda request: sent.append(request.url.path)]})
    client = dedalus_client(hub, http_client=http)
    return client, sent


@pytest.mark.parametrize("stream", [False, True], ids=["non-streaming", "streaming"])
def test_dedalus_runner_mcp_then_local_then_mcp(hub: HubServer, scripted_model: ScriptedModel, stream: bool) -> None:
    scripted_model.responder = CalcAddCalc()
    client, sent = counting_client(hub)
    runner = DedalusRunner(client)
    if stream:
        chunks = runner.run(input="compute", model=MODEL, mcp_servers=["hub/calc"], tools=[add], stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    else:
        result = runner.run(input="compute", model=MODEL, mcp_servers=["hub/calc"], tools=[add])
        text = result.final_output
        assert result.tools_called == ["add"]
        # The last response covers the whole exchange: both MCP calls, across the two requests.
        assert [r.arguments for r in result.mcp_results] == [{"expression": "6 * 7"}, {"expression": "50 * 2"}]
    assert text == "Final: 100"
    assert sent == ["/v1/chat/completions", "/v1/chat/completions"]  # the handoff, then the resumed loop
    requests = scripted_model.requests
    assert len(requests) == 4
    for record in requests:
        assert_well_formed(record)
    # The resumed request gave the model the hub's first MCP turn again (the runner never saw it).
    roles = [m["role"] for m in requests[2].messages]
    assert roles == ["user", "assistant", "tool", "assistant", "tool"]
    assert requests[2].messages[3]["tool_calls"][0]["function"]["name"] == "add"


def handoff_turn() -> Reply:
    """One turn: evaluate now, ask the caller's `formula`, and evaluate the formula once it is known."""
    return Reply.call(("hub-calc__evaluate", {"expression": "1 + 1"}), ("formula", {"of": "twenty-one"}),
                      ("hub-calc__evaluate", {"expression": {"$ref": "formula"}}))


@pytest.mark.parametrize("resume_with", ["correlation_id", "deferred_calls"])
def test_hand_driven_structured_handoff(hub: HubServer, scripted_model: ScriptedModel, resume_with: str) -> None:
    scripted_model.push(handoff_turn(), Reply.say("done"))
    client = dedalus_client(hub)
    add_tool: Any = {"type": "function", "function": {"name": "formula", "parameters": {"type": "object"}}}
    messages: list[Any] = user("add and evaluate")
    first = client.chat.completions.create(model=MODEL, messages=messages, mcp_servers=["hub/calc"], tools=[add_tool])
    assert first.choices[0].finish_reason == "tool_calls"
    (call,) = first.choices[0].message.tool_calls or []
    (pending,) = first.pending_tools or []
    assert pending.id == call.id and pending.name == "formula" and pending.arguments == {"of": "twenty-one"}
    (deferred,) = first.deferred or []
    assert deferred.blocked_by == [call.id] and deferred.arguments == {"expression": {"$ref": call.id}}
    assert list((first.server_results or {}).values()) == [first.mcp_tool_results[0].result]  # type: ignore[index]
    assert first.correlation_id
    history = [*messages, {"role": "assistant", "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id, "content": "20 + 1"}]
    resume: dict[str, Any] = ({"correlation_id": first.correlation_id} if resume_with == "correlation_id"
                              else {"deferred_calls": [d.model_dump() for d in first.deferred or []]})
    final = client.chat.completions.create(model=MODEL, messages=history, mcp_servers=["hub/calc"], tools=[add_tool],
                                           **resume)
    assert final.choices[0].message.content == "done"
    executed = [r.arguments for r in final.mcp_tool_results or []]
    assert {"expression": "20 + 1"} in executed  # the deferred call ran, with the client's result
    if resume_with == "correlation_id":
        assert executed == [{"expression": "1 + 1"}, {"expression": "20 + 1"}]
    tool_messages = [m for m in scripted_model.requests[1].messages if m["role"] == "tool"]
    assert any(json.loads(m["content"]).get("result") == 21 for m in tool_messages if m["content"].startswith("{"))
