"""Model providers against the scripted upstream model over real HTTP (a raw HTTP server for odd wire cases)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from mcp_hub.errors import ConfigError, ProviderError, ProviderRateLimited, ProviderTimeout, RequestError
from mcp_hub.providers import AnthropicMessages, ChatDelta, ChatRequest, OpenAICompatible, ProviderSet
from mcp_hub.providers.anthropic import translate_messages, translate_request, translate_tool_choice
from mcp_hub.providers.upstream import client_session, lines
from mcp_hub.settings import Settings

from .conftest import free_port
from .fixtures.raw_upstream import Answer, RawUpstream
from .fixtures.scripted_model import Call, Reply, ScriptedModel

OPENAI_KEY = "sk-test-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-test-0123456789"
TOOLS: list[dict[str, Any]] = [{"type": "function", "function": {"name": "srv__add", "description": "Add two numbers",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}},
         {"type": "function", "function": {"name": "client_tool", "parameters": {"type": "object"}}}]


@pytest.fixture
def model() -> Iterator[ScriptedModel]:
    with ScriptedModel.serve() as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The providers' pooled session, as the hub opens it."""
    async with client_session() as session:
        yield session


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    async with RawUpstream() as upstream:
        yield upstream


@pytest.fixture
def make_providers(model: ScriptedModel, tmp_path: Path, http: aiohttp.ClientSession) -> Callable[..., ProviderSet]:
    """Build `ProviderSet`s over one pooled session, pointed at the scripted model."""

    def make(**overrides: Any) -> ProviderSet:
        options: dict[str, Any] = {"data_dir": tmp_path / "data", "openai_base_url": model.openai_url,
                                   "openai_api_key": OPENAI_KEY, "anthropic_base_url": model.anthropic_url,
                                   "anthropic_api_key": ANTHROPIC_KEY, "provider_timeout": 10} | overrides
        return ProviderSet(Settings.load(**options), http)

    return make


@pytest.fixture
def providers(make_providers: Callable[..., ProviderSet]) -> ProviderSet:
    return make_providers()


async def collect(stream: AsyncIterator[ChatDelta]) -> tuple[str, dict[int, dict[str, str]], ChatDelta]:
    """Content, assembled tool calls by index, and the final delta of a stream."""
    content, last = "", None
    calls: dict[int, dict[str, str]] = {}
    async for delta in stream:
        assert last is None or last.finish_reason is None, "nothing may follow the finishing delta"
        content += delta.content or ""
        if delta.tool_index is not None:
            call = calls.setdefault(delta.tool_index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.tool_id or ""
            call["name"] += delta.tool_name or ""
            call["arguments"] += delta.tool_arguments or ""
        last = delta
    assert last is not None and last.finish_reason is not None
    return content, calls, last


def ask(text: str = "hi", **params: Any) -> ChatRequest:
    return ChatRequest(model="scripted-small", messages=[{"role": "user", "content": text}], tools=TOOLS, params=params)


# -- OpenAI-compatible ---------------------------------------------------------------------------

async def test_openai_complete_passes_params_and_normalizes(providers: ProviderSet, model: ScriptedModel) -> None:
    model.push(Reply.say("Hello there", usage=(7, 3)))
    provider, name = providers.resolve("openai/scripted-small")
    result = await provider.complete(ChatRequest(model=name, messages=[{"role": "user", "content": "hi"}], tools=TOOLS,
                                                 params={"temperature": 0.2, "top_k": 5, "stream": True}))
    assert (result.content, result.tool_calls, result.finish_reason) == ("Hello there", [], "stop")
    assert result.usage.as_dict() == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert result.model == "scripted-small" and result.id
    sent = model.requests[0]
    assert sent.path == "/v1/chat/completions" and sent.api_key == OPENAI_KEY
    assert sent.body["model"] == "scripted-small" and sent.body["temperature"] == 0.2 and sent.body["top_k"] == 5
    assert "stream" not in sent.body  # the hub decides streaming, not a stray param
    assert sent.tool_names == ["srv__add", "client_tool"]


async def test_openai_complete_several_tool_calls(providers: ProviderSet, model: ScriptedModel) -> None:
    model.push(Reply.call(("srv__add", {"a": 1}), Call(name="client_tool", arguments={"q": "x"}, id="call_fixed")))
    result = await providers.get("openai").complete(ask())
    assert result.finish_reason == "tool_calls" and result.content is None
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [("srv__add", {"a": 1}),
                                                                             ("client_tool", {"q": "x"})]
    assert result.tool_calls[1].id == "call_fixed" and result.tool_calls[0].id


async def test_openai_stream_text_and_fragmented_tool_calls(providers: ProviderSet, model: ScriptedModel) -> None:
    model.push(Reply.call(("srv__add", {"a": 1, "b": 22}), ("client_tool", "{}"), text="Let me add.", chunk_size=3,
                          usage=(11, 4)))
    content, calls, last = await collect(providers.get("openai").stream(ask()))
    assert content == "Let me add."
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [("srv__add", {"a": 1, "b": 22}),
                                                                                ("client_tool", {})]
    assert all(c["id"] for c in calls.values())
    assert last.finish_reason == "tool_calls" and last.model == "scripted-small"
    assert last.usage is not None and last.usage.total_tokens == 15
    sent = model.requests[0].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_openai_truncated_stream_is_a_retryable_error(providers: ProviderSet, model: ScriptedModel) -> None:
    model.push(Reply.say("this will be cut off", chunk_size=2, truncate=True))
    with pytest.raises(ProviderError) as caught:
        await collect(providers.get("openai").stream(ask()))
    assert caught.value.retryable and "ended before" in caught.value.message


async def test_openai_list_models(providers: ProviderSet, model: ScriptedModel) -> None:
    assert await providers.get("openai").list_models() == ["scripted-small", "scripted-large"]
    assert model.requests[0].path == "/v1/models" and model.requests[0].api_key == OPENAI_KEY


async def test_openai_lenient_server_normalization(raw: RawUpstream, http: aiohttp.ClientSession) -> None:
    """Compatible servers that omit ids and indexes, send object arguments and say "stop" after tool calls."""
    chunks = [{"model": "m", "choices": [{"delta": {"tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]}}]},
              {"model": "m", "choices": [{"delta": {}, "finish_reason": "stop"}]}]
    raw.push(Answer.sse([f"data: {json.dumps(c)}" for c in chunks] + ["data: [DONE]"]))
    provider = OpenAICompatible("local", f"{raw.url}/v1", http, key_required=False)
    _, calls, last = await collect(provider.stream(ask()))
    assert calls[0]["id"].startswith("call_") and json.loads(calls[0]["arguments"]) == {"x": 1}
    assert last.finish_reason == "tool_calls" and last.usage is None
    assert raw.requests[0].line == "POST /v1/chat/completions HTTP/1.1"


async def test_openai_error_inside_a_stream(raw: RawUpstream, http: aiohttp.ClientSession) -> None:
    raw.push(Answer.sse(['data: {"choices": [{"delta": {"content": "a"}}]}',
                         f'data: {json.dumps({"error": {"message": f"overloaded, key {OPENAI_KEY}"}})}']))
    provider = OpenAICompatible("openai", f"{raw.url}/v1", http, api_key=SecretStr(OPENAI_KEY))
    with pytest.raises(ProviderError) as caught:
        await collect(provider.stream(ask()))
    assert "overloaded" in caught.value.message and OPENAI_KEY not in caught.value.message


# -- Anthropic -------------------------------------------------------------------------------------

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "add 1 and 2, and look up x"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "srv__add", "arguments": '{"a": 1, "b": 2}'}},
        {"id": "call_2", "type": "function", "function": {"name": "client_tool", "arguments": "not json"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "found"}]},
]


def test_anthropic_message_translation() -> None:
    system, messages = translate_messages(CONVERSATION + [{"role": "user", "content": "thanks"}])
    assert system == "Be brief."
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "srv__add", "input": {"a": 1, "b": 2}},
        {"type": "tool_use", "id": "call_2", "name": "client_tool", "input": {}}]
    # consecutive tool results (and the user's next words) merge into one user turn, results first
    assert messages[2]["content"] == [{"type": "tool_result", "tool_use_id": "call_1", "content": "3"},
                                      {"type": "tool_result", "tool_use_id": "call_2", "content": "found"},
                                      {"type": "text", "text": "thanks"}]


def test_anthropic_request_fields() -> None:
    body = translate_request(ChatRequest(model="claude-x", messages=CONVERSATION, tools=TOOLS, params={
        "temperature": 0.5, "top_k": 3, "stop": "END", "tool_choice": "required", "parallel_tool_calls": False,
        "response_format": {"type": "json_object"}, "user": "u1"}), stream=False)
    assert body["max_tokens"] == 4096 and body["stop_sequences"] == ["END"] and body["top_k"] == 3
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["tools"][0] == {"name": "srv__add", "description": "Add two numbers",
                                "input_schema": TOOLS[0]["function"]["parameters"]}
    assert "response_format" not in body and body["metadata"] == {"user_id": "u1"}
    assert translate_request(ChatRequest(model="m", messages=[], params={"max_completion_tokens": 50, "max_tokens": 9}),
                             stream=True)["max_tokens"] == 50
    assert translate_tool_choice({"type": "function", "function": {"name": "srv__add"}}, None) == {
        "type": "tool", "name": "srv__add"}
    assert translate_tool_choice("none", False) == {"type": "none"}
    assert translate_tool_choice("auto", None) == {"type": "auto"}
    assert translate_tool_choice(None, None) is None


async def test_anthropic_complete(providers: ProviderSet, model: ScriptedModel) -> None:
    model.push(Reply.call(("srv__add", {"a": 1}), ("client_tool", {"q": "y"}), text="Adding.", usage=(20, 6)))
    provider, name = providers.resolve("anthropic/claude-test")
    result = await provider.complete(ChatRequest(model=name, messages=CONVERSATION, tools=TOOLS))
    assert result.content == "Adding." and result.finish_reason == "tool_calls"
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [("srv__add", {"a": 1}),
                                                                             ("client_tool", {"q": "y"})]
    assert all(c.id.startswith("toolu_") for c in result.tool_calls)
    assert result.usage.as_dict() == {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26}
    sent = model.requests[0]
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01" and "authorization" not in sent.headers
    assert sent.body["model"] == "claude-test" and sent.body["system"] == "Be brief."
    assert sent.tool_names == ["srv__add", "client_tool"]


@pytest.mark.parametrize(("finish", "expected"), [("length", "length"), ("stop", "stop")])
async def test_anthropic_stop_reasons(providers: ProviderSet, model: ScriptedModel, finish: str, expected: str) -> None:
    model.push(Reply.say("x", finish_reason=finish))
    assert (await providers.get("anthropic").complete(ask())).finish_reason == expected


async def test_anthropic_stream_assembles_tool_use(providers: ProviderSet, model: ScriptedModel) -> None:
    model.push(Reply.call(("srv__add", {"a": 1, "b": [2, 3]}), ("client_tool", {}), text="On it.", chunk_size=2,
                          usage=(30, 9)))
    content, calls, last = await collect(providers.get("anthropic").stream(ask()))
    assert content == "On it."
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [("srv__add", {"a": 1, "b": [2, 3]}),
                                                                                ("client_tool", {})]
    assert [c["id"] for c in calls.values()] == [f"toolu_{c['id'].split('_', 1)[1]}" for c in calls.values()]
    assert last.finish_reason == "tool_calls" and last.usage is not None
    assert last.usage.as_dict() == {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}
    assert model.requests[0].body["stream"] is True


async def test_anthropic_stream_error_event(raw: RawUpstream, http: aiohttp.ClientSession) -> None:
    start = {"type": "message_start", "message": {"id": "m", "model": "c", "content": []}}
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    raw.push(Answer.sse([f"event: message_start\ndata: {json.dumps(start)}", f"event: error\ndata: {json.dumps(error)}"]))
    provider = AnthropicMessages("anthropic", raw.url, http, api_key=SecretStr(ANTHROPIC_KEY))
    with pytest.raises(ProviderError) as caught:
        await collect(provider.stream(ask()))
    assert caught.value.retryable and "Overloaded" in caught.value.message


async def test_anthropic_thinking_blocks_round_trip(raw: RawUpstream, http: aiohttp.ClientSession) -> None:
    thinking = {"type": "thinking", "thinking": "hmm", "signature": "sig"}
    answer = {"id": "msg_1", "model": "c", "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 2},
              "content": [thinking, {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}
    raw.push(Answer.json(answer))
    result = await AnthropicMessages("anthropic", raw.url, http, api_key=SecretStr("k")).complete(ask())
    assert result.extra["thinking_blocks"] == [thinking]
    assistant = {"role": "assistant", "content": None, "thinking_blocks": result.extra["thinking_blocks"],
                 "tool_calls": [{"id": "toolu_1", "function": {"name": "f", "arguments": "{}"}}]}
    assert translate_messages([assistant])[1][0]["content"][0] == thinking


async def test_anthropic_list_models(providers: ProviderSet, model: ScriptedModel) -> None:
    assert await providers.get("anthropic").list_models() == ["scripted-small", "scripted-large"]
    assert model.requests[0].headers["x-api-key"] == ANTHROPIC_KEY


# -- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["openai", "anthropic"])
async def test_upstream_500_is_retryable(providers: ProviderSet, model: ScriptedModel, prefix: str) -> None:
    model.push(Reply.fail(500, "database on fire"))
    with pytest.raises(ProviderError) as caught:
        await providers.get(prefix).complete(ask())
    error = caught.value
    assert error.retryable and error.upstream_status == 500 and error.code == "provider_error" and error.status == 502
    assert "database on fire" in error.message and prefix in error.message


@pytest.mark.parametrize("prefix", ["openai", "anthropic"])
async def test_429_carries_retry_after(providers: ProviderSet, model: ScriptedModel, prefix: str) -> None:
    model.push(Reply.fail(429, "slow down", retry_after=2), Reply.fail(429, "slow down", retry_after=7))
    with pytest.raises(ProviderRateLimited) as caught:
        await providers.get(prefix).complete(ask())
    assert caught.value.retryable and caught.value.retry_after == 2.0 and caught.value.code == "provider_rate_limited"
    with pytest.raises(ProviderRateLimited) as streamed:
        await collect(providers.get(prefix).stream(ask()))
    assert streamed.value.retry_after == 7.0


@pytest.mark.parametrize("prefix", ["openai", "anthropic"])
async def test_401_is_final_and_never_echoes_the_key(make_providers: Callable[..., ProviderSet], model: ScriptedModel,
                                                       prefix: str) -> None:
    model.require_key = "sk-the-right-one"
    providers = make_providers()
    with pytest.raises(ProviderError) as caught:
        await providers.get(prefix).complete(ask())
    error = caught.value
    assert not error.retryable and error.upstream_status == 401 and error.code == "provider_auth"
    key = OPENAI_KEY if prefix == "openai" else ANTHROPIC_KEY
    assert model.requests[0].api_key == key  # the upstream quoted it back ...
    assert key not in str(error) and key not in json.dumps(error.to_body())  # ... and we did not
    assert "Incorrect API key provided" in error.message


async def test_timeout_before_first_byte(make_providers: Callable[..., ProviderSet], model: ScriptedModel) -> None:
    providers = make_providers(provider_timeout=0.3)
    model.push(Reply.say("late", delay=30), Reply.say("late", delay=30))
    with pytest.raises(ProviderTimeout) as caught:
        await providers.get("openai").complete(ask())
    assert caught.value.retryable and caught.value.status == 504
    with pytest.raises(ProviderTimeout):
        await collect(providers.get("anthropic").stream(ask()))
    # the upstream saw both calls abandoned
    await model.wait(2, predicate=lambda requests: all(r.disconnected for r in requests))


async def test_stalled_stream_times_out(make_providers: Callable[..., ProviderSet], model: ScriptedModel) -> None:
    providers = make_providers(provider_timeout=0.3)
    model.push(Reply.say("first words then nothing", stall=30))
    with pytest.raises(ProviderTimeout):
        await collect(providers.get("openai").stream(ask()))


@pytest.mark.parametrize("prefix", ["openai", "anthropic"])
async def test_closing_a_stream_hangs_up_on_the_upstream(providers: ProviderSet, model: ScriptedModel, prefix: str) -> None:
    """What a client disconnect does to a model call: the consumer closes the stream mid-way."""
    model.push(Reply.say("first words, then a long pause", stall=30))
    stream = providers.get(prefix).stream(ask())
    assert isinstance(stream, AsyncGenerator)
    async for delta in stream:
        if delta.content:
            break
    await stream.aclose()
    await model.wait(1, predicate=lambda requests: requests[0].disconnected)


async def test_connection_refused_is_retryable(make_providers: Callable[..., ProviderSet]) -> None:
    providers = make_providers(openai_base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ProviderError) as caught:
        await providers.get("openai").complete(ask())
    assert caught.value.retryable and caught.value.upstream_status is None
    assert "unreachable" in caught.value.message and OPENAI_KEY not in caught.value.message


async def test_missing_key_fails_before_sending(make_providers: Callable[..., ProviderSet], model: ScriptedModel) -> None:
    providers = make_providers(openai_api_key="", anthropic_api_key="")
    for prefix, variable in [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")]:
        with pytest.raises(ProviderError) as caught:
            await providers.get(prefix).complete(ask())
        assert caught.value.code == "provider_auth" and not caught.value.retryable and variable in caught.value.message
    assert model.requests == []


# -- the wire ------------------------------------------------------------------------------------------

COMPLETION = {"id": "c1", "model": "m", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}


@pytest.mark.parametrize("prefix", ["openai", "anthropic"])
async def test_a_very_long_sse_data_line(providers: ProviderSet, model: ScriptedModel, prefix: str) -> None:
    text = "0123456789abcdef" * 16_384  # 256 KiB in one content piece, so in one `data:` line
    model.push(Reply.say(text, chunk_size=len(text)))
    content, _, last = await collect(providers.get(prefix).stream(ask()))
    assert content == text and last.finish_reason == "stop"


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"])
async def test_sse_line_endings(raw: RawUpstream, http: aiohttp.ClientSession, newline: str) -> None:
    chunks = [{"model": "m", "choices": [{"delta": {"content": "a"}}]},
              {"model": "m", "choices": [{"delta": {"content": "b"}, "finish_reason": "stop"}]}]
    raw.push(Answer.sse([": a comment", *(f"data: {json.dumps(c)}" for c in chunks), "data: [DONE]"], newline=newline))
    content, _, last = await collect(OpenAICompatible("local", f"{raw.url}/v1", http, key_required=False).stream(ask()))
    assert content == "ab" and last.finish_reason == "stop"


@pytest.mark.parametrize(("chunks", "expected"), [
    ([b"data: a\r", b"\ndata: b\r\n\r", b"\n"], ["data: a", "data: b", ""]),  # a CRLF split between reads
    ([b"da", b"ta: a", b"bc\n\n", b"tail"], ["data: abc", "", "tail"]),  # a line over several reads
    ([b"\r", b"\r", b"\n\n"], ["", "", ""]),  # CR, CRLF, LF
    ([b"x" * 70_000 + b"\n"], ["x" * 70_000]),  # past aiohttp's 64 KiB read buffer
])
async def test_lines_split_across_reads(chunks: list[bytes], expected: list[str]) -> None:
    async def reads() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    assert [line async for line in lines(reads())] == expected


async def test_a_stale_keep_alive_connection_is_resent_once(raw: RawUpstream, http: aiohttp.ClientSession) -> None:
    """A pooled connection that the server dropped while idle: the call goes out again on a new one, once."""
    provider = OpenAICompatible("local", f"{raw.url}/v1", http, key_required=False)
    raw.push(Answer.json(COMPLETION), Answer.hang_up(), Answer.json(COMPLETION))
    assert (await provider.complete(ask())).content == "hi"
    assert (await provider.complete(ask())).content == "hi"
    assert [r.connection for r in raw.requests] == [1, 1, 2]
    raw.push(Answer.hang_up(), Answer.hang_up())
    with pytest.raises(ProviderError) as caught:
        await provider.complete(ask())
    assert caught.value.retryable and "is unreachable (ServerDisconnectedError)" in caught.value.message
    assert [r.connection for r in raw.requests][3:] == [2, 3]


async def test_a_connection_the_server_closed_after_answering(raw: RawUpstream, http: aiohttp.ClientSession) -> None:
    """The server said keep-alive, then closed: whether or not the pool noticed before the next call, it succeeds."""
    provider = OpenAICompatible("local", f"{raw.url}/v1", http, key_required=False)
    raw.push(Answer(Answer.json(COMPLETION).data, close=True), Answer.json(COMPLETION))
    assert (await provider.complete(ask())).content == "hi"
    assert (await provider.complete(ask())).content == "hi"
    assert [r.connection for r in raw.requests] == [1, 2]


async def test_a_stale_connection_under_a_get_is_resent_once(raw: RawUpstream, http: aiohttp.ClientSession) -> None:
    """GETs (model lists): aiohttp resends those itself, and the hub adds no second resend."""
    provider = OpenAICompatible("local", f"{raw.url}/v1", http, key_required=False)
    models = Answer.json({"data": [{"id": "m1"}]})
    raw.push(models, Answer.hang_up(), models, Answer.hang_up(), Answer.hang_up())
    assert await provider.list_models() == ["m1"]
    assert await provider.list_models() == ["m1"]
    with pytest.raises(ProviderError):
        await provider.list_models()
    assert [r.connection for r in raw.requests] == [1, 1, 2, 2, 3]


async def test_an_answer_that_is_not_json(raw: RawUpstream, http: aiohttp.ClientSession) -> None:
    raw.push(Answer.response(200, "<html>a portal page</html>", content_type="text/html"))
    with pytest.raises(ProviderError) as caught:
        await OpenAICompatible("local", f"{raw.url}/v1", http, key_required=False).complete(ask())
    assert caught.value.retryable and caught.value.message == "provider 'local' failed: the answer is not JSON"


async def test_a_stream_cut_mid_chunk_is_a_retryable_error(raw: RawUpstream, http: aiohttp.ClientSession) -> None:
    event = b'data: {"model": "m", "choices": [{"delta": {"content": "a"}}]}\n\n'
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    raw.push(Answer(head + b"%x\r\n%s\r\n" % (len(event), event) + b"100\r\ndata: {", close=True))
    stream = OpenAICompatible("local", f"{raw.url}/v1", http, key_required=False).stream(ask())
    with pytest.raises(ProviderError) as caught:
        await collect(stream)
    assert caught.value.retryable and "is unreachable" in caught.value.message


@pytest.mark.parametrize("answer", [
    Answer.response(401, "", reason=f"Bad key {OPENAI_KEY}"),
    Answer.json({"error": f"key {OPENAI_KEY} was revoked"}, status=403),
    Answer.json({"error": {"message": f"Incorrect API key provided: {OPENAI_KEY[:8]}***{OPENAI_KEY[-4:]}"}}, status=401),
    Answer.json({"error": {"message": f"Incorrect API key provided: {OPENAI_KEY[:8]}***{OPENAI_KEY[-4:]}"}}, status=429),
    Answer.sse([f'data: {json.dumps({"error": {"message": f"bad key {OPENAI_KEY}"}})}']),
])
async def test_the_provider_key_never_appears_in_an_error(raw: RawUpstream, http: aiohttp.ClientSession,
                                                          answer: Answer) -> None:
    provider = OpenAICompatible("openai", f"{raw.url}/v1", http, api_key=SecretStr(OPENAI_KEY))
    streamed = b"text/event-stream" in answer.data
    raw.push(answer)
    with pytest.raises(ProviderError) as caught:
        await (collect(provider.stream(ask())) if streamed else provider.complete(ask()))
    assert raw.requests[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"
    text = f"{caught.value} {json.dumps(caught.value.to_body())}"
    assert OPENAI_KEY not in text and OPENAI_KEY[:8] not in text and "[REDACTED]" in text


async def test_proxy_environment(raw: RawUpstream, model: ScriptedModel, http: aiohttp.ClientSession, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY carries a remote provider's calls (with the proxy's credentials); NO_PROXY keeps local ones direct,
    and HTTPS_PROXY is for https only."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", raw.url.replace("http://", "http://hub:proxy-pass@"))
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    settings = Settings.load(data_dir=tmp_path, openai_base_url=model.openai_url, openai_api_key=OPENAI_KEY,
                             providers={"remote": {"base_url": "http://models.example/v1"}})
    providers = ProviderSet(settings, http)
    model.push(Reply.say("direct"))
    raw.push(Answer.json(COMPLETION))
    assert (await providers.get("openai").complete(ask())).content == "direct"
    assert (await providers.get("remote").complete(ask())).content == "hi"
    proxied = raw.requests[0]
    assert proxied.line == "POST http://models.example/v1/chat/completions HTTP/1.1"
    assert proxied.headers["proxy-authorization"] == "Basic " + base64.b64encode(b"hub:proxy-pass").decode()
    assert len(model.requests) == 1 and "proxy-authorization" not in model.requests[0].headers


# -- the provider set ----------------------------------------------------------------------------------

def test_resolve_prefixes(providers: ProviderSet) -> None:
    provider, name = providers.resolve("openai/gpt-4o")
    assert (provider.name, name) == ("openai", "gpt-4o")
    provider, name = providers.resolve("anthropic/claude-sonnet-4-5")
    assert isinstance(provider, AnthropicMessages) and name == "claude-sonnet-4-5"
    assert providers.prefixes == ["anthropic", "openai"]


@pytest.mark.parametrize("model_name", ["mistral/large", "gpt-4o", "openai/"])
def test_bad_model_strings_are_400s(providers: ProviderSet, model_name: str) -> None:
    with pytest.raises(RequestError) as caught:
        providers.resolve(model_name)
    assert caught.value.status == 400 and caught.value.param == "model"
    if model_name != "openai/":
        assert caught.value.code == "unknown_provider" and "anthropic, openai" in caught.value.message


def test_default_provider_takes_bare_names(make_providers: Callable[..., ProviderSet]) -> None:
    provider, name = make_providers(default_provider="anthropic").resolve("claude-x")
    assert (provider.name, name) == ("anthropic", "claude-x")
    with pytest.raises(ConfigError):
        make_providers(default_provider="nope")


@pytest.mark.parametrize("prefix", ["openai", "anthropic"])
async def test_byok_key_reaches_the_upstream(providers: ProviderSet, model: ScriptedModel, prefix: str) -> None:
    model.push(Reply.say("a"), Reply.say("b"))
    await providers.get(prefix).complete(ask(), api_key=SecretStr("sk-callers-own-key"))
    await collect(providers.get(prefix).stream(ask(), api_key=SecretStr("sk-callers-own-key")))
    assert [r.api_key for r in model.requests] == ["sk-callers-own-key"] * 2


async def test_byok_without_a_configured_key(make_providers: Callable[..., ProviderSet], model: ScriptedModel) -> None:
    model.push(Reply.say("ok"))
    providers = make_providers(openai_api_key="")
    assert (await providers.get("openai").complete(ask(), api_key=SecretStr("sk-byok"))).content == "ok"
    assert model.requests[0].api_key == "sk-byok"


async def test_extra_providers_from_configuration(model: ScriptedModel, tmp_path: Path, http: aiohttp.ClientSession,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_HUB_PROVIDERS", json.dumps({
        "vllm": {"base_url": model.openai_url, "api_key_env": "VLLM_TOKEN"},
        "ollama": {"base_url": model.openai_url, "models": ["llama3.2:1b"]},
        "claude-proxy": {"base_url": model.anthropic_url, "api": "anthropic", "api_key_env": "PROXY_KEY"}}))
    monkeypatch.setenv("VLLM_TOKEN", "vllm-secret-token")
    monkeypatch.setenv("PROXY_KEY", "proxy-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-plain-env")
    monkeypatch.setenv("OPENAI_BASE_URL", model.openai_url)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", model.anthropic_url)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    settings = Settings.load(data_dir=tmp_path / "data")
    assert settings.openai_api_key is not None and settings.openai_api_key.get_secret_value() == "sk-from-plain-env"
    providers = ProviderSet(settings, http)
    assert providers.prefixes == ["anthropic", "claude-proxy", "ollama", "openai", "vllm"]
    model.push(Reply.say("from vllm"), Reply.say("from ollama"), Reply.say("from the proxy"))
    for model_name in ["vllm/meta-llama/Llama-3.1-8B", "ollama/llama3.2:1b", "claude-proxy/claude-x"]:
        provider, name = providers.resolve(model_name)
        await provider.complete(ChatRequest(model=name, messages=[{"role": "user", "content": "hi"}]))
    vllm, ollama, proxy = model.requests
    assert vllm.body["model"] == "meta-llama/Llama-3.1-8B" and vllm.api_key == "vllm-secret-token"
    assert ollama.body["model"] == "llama3.2:1b" and "authorization" not in ollama.headers
    assert proxy.path == "/v1/messages" and proxy.api_key == "proxy-secret"
    names, errors = await providers.list_models()
    assert "ollama/llama3.2:1b" in names and "vllm/scripted-small" in names and "openai/scripted-large" in names
    assert errors == {} and not any(n.startswith("anthropic/") for n in names)  # no key: not listed


def test_extra_provider_key_variable_unset_means_provider_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_TOKEN", raising=False)
    settings = Settings.load(data_dir=tmp_path, providers={"x": {"base_url": "http://127.0.0.1:9/v1",
                                                                 "api_key_env": "NOT_SET_TOKEN"}})
    assert settings.providers["x"].api_key is None
    with pytest.raises(ConfigError, match="provider prefix"):
        Settings.load(data_dir=tmp_path, providers={"Bad/Prefix": {"base_url": "http://h"}})


async def test_list_models_reports_failing_providers(make_providers: Callable[..., ProviderSet]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    providers = make_providers(anthropic_base_url=dead, anthropic_api_key="")
    names, errors = await providers.list_models()
    assert names == ["openai/scripted-small", "openai/scripted-large"] and errors == {}  # no key: skipped silently
    providers = make_providers(anthropic_base_url=dead)
    names, errors = await providers.list_models()
    assert list(errors) == ["anthropic"] and errors["anthropic"].retryable
