"""Any OpenAI-compatible chat completions API: OpenAI itself, Ollama, vLLM, LiteLLM, OpenRouter, ...

The hub already speaks this format, so requests pass through nearly unchanged; answers
are normalized where compatible servers differ (missing tool-call ids, arguments sent
as objects, `finish_reason: "stop"` on a turn that called tools).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from .. import jsoncodec
from .base import ChatDelta, ChatRequest, ChatResult, ToolCallOut, Usage
from .upstream import Upstream, upstream_message

# Fields the hub sets itself on every call.
_OWN_FIELDS = ("model", "messages", "tools", "stream", "stream_options")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Function(_Lenient):
    name: str | None = None
    arguments: str | dict[str, Any] | None = None


class _ToolCall(_Lenient):
    index: int | None = None
    id: str | None = None
    function: _Function = Field(default_factory=_Function)  # a factory: a model default is deep-copied per use


class _Message(_Lenient):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(_Lenient):
    message: _Message = Field(default_factory=_Message)
    delta: _Message = Field(default_factory=_Message)
    finish_reason: str | None = None


class _Usage(_Lenient):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int | None = None

    def normalized(self) -> Usage:
        total = self.total_tokens if self.total_tokens is not None else self.prompt_tokens + self.completion_tokens
        return Usage(self.prompt_tokens, self.completion_tokens, total)


class _Completion(_Lenient):
    id: str = ""
    model: str = ""
    choices: list[_Choice] = []
    usage: _Usage | None = None


class _Models(_Lenient):
    data: list[dict[str, Any]] = []


def _arguments(value: str | dict[str, Any] | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else jsoncodec.text_within(value)  # an object: some servers send one


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class OpenAICompatible:
    """A provider for any OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(self, name: str, base_url: str, http: aiohttp.ClientSession, *, api_key: SecretStr | None = None,
                 key_required: bool = True, key_source: str = "OPENAI_API_KEY", timeout: float = 120.0) -> None:
        self.name = name
        self.upstream = Upstream(name, base_url, http, api_key=api_key, key_required=key_required,
                                 key_source=key_source, timeout=timeout)

    def _headers(self, api_key: SecretStr | None) -> tuple[dict[str, str], list[str]]:
        key = self.upstream.key(api_key)
        headers = {"accept": "application/json"}
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        return headers, [key] if key else []

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body = {key: value for key, value in request.params.items() if key not in _OWN_FIELDS}
        body["model"] = request.model
        body["messages"] = request.messages
        if request.tools:
            body["tools"] = request.tools
        return body

    async def complete(self, request: ChatRequest, *, api_key: SecretStr | None = None) -> ChatResult:
        headers, secrets = self._headers(api_key)
        body = await self.upstream.read("/chat/completions", method="POST", headers=headers, secrets=secrets,
                                        json_body=self._body(request))
        try:
            completion = _Completion.model_validate_json(body)
        except ValidationError as exc:
            invalid = exc.errors()[0]["type"] == "json_invalid"
            raise self.upstream.failure("the answer is not JSON" if invalid else
                                        "the answer is not a chat completion") from None
        if not completion.choices:
            raise self.upstream.failure("the answer has no choices")
        choice = completion.choices[0]
        calls = [ToolCallOut(call.id or _call_id(), call.function.name or "", _arguments(call.function.arguments))
                 for call in choice.message.tool_calls or []]
        finish = choice.finish_reason or "stop"
        if calls and finish == "stop":  # some compatible servers say "stop" after calling tools
            finish = "tool_calls"
        extra = {key: value for key, value in (choice.message.model_extra or {}).items()
                 if key in ("refusal", "reasoning_content", "reasoning") and value is not None}
        usage = completion.usage.normalized() if completion.usage else Usage()
        return ChatResult(content=choice.message.content, tool_calls=calls, finish_reason=finish, usage=usage,
                          model=completion.model or request.model, id=completion.id, extra=extra)

    async def stream(self, request: ChatRequest, *, api_key: SecretStr | None = None) -> AsyncIterator[ChatDelta]:
        headers, secrets = self._headers(api_key)
        headers["accept"] = "text/event-stream"
        body = self._body(request) | {"stream": True, "stream_options": {"include_usage": True}}
        finish: str | None = None
        usage: Usage | None = None
        model = request.model
        ids: dict[int, str] = {}
        called = False
        async with self.upstream.open("POST", "/chat/completions", headers=headers, secrets=secrets, json_body=body,
                                      stream=True) as response:
            async for event in self.upstream.events(response):
                if event.data.strip() == "[DONE]":
                    finish = finish or "stop"
                    break
                try:
                    chunk = _Completion.model_validate_json(event.data)
                except ValidationError:
                    raise self.upstream.failure(upstream_message(event.data) or "malformed stream chunk",
                                                secrets=secrets) from None
                if "error" in (chunk.model_extra or {}):
                    raise self.upstream.failure(upstream_message(event.data), secrets=secrets)
                model = chunk.model or model
                if chunk.usage is not None:
                    usage = chunk.usage.normalized()
                for choice in chunk.choices[:1]:
                    if choice.delta.content:
                        yield ChatDelta(content=choice.delta.content)
                    for position, call in enumerate(choice.delta.tool_calls or []):
                        index = call.index if call.index is not None else position
                        new = index not in ids
                        if new:
                            ids[index] = call.id or _call_id()
                            called = True
                        yield ChatDelta(tool_index=index, tool_id=ids[index] if new else None,
                                        tool_name=call.function.name, tool_arguments=_arguments(call.function.arguments))
                    finish = choice.finish_reason or finish
            if finish is None:
                raise self.upstream.failure("the stream ended before the turn finished", secrets=secrets)
        if called and finish == "stop":
            finish = "tool_calls"
        yield ChatDelta(finish_reason=finish, usage=usage, model=model)

    async def list_models(self, *, api_key: SecretStr | None = None) -> list[str]:
        headers, secrets = self._headers(api_key)
        data = await self.upstream.get_json("/models", headers=headers, secrets=secrets)
        try:
            listed = _Models.model_validate(data)
        except ValidationError:
            raise self.upstream.failure("the model list is malformed") from None
        return [str(item["id"]) for item in listed.data if "id" in item]
