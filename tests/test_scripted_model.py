"""The scripted upstream model itself: responders, defaults, raw wire shapes, and the out-of-process mode."""

from __future__ import annotations

import json

import httpx2

from .model_fixtures import Reply, ScriptClient, ScriptedModel, ToolThenAnswer
from .model_fixtures import scripted_model as scripted_model  # until tests/conftest.py registers the plugin
from .model_fixtures import scripted_model_process as scripted_model_process

TOOLS = [{"type": "function", "function": {"name": "time__now", "parameters": {"type": "object"}}}]


def test_tool_then_answer_loops_in_both_formats(scripted_model: ScriptedModel) -> None:
    scripted_model.responder = ToolThenAnswer(tool="now", arguments={"tz": "UTC"}, answer="It is {result}.")
    first = httpx2.post(f"{scripted_model.openai_url}/chat/completions",
                        json={"model": "m", "messages": [{"role": "user", "content": "time?"}], "tools": TOOLS}).json()
    call = first["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "time__now", "arguments": '{"tz": "UTC"}'}
    messages = [{"role": "user", "content": "time?"}, first["choices"][0]["message"],
                {"role": "tool", "tool_call_id": call["id"], "content": "noon"}]
    second = httpx2.post(f"{scripted_model.openai_url}/chat/completions",
                         json={"model": "m", "messages": messages, "tools": TOOLS}).json()
    assert second["choices"][0]["message"]["content"] == "It is noon."
    anthropic = httpx2.post(f"{scripted_model.anthropic_url}/v1/messages", json={"model": "c", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "dusk"}]}]}).json()
    assert anthropic["content"] == [{"type": "text", "text": "It is dusk."}] and anthropic["stop_reason"] == "end_turn"
    assert [r.last_tool_result for r in scripted_model.requests] == [None, "noon", "dusk"]


def test_unscripted_calls_fail_loudly_and_defaults_repeat(scripted_model: ScriptedModel) -> None:
    body = {"model": "m", "messages": []}
    response = httpx2.post(f"{scripted_model.openai_url}/chat/completions", json=body)
    assert response.status_code == 500 and "no reply scripted" in response.json()["error"]["message"]
    scripted_model.default = Reply.say("again")
    for _ in range(2):
        answer = httpx2.post(f"{scripted_model.openai_url}/chat/completions", json=body).json()
        assert answer["choices"][0]["message"]["content"] == "again"


def test_openai_stream_sends_usage_only_when_asked(scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.say("abcdef", chunk_size=4), Reply.say("x"))
    body = {"model": "m", "messages": [], "stream": True}
    plain = httpx2.post(f"{scripted_model.openai_url}/chat/completions", json=body).text
    assert [line for line in plain.splitlines() if line][-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in plain.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "abcdef"
    assert all(c["choices"] for c in chunks)
    with_usage = httpx2.post(f"{scripted_model.openai_url}/chat/completions",
                             json=body | {"stream_options": {"include_usage": True}}).text
    last = json.loads([line for line in with_usage.splitlines() if line.startswith("data: {")][-1][6:])
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 15


def test_scripted_from_another_process(scripted_model_process: ScriptClient) -> None:
    client = scripted_model_process
    client.script(Reply.call(("lookup", {"q": "x"})), Reply.fail(429, "later", retry_after=3),
                  tool_then_answer=ToolThenAnswer(tool="lookup"), models=["only-one"])
    url = client.url
    first = httpx2.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": []},
                        headers={"authorization": "Bearer sk-x"}).json()
    assert first["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    limited = httpx2.post(f"{url}/v1/messages", json={"model": "c", "messages": []})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert httpx2.get(f"{url}/v1/models").json()["data"][0]["id"] == "only-one"
    recorded = client.requests()
    assert [(r.path, r.api_key) for r in recorded] == [("/v1/chat/completions", "sk-x"), ("/v1/messages", None),
                                                      ("/v1/models", None)]
    client.reset()
    assert client.requests() == []
