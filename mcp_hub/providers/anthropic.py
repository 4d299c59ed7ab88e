"""The Anthropic Messages API, translated to and from the hub's OpenAI chat format.

Requests: system (and developer) messages become `system`; assistant `tool_calls` become
`tool_use` blocks; `tool` messages become `tool_result` blocks in a user turn, and
consecutive messages of one role merge into one turn (the API wants roles to alternate);
tools become `{name, description, input_schema}`; `tool_choice` auto/none/required/a
function become auto/none/any/tool; `max_tokens` is required, so it defaults to
`DEFAULT_MAX_TOKENS`. Sampling fields that Anthropic has pass through; others are dropped.

Answers: text blocks join into `content`, `tool_use` blocks become tool calls with their
input as JSON text, `stop_reason` maps to a `finish_reason`. Thinking blocks (extended
thinking) come back in `ChatResult.extra["thinking_blocks"]`; an assistant message that
carries them under that key sends them back, as the API requires when thinking meets tools.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from .. import jsoncodec
from .base import ChatDelta, ChatRequest, ChatResult, ToolCallOut, Usage
from .upstream import Upstream

VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "tool_use": "tool_calls",
          "max_tokens": "length", "model_context_window_exceeded": "length", "refusal": "content_filter"}
_PASSED = ("temperature", "top_p", "top_k", "thinking")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Block(_Lenient):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    partial_json: str | None = None


class _Usage(_Lenient):
    input_tokens: int | None = 0
    output_tokens: int | None = 0
    cache_creation_input_tokens: int | None = 0
    cache_read_input_tokens: int | None = 0

    @property
    def prompt(self) -> int:
        return (self.input_tokens or 0) + (self.cache_creation_input_tokens or 0) + (self.cache_read_input_tokens or 0)


class _Message(_Lenient):
    id: str = ""
    model: str = ""
    content: list[_Block] = []
    stop_reason: str | None = None
    usage: _Usage = _Usage()


class _Event(_Lenient):
    type: str
    index: int = 0
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Lenient | None = None
    usage: _Usage | None = None
    error: dict[str, Any] | None = None


# -- request translation -------------------------------------------------------------------

def _text(content: Any) -> str:
    """The text of OpenAI message content: a string or a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    """User or assistant content as Anthropic blocks (text and images)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if url.startswith("data:") and ";base64," in url:
                media_type, _, data = url[5:].partition(";base64,")
                blocks.append({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
            elif url:
                blocks.append({"type": "image", "source": {"type": "url", "url": url}})
    return blocks


def _input_text(value: Any) -> str:
    """A `tool_use` block's input as the JSON text of OpenAI's `arguments` (depth-capped)."""
    return jsoncodec.text_within(value if value is not None else {})


def _tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic requires (malformed JSON becomes `{}`)."""
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = jsoncodec.loads_within(arguments or "{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def translate_messages(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI messages → (`system`, Anthropic `messages`)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            if text := _text(message.get("content")):
                system.append(text)
            continue
        if role == "tool":
            role, blocks = "user", [{"type": "tool_result", "tool_use_id": message.get("tool_call_id", ""),
                                     "content": _text(message.get("content"))}]
        elif role == "assistant":
            blocks = list(message.get("thinking_blocks") or []) + _content_blocks(message.get("content"))
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                blocks.append({"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""),
                               "input": _tool_input(function.get("arguments"))})
        else:
            role, blocks = "user", _content_blocks(message.get("content"))
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return ("\n\n".join(system) or None), turns


def translate_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        function = tool.get("function") if tool.get("type", "function") == "function" else None
        if not function:
            continue
        spec = {"name": function["name"],
                "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
        if function.get("description"):
            spec["description"] = function["description"]
        out.append(spec)
    return out


def translate_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        mapped: dict[str, Any] | None = {"type": "tool", "name": name} if name else None
    else:
        mapped = {"type": {"auto": "auto", "none": "none", "required": "any"}[choice]} if choice in (
            "auto", "none", "required") else None
    if parallel is False:
        mapped = mapped or {"type": "auto"}
        if mapped["type"] != "none":
            mapped["disable_parallel_tool_use"] = True
    return mapped


def translate_request(request: ChatRequest, stream: bool) -> dict[str, Any]:
    """A `ChatRequest` as an Anthropic Messages request body."""
    params = request.params
    system, messages = translate_messages(request.messages)
    body: dict[str, Any] = {"model": request.model, "messages": messages,
                            "max_tokens": params.get("max_completion_tokens") or params.get("max_tokens")
                            or DEFAULT_MAX_TOKENS}
    if system:
        body["system"] = system
    body.update({key: params[key] for key in _PASSED if params.get(key) is not None})
    if (stop := params.get("stop")) is not None:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(params.get("user"), str):
        body["metadata"] = {"user_id": params["user"]}
    if request.tools:
        body["tools"] = translate_tools(request.tools)
        choice = translate_tool_choice(params.get("tool_choice"), params.get("parallel_tool_calls"))
        if choice is not None:
            body["tool_choice"] = choice
    if stream:
        body["stream"] = True
    return body


# -- the provider --------------------------------------------------------------------------

class AnthropicMessages:
    """A provider for the Anthropic Messages API (`POST {base}/v1/messages`)."""

    def __init__(self, name: str, base_url: str, http: aiohttp.ClientSession, *, api_key: SecretStr | None = None,
                 key_required: bool = True, key_source: str = "ANTHROPIC_API_KEY", timeout: float = 120.0) -> None:
        self.name = name
        self.upstream = Upstream(name, base_url, http, api_key=api_key, key_required=key_required,
                                 key_source=key_source, timeout=timeout)

    def _headers(self, api_key: SecretStr | None) -> tuple[dict[str, str], list[str]]:
        key = self.upstream.key(api_key)
        headers = {"anthropic-version": VERSION, "accept": "application/json"}
        if key is not None:
            headers["x-api-key"] = key
        return headers, [key] if key else []

    async def complete(self, request: ChatRequest, *, api_key: SecretStr | None = None) -> ChatResult:
        headers, secrets = self._headers(api_key)
        data = await self.upstream.get_json("/v1/messages", method="POST", headers=headers, secrets=secrets,
                                            json_body=translate_request(request, stream=False))
        try:
            message = _Message.model_validate(data)
        except ValidationError:
            raise self.upstream.failure("the answer is not a message") from None
        texts = [block.text or "" for block in message.content if block.type == "text"]
        calls = [ToolCallOut(block.id or "", block.name or "", _input_text(block.input))
                 for block in message.content if block.type == "tool_use"]
        thinking = [block.model_dump(exclude_none=True) for block in message.content
                    if block.type in ("thinking", "redacted_thinking")]
        usage = Usage(message.usage.prompt, message.usage.output_tokens or 0,
                      message.usage.prompt + (message.usage.output_tokens or 0))
        return ChatResult(content="".join(texts) if texts else None, tool_calls=calls,
                          finish_reason=FINISH.get(message.stop_reason or "end_turn", "stop"), usage=usage,
                          model=message.model or request.model, id=message.id,
                          extra={"thinking_blocks": thinking} if thinking else {})

    async def stream(self, request: ChatRequest, *, api_key: SecretStr | None = None) -> AsyncIterator[ChatDelta]:
        headers, secrets = self._headers(api_key)
        headers["accept"] = "text/event-stream"
        model, prompt, output = request.model, 0, 0
        stop_reason: str | None = None
        tools: dict[int, int] = {}  # content block index -> tool call index
        fed: set[int] = set()  # tool blocks that received input fragments
        async with self.upstream.open("POST", "/v1/messages", headers=headers, secrets=secrets, stream=True,
                                      json_body=translate_request(request, stream=True)) as response:
            async for raw in self.upstream.events(response):
                try:
                    event = _Event.model_validate_json(raw.data)
                except ValidationError:
                    raise self.upstream.failure("malformed stream event", secrets=secrets) from None
                if event.type == "error":
                    error = event.error or {}
                    raise self.upstream.failure(str(error.get("message", "")), kind=error.get("type"), secrets=secrets)
                if event.type == "message_start" and event.message is not None:
                    model = event.message.model or model
                    prompt, output = event.message.usage.prompt, event.message.usage.output_tokens or 0
                elif event.type == "content_block_start" and event.content_block is not None:
                    block = event.content_block
                    if block.type == "text" and block.text:
                        yield ChatDelta(content=block.text)
                    elif block.type == "tool_use":
                        tools[event.index] = len(tools)
                        yield ChatDelta(tool_index=tools[event.index], tool_id=block.id, tool_name=block.name)
                elif event.type == "content_block_delta" and event.delta is not None:
                    delta = event.delta.model_extra or {}
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        yield ChatDelta(content=delta["text"])
                    elif delta.get("type") == "input_json_delta" and event.index in tools and delta.get("partial_json"):
                        fed.add(event.index)
                        yield ChatDelta(tool_index=tools[event.index], tool_arguments=delta["partial_json"])
                elif event.type == "content_block_stop" and event.index in tools and event.index not in fed:
                    yield ChatDelta(tool_index=tools[event.index], tool_arguments="{}")  # a call without arguments
                elif event.type == "message_delta":
                    if event.delta is not None:
                        stop_reason = (event.delta.model_extra or {}).get("stop_reason") or stop_reason
                    if event.usage is not None:
                        output = event.usage.output_tokens or output
                        prompt = event.usage.prompt or prompt
                elif event.type == "message_stop":
                    break
            else:
                raise self.upstream.failure("the stream ended before the message stopped", secrets=secrets)
        usage = Usage(prompt, output, prompt + output)
        yield ChatDelta(finish_reason=FINISH.get(stop_reason or "end_turn", "stop"), usage=usage, model=model)

    async def list_models(self, *, api_key: SecretStr | None = None) -> list[str]:
        headers, secrets = self._headers(api_key)
        names: list[str] = []
        params: dict[str, Any] = {"limit": 1000}
        for _ in range(20):  # pages; a bound so a looping upstream cannot hold us
            data = await self.upstream.get_json("/v1/models", headers=headers, secrets=secrets, params=params)
            page = data if isinstance(data, dict) else {}
            names += [str(item["id"]) for item in page.get("data") or [] if isinstance(item, dict) and "id" in item]
            if not page.get("has_more") or not page.get("last_id"):
                break
            params = {"limit": 1000, "after_id": page["last_id"]}
        return names
