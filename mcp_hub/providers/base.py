"""The provider interface: one small Protocol that every model provider implements.

The hub speaks the OpenAI chat-completions format internally. A provider takes a
`ChatRequest` in that format and returns a `ChatResult` (non-streaming) or yields
`ChatDelta`s (streaming), translating to and from its own wire format (Anthropic
Messages, ...) where it is not OpenAI-compatible. Providers share the hub's pooled
aiohttp session and raise only `ProviderError`s.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import SecretStr


@dataclass
class ChatRequest:
    """One model call, in OpenAI chat-completions terms.

    `model` is the provider's own model name (the `provider/` prefix removed).
    `messages` and `tools` are OpenAI-format dicts (`tools`: `{"type": "function",
    "function": {"name", "description", "parameters"}}`). `params` holds every other
    request field to pass through (temperature, max_tokens, tool_choice,
    parallel_tool_calls, stop, response_format, provider-specific extras, ...); a
    provider maps what it understands and drops what it cannot express.
    """

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolCallOut:
    """A tool call the model asked for; `arguments` is the raw JSON text it produced."""

    id: str
    name: str
    arguments: str


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens,
                     self.total_tokens + other.total_tokens)

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass
class ChatResult:
    """A finished model turn (choice 0)."""

    content: str | None
    tool_calls: list[ToolCallOut]
    finish_reason: str
    usage: Usage
    model: str  # as the upstream reported it
    id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. refusal, reasoning_content


@dataclass
class ChatDelta:
    """One streaming event, already normalized.

    Exactly one kind per delta: `content` text; a tool-call fragment (`tool_index` with
    any of `tool_id`, `tool_name`, `tool_arguments` as they arrive); the end of the turn
    (`finish_reason`, with `usage` when the provider reports it, and `model`).
    """

    content: str | None = None
    tool_index: int | None = None
    tool_id: str | None = None
    tool_name: str | None = None
    tool_arguments: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None


class Provider(Protocol):
    """A model provider reached over HTTP."""

    name: str  # the prefix: "openai", "anthropic", "ollama", ...

    async def complete(self, request: ChatRequest, *, api_key: SecretStr | None = None) -> ChatResult:
        """One non-streaming model call. `api_key` overrides the configured key (BYOK)."""
        ...

    def stream(self, request: ChatRequest, *, api_key: SecretStr | None = None) -> AsyncIterator[ChatDelta]:
        """One streaming model call; the iterator ends after the delta carrying `finish_reason`."""
        ...

    async def list_models(self, *, api_key: SecretStr | None = None) -> list[str]:
        """Model names the provider offers (its own names, without the prefix)."""
        ...


async def assemble(deltas: AsyncIterator[ChatDelta]) -> AsyncIterator[str | ChatResult]:
    """A streamed model turn: its content as it arrives, then the assembled `ChatResult`."""
    content: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    finish_reason, usage, model = "stop", Usage(), ""
    async for delta in deltas:
        if delta.content:
            content.append(delta.content)
            yield delta.content
        if delta.tool_index is not None:
            slot = calls.setdefault(delta.tool_index, {"id": "", "name": "", "arguments": ""})
            slot["id"] = delta.tool_id or slot["id"]
            slot["name"] += delta.tool_name or ""
            slot["arguments"] += delta.tool_arguments or ""
        if delta.finish_reason:
            finish_reason = delta.finish_reason
        if delta.usage is not None:
            usage = delta.usage
        model = delta.model or model
    tool_calls = [ToolCallOut(id=slot["id"] or f"call_{uuid.uuid4().hex[:24]}", name=slot["name"], arguments=slot["arguments"])
                  for _, slot in sorted(calls.items())]
    yield ChatResult(content="".join(content) or None, tool_calls=tool_calls, finish_reason=finish_reason, usage=usage,
                     model=model)
