"""Client-tool handoffs: the structured response, the `$ref` dependency rule, and every way to resume."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcp_hub.executor import CallContext
from mcp_hub.handoff import without_credentials
from mcp_hub.hub import Hub
from mcp_hub.references import TurnGraph, client_value, substitute, waves
from mcp_hub.registry import Registry

from .conftest import ROOT, asgi_client, probe_entry
from .model_fixtures import Call, Reply, ScriptedModel
from .test_completions import ECHO, ask, chat_settings, stream

WORD: Any = {"type": "function", "function": {"name": "get_word", "parameters": {"type": "object"}}}
SHOUT: Any = {"type": "function", "function": {"name": "shout", "parameters": {"type": "object"}}}
SECRET = "s3cret-token-value-4242"


def registry() -> Registry:
    probe = {**probe_entry(), "limits": {"call_timeout": 5.0},
             "connections": {"probe": {"fields": ["token"], "required": False, "env": {"PROBE_TOKEN": "{token}"}}}}
    return Registry.from_data({"servers": {"test/probe": probe}}, root=ROOT)


@pytest.fixture
async def chat(tmp_path: Path, scripted_model: ScriptedModel) -> AsyncIterator[tuple[httpx2.AsyncClient, Hub]]:
    async with asgi_client(chat_settings(tmp_path, scripted_model), registry()) as (client, hub):
        yield client, hub


def mixed_turn() -> Reply:
    """One turn: an MCP call that needs nothing, a client call, and an MCP call that needs the client's output."""
    return Reply(tool_calls=[Call(name=ECHO, arguments={"text": "now"}, id="call_ready"),
                             Call(name="get_word", arguments={}, id="call_word"),
                             Call(name=ECHO, arguments={"text": {"$ref": "get_word"}}, id="call_later")])


def begin(**fields: Any) -> dict[str, Any]:
    return ask("use the tools", **{"mcp_servers": "test/probe", "tools": [WORD], **fields})


def resume(first: dict[str, Any], *, assistant: bool = True, **fields: Any) -> dict[str, Any]:
    """The follow-up a client sends: history, the client calls (unless orphaned) and their results."""
    message = first["choices"][0]["message"]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "use the tools"}]
    if assistant:
        messages.append({"role": "assistant", "content": None, "tool_calls": message["tool_calls"]})
    messages += [{"role": "tool", "tool_call_id": call["id"], "content": "banana"} for call in message["tool_calls"]]
    return {**begin(), "messages": messages, **fields}


# -- the reference rule ---------------------------------------------------------------------------

def test_references_by_id_and_by_name_with_paths() -> None:
    graph = TurnGraph([("a", "get_word", "{}"), ("b", "echo", '{"text": {"$ref": "get_word"}}'),
                       ("c", "echo", '{"x": [{"$ref": "b", "path": "result"}], "y": {"$ref": "nobody"}}')])
    assert graph.needs == {"a": [], "b": ["a"], "c": ["b"]}
    assert graph.arguments["b"] == {"text": {"$ref": "a"}}  # by name -> by id
    assert graph.blocked(["b", "c"], {"a"}) == {"b", "c"}  # c needs b, which needs the client call a
    assert waves(["b", "c"], graph.needs) == [["b"], ["c"]]
    filled = substitute(graph.arguments["c"], {"b": {"result": "hi"}})
    assert filled == {"x": ["hi"], "y": {"$ref": "nobody"}}  # an unknown target stays as written
    assert substitute({"$ref": "b", "path": "list.1"}, {"b": {"list": [1, 2]}}) == 2
    assert waves(["p", "q"], {"p": ["q"], "q": ["p"]}) == [["p", "q"]]  # a cycle runs as one wave
    assert client_value('{"n": 3}') == {"n": 3} and client_value("banana") == "banana"
    assert TurnGraph([("a", "t", '{"v": {"$ref": "a"}}')]).needs == {"a": []}  # no self-dependency


# -- the structured handoff --------------------------------------------------------------------------

async def test_structured_handoff_then_resume_by_correlation_id(chat: tuple[httpx2.AsyncClient, Hub],
                                                                scripted_model: ScriptedModel) -> None:
    client, hub = chat
    scripted_model.push(mixed_turn(), Reply.say("all done"))
    first = (await client.post("/v1/chat/completions", json=begin())).json()
    choice = first["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert [c["id"] for c in choice["message"]["tool_calls"]] == ["call_word"]  # only the client call
    assert first["pending_tools"] == [{"id": "call_word", "name": "get_word", "arguments": {}, "dependencies": []}]
    assert first["server_results"] == {"call_ready": {"result": "now"}}
    (deferred,) = first["deferred"]
    assert deferred == {"id": "call_later", "name": ECHO, "arguments": {"text": {"$ref": "call_word"}},
                        "blocked_by": ["call_word"], "dependencies": ["call_word"], "venue": "server",
                        "server_name": "test/probe", "tool_name": "echo"}
    assert first["correlation_id"].startswith("corr_")
    assert [r["arguments"] for r in first["mcp_tool_results"]] == [{"text": "now"}]

    final = (await client.post("/v1/chat/completions",
                               json=resume(first, correlation_id=first["correlation_id"]))).json()
    assert final["choices"][0]["message"]["content"] == "all done"
    assert [r["arguments"]["text"] for r in final["mcp_tool_results"]] == ["now", "banana"]  # the whole exchange
    assert final["tools_executed"] == ["echo", "echo"] and final["turns_consumed"] == 1
    seen = scripted_model.requests[1].messages
    assert [m["role"] for m in seen] == ["user", "assistant", "tool", "tool", "tool"]
    assert [c["id"] for c in seen[1]["tool_calls"]] == ["call_ready", "call_word", "call_later"]
    answers = {m["tool_call_id"]: m["content"] for m in seen[2:]}
    assert answers == {"call_ready": '{"result":"now"}', "call_word": "banana", "call_later": '{"result":"banana"}'}
    # The exchange is over: its state is gone.
    again = await client.post("/v1/chat/completions",
                              json=resume(first, correlation_id=first["correlation_id"], handoff_mode=True))
    assert again.status_code == 404 and again.json()["error"]["code"] == "handoff_not_found"
    assert await hub.state.get("default", f"handoff:{first['correlation_id']}") is None


async def test_stateless_resume_with_deferred_calls(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    scripted_model.push(mixed_turn(), Reply.say("done"))
    async with asgi_client(chat_settings(tmp_path / "a", scripted_model), registry()) as (one, _):
        first = (await one.post("/v1/chat/completions", json=begin())).json()
    # Another hub that never saw the handoff (its own memory store): the echoed deferred calls suffice.
    async with asgi_client(chat_settings(tmp_path / "b", scripted_model), registry()) as (two, _):
        final = (await two.post("/v1/chat/completions", json=resume(first, deferred_calls=first["deferred"]))).json()
    assert final["choices"][0]["message"]["content"] == "done"
    assert [(r["tool_name"], r["arguments"]) for r in final["mcp_tool_results"]] == [("echo", {"text": "banana"})]
    seen = scripted_model.requests[1].messages
    assert [c["id"] for c in seen[1]["tool_calls"]] == ["call_word", "call_later"]
    assert {m["tool_call_id"]: m["content"] for m in seen[2:]} == {"call_word": "banana",
                                                                   "call_later": '{"result":"banana"}'}


async def test_streamed_handoff_then_streamed_resume(chat: tuple[httpx2.AsyncClient, Hub],
                                                    scripted_model: ScriptedModel) -> None:
    client, _ = chat
    scripted_model.push(mixed_turn(), Reply.say("streamed answer", chunk_size=5))
    events = await stream(client, begin(stream_options={"include_tool_events": True}))
    final = events[-2][1]
    assert final["choices"][0]["finish_reason"] == "tool_calls"
    assert [c["id"] for c in final["choices"][0]["delta"]["tool_calls"]] == ["call_word"]
    assert final["deferred"][0]["id"] == "call_later" and final["correlation_id"].startswith("corr_")
    assert list(final["server_results"]) == ["call_ready"] and final["pending_tools"][0]["id"] == "call_word"
    first = {"choices": [{"message": {"tool_calls": [{"id": "call_word", "type": "function",
                                                      "function": {"name": "get_word", "arguments": "{}"}}]}}]}
    events = await stream(client, resume(first, assistant=False, stream_options={"include_tool_events": True}))
    activity = [data["event"] for _, data in events[:-1] if not data["choices"]]
    assert [(a["type"], a["call_id"]) for a in activity] == [("tool_call.started", "call_later"),
                                                             ("tool_call.completed", "call_later")]
    text = "".join(data["choices"][0]["delta"].get("content") or "" for _, data in events[:-1] if data["choices"])
    assert text == "streamed answer" and len(events[-2][1]["mcp_tool_results"]) == 2


@pytest.mark.parametrize("assistant", [True, False], ids=["with-assistant", "orphan-tool-messages"])
async def test_resume_by_client_call_ids(chat: tuple[httpx2.AsyncClient, Hub], scripted_model: ScriptedModel,
                                         assistant: bool) -> None:
    """What the Dedalus runners send: no correlation_id, no deferred_calls; the streaming one no assistant message."""
    client, _ = chat
    scripted_model.push(Reply.call((ECHO, {"text": "first"})), mixed_turn(), Reply.say("done"))
    first = (await client.post("/v1/chat/completions", json=begin())).json()
    assert first["turns_consumed"] == 2
    final = (await client.post("/v1/chat/completions", json=resume(first, assistant=assistant))).json()
    assert final["choices"][0]["message"]["content"] == "done"
    assert [r["arguments"]["text"] for r in final["mcp_tool_results"]] == ["first", "now", "banana"]
    seen = scripted_model.requests[2].messages
    # The hub's own first turn (which the client never saw) and the real call names are back.
    assert [m["role"] for m in seen] == ["user", "assistant", "tool", "assistant", "tool", "tool", "tool"]
    assert seen[2]["content"] == '{"result":"first"}'
    assert [c["function"]["name"] for c in seen[3]["tool_calls"]] == [ECHO, "get_word", ECHO]


async def test_drop_in_mode(chat: tuple[httpx2.AsyncClient, Hub], scripted_model: ScriptedModel) -> None:
    client, hub = chat
    scripted_model.push(Reply.call(("get_word", {})), Reply.say("done"))
    first = (await client.post("/v1/chat/completions", json=begin(handoff_mode=False))).json()
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert not {"pending_tools", "deferred", "correlation_id", "server_results"} & set(first)
    call_id = first["choices"][0]["message"]["tool_calls"][0]["id"]
    assert await hub.state.get("default", f"handoff-call:{call_id}") is None  # nothing saved
    final = (await client.post("/v1/chat/completions",
                               json=resume(first, assistant=False, handoff_mode=False))).json()
    assert final["choices"][0]["message"]["content"] == "done"
    synthesised = scripted_model.requests[1].messages[1]  # orphan: the assistant message is synthesised
    assert synthesised["tool_calls"][0]["id"] == call_id and synthesised["tool_calls"][0]["function"]["name"] == "get_word"


async def test_unknown_correlation_id(chat: tuple[httpx2.AsyncClient, Hub], scripted_model: ScriptedModel) -> None:
    client, _ = chat
    orphan = {**begin(), "messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c1",
                                                                         "content": "r"}]}
    strict = await client.post("/v1/chat/completions", json={**orphan, "correlation_id": "corr_nope",
                                                             "handoff_mode": True})
    assert strict.status_code == 404 and strict.json()["error"]["param"] == "correlation_id"
    scripted_model.push(Reply.say("fine"))  # auto: fall through to the messages alone
    auto = await client.post("/v1/chat/completions", json={**orphan, "correlation_id": "corr_nope"})
    assert auto.status_code == 200 and auto.json()["choices"][0]["message"]["content"] == "fine"
    bad = await client.post("/v1/chat/completions", json={**orphan, "deferred_calls": [{"name": 3}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"].startswith("deferred_calls.0")


async def test_client_call_gets_the_mcp_output_it_references(chat: tuple[httpx2.AsyncClient, Hub],
                                                             scripted_model: ScriptedModel) -> None:
    """MCP calls run in waves (a call after those it references); a client call gets their output filled in."""
    client, _ = chat
    scripted_model.push(Reply(tool_calls=[
        Call(name=ECHO, arguments={"text": "hello"}, id="m1"),
        Call(name=ECHO, arguments={"text": {"$ref": "m1", "path": "result"}}, id="m2"),
        Call(name="shout", arguments={"what": {"$ref": "m2", "path": "result"}}, id="c1"),
        Call(name="get_word", arguments={"after": {"$ref": "c1"}}, id="c2")]))
    body = (await client.post("/v1/chat/completions", json=begin(tools=[WORD, SHOUT]))).json()
    assert [r["arguments"] for r in body["mcp_tool_results"]] == [{"text": "hello"}, {"text": "hello"}]
    pending = {p["id"]: p for p in body["pending_tools"]}
    assert pending["c1"]["arguments"] == {"what": "hello"} and pending["c1"]["dependencies"] == []
    assert pending["c2"]["dependencies"] == ["c1"] and body["deferred"] == []
    wire = {c["id"]: json.loads(c["function"]["arguments"]) for c in body["choices"][0]["message"]["tool_calls"]}
    assert wire["c1"] == {"what": "hello"}


async def test_saved_state_holds_no_plaintext_credentials(chat: tuple[httpx2.AsyncClient, Hub],
                                                          scripted_model: ScriptedModel) -> None:
    client, hub = chat
    scripted_model.push(Reply.call((ECHO, {"text": f"the token is {SECRET}"}), ("get_word", {})), Reply.say("done"))
    request = {**begin(), "credentials": {"connection_name": "probe", "values": {"token": SECRET}},
               "messages": [{"role": "user", "content": f"my token is {SECRET}"}]}
    first = (await client.post("/v1/chat/completions", json=request)).json()
    assert first["mcp_tool_results"][0]["is_error"] is False
    saved = await hub.state.get("default", f"handoff:{first['correlation_id']}")
    assert saved is not None and SECRET not in json.dumps(saved)
    assert "[REDACTED]" in json.dumps(saved["conversation"]) and "[REDACTED]" in json.dumps(saved["tool_messages"])
    assert saved["mcp_servers"] == "test/probe"
    assert SECRET not in json.dumps(first)
    spec = [{"slug": "test/probe", "name": "p", "credentials": {"probe": "<envelope>"}}, "hub/time"]
    assert without_credentials(spec) == [{"slug": "test/probe", "name": "p"}, "hub/time"]


async def test_call_contexts_name_the_handoff_and_the_source(chat: tuple[httpx2.AsyncClient, Hub],
                                                            scripted_model: ScriptedModel) -> None:
    client, hub = chat
    contexts: list[tuple[list[str], CallContext | None]] = []
    execute = hub.execute

    async def recording(calls: Any, servers: Any, *, parallel: bool = True, context: CallContext | None = None,
                        **rest: Any) -> Any:
        contexts.append(([call.id for call in calls], context))
        return await execute(calls, servers, parallel=parallel, context=context, **rest)

    hub.execute = recording  # type: ignore[method-assign]
    scripted_model.push(mixed_turn(), Reply.say("done"))
    first = (await client.post("/v1/chat/completions", json=begin())).json()
    await client.post("/v1/chat/completions", json=resume(first))
    (ready, ready_context), (later, later_context) = contexts
    assert ready == ["call_ready"] and later == ["call_later"]
    assert ready_context is not None and later_context is not None
    assert ready_context.correlation_id == later_context.correlation_id == first["correlation_id"]
    assert (ready_context.source, ready_context.turn) == ("completion", 1)
    assert later_context.source == "handoff" and later_context.tenant == "default"


async def test_two_handoffs_in_one_exchange_keep_one_correlation_id(chat: tuple[httpx2.AsyncClient, Hub],
                                                                    scripted_model: ScriptedModel) -> None:
    client, hub = chat
    scripted_model.push(Reply(tool_calls=[Call(name=ECHO, arguments={"text": "a"}, id="m1"),
                                          Call(name="get_word", arguments={}, id="w1")]),
                        Reply(tool_calls=[Call(name="get_word", arguments={}, id="w2"),
                                          Call(name=ECHO, arguments={"text": {"$ref": "w2"}}, id="m2")]),
                        Reply.say("done"))
    first = (await client.post("/v1/chat/completions", json=begin())).json()
    second = (await client.post("/v1/chat/completions", json=resume(first, assistant=False))).json()
    assert second["correlation_id"] == first["correlation_id"]
    assert [c["id"] for c in second["choices"][0]["message"]["tool_calls"]] == ["w2"]
    assert await hub.state.get("default", "handoff-call:w1") is None  # the first handoff's index is replaced
    # The streaming runner's history: only its own orphan tool messages, from both handoffs.
    history = [{"role": "user", "content": "use the tools"}, {"role": "tool", "tool_call_id": "w1", "content": "banana"},
               {"role": "tool", "tool_call_id": "w2", "content": "cherry"}]
    final = (await client.post("/v1/chat/completions", json={**begin(), "messages": history})).json()
    assert final["choices"][0]["message"]["content"] == "done"
    assert [r["arguments"]["text"] for r in final["mcp_tool_results"]] == ["a", "cherry"]
    seen = scripted_model.requests[2].messages
    assert [m["role"] for m in seen] == ["user", "assistant", "tool", "tool", "assistant", "tool", "tool"]
    assert [m.get("content") for m in seen if m["role"] == "tool"] == ['{"result":"a"}', "banana", "cherry",
                                                                     '{"result":"cherry"}']
