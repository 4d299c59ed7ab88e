"""One chat completion: the model / MCP-tool loop, as a stream of events.

`Completion.events()` drives the loop and yields `Text` (content as the model
produces it), `ToolActivity` (server-side tool calls starting and ending) and, last,
`Finished` with the complete `chat.completion` body. The non-streaming endpoint
keeps only the last event; the streaming one turns each into SSE chunks.

Per turn: one model call (trying the request's models in order while failures are
retryable) -> the MCP calls it asked for run in the hub, in parallel unless
`parallel_tool_calls` is false -> their results are appended as tool messages ->
the next turn. The loop ends when the model answers without MCP calls; when it asks
for client tools (returned to the caller with `finish_reason: "tool_calls"`); or
when `max_turns` model calls are used up, in which case the last turn's MCP calls
are not executed and are listed in `unexecuted_tool_calls` (`finish_reason:
"length"`, `turns_exhausted: true`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from .catalog import ToolCatalog
from .chat_request import ChatCompletionRequest, ModelChoice
from .errors import ProviderError
from .executor import CallContext, ToolCall, ToolResult
from .hub import Hub, Servers, parse_credentials
from .limits import check_tool_count
from .providers.base import ChatRequest, ChatResult, ToolCallOut, Usage
from .rendering import render_for_model
from .scrubbing import Scrubber, TextStream


@dataclass
class Text:
    """A content delta, as the model produced it."""

    text: str


@dataclass
class ToolActivity:
    """A server-side tool call started, completed or failed."""

    type: str  # tool_call.started | tool_call.completed | tool_call.failed
    call_id: str
    server: str
    tool: str
    duration_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        event: dict[str, Any] = {"type": self.type, "call_id": self.call_id, "server": self.server, "tool": self.tool}
        if self.duration_ms is not None:
            event["duration_ms"] = self.duration_ms
        return event


@dataclass
class Finished:
    """The complete `chat.completion` body."""

    body: dict[str, Any]


Event = Text | ToolActivity | Finished


@dataclass
class _State:
    usage: Usage = field(default_factory=Usage)
    turns: int = 0
    results: list[ToolResult] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    model: str = ""


class Completion:
    """One request's loop. Build it, then iterate `events()` once."""

    def __init__(self, hub: Hub, request: ChatCompletionRequest, *, tenant: str = "default",
                 provider_key: SecretStr | None = None, completion_id: str | None = None,
                 key_id: str | None = None) -> None:
        self.hub = hub
        self.key_id = key_id  # the caller's API key id (never the key), for the audit trail
        self.request = request
        self.tenant = tenant
        self.provider_key = provider_key
        self.id = completion_id or f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.stream = bool(request.stream)
        self._choices = request.models
        for choice in self._choices:  # an unknown provider is a 400 before anything runs
            hub.providers.resolve(choice.model)
        settings = hub.settings
        self.max_turns = min(request.max_turns or settings.max_turns_default, settings.max_turns_cap)
        self._state = _State(model=self._choices[0].model)
        self._scrubber = Scrubber()  # the request's secrets, known once its servers are bound

    @property
    def tools_ran(self) -> bool:
        """Whether any MCP tool was executed (so a retry must not run this request again)."""
        return bool(self._state.results)

    @property
    def model(self) -> str:
        """The model that answered (or will be tried first)."""
        return self._state.model

    async def events(self) -> AsyncIterator[Event]:
        """The loop's events with the request's secrets scrubbed.

        Tool results are scrubbed by the executor; this covers what the model says: it may
        repeat a credential (the user pasted it) in its content or in tool-call arguments
        that reach the caller (client calls, `unexecuted_tool_calls`). Streamed text goes
        through a `TextStream`, so a secret split across deltas is caught too.
        """
        text = TextStream(self._scrubber)
        async with aclosing(self._events()) as events:
            async for event in events:
                if text.scrubber is not self._scrubber:  # the servers are bound: their secrets are known
                    text = TextStream(self._scrubber)
                if isinstance(event, Text):
                    if piece := text.feed(event.text):
                        yield Text(piece)
                    continue
                if rest := text.flush():
                    yield Text(rest)
                if isinstance(event, Finished):
                    event = Finished(self._scrubber.value(event.body))
                yield event
        if rest := text.flush():
            yield Text(rest)

    async def _events(self) -> AsyncGenerator[Event, None]:
        request, state = self.request, self._state
        credentials = parse_credentials(request.credentials)
        servers = self.hub.open_servers(request.mcp_servers, credentials, tenant=self.tenant)
        secrets = [secret for session in servers.sessions.values() for secret in session.binding.secrets()]
        secrets += [value.get_secret_value() for credential in credentials for value in credential.values.values()]
        if self.provider_key is not None:
            secrets.append(self.provider_key.get_secret_value())
        self._scrubber = Scrubber(secrets)
        mcp_tools = await self.hub.list_tools(servers)
        await self.hub.record_server_errors(servers, CallContext(tenant=self.tenant, key_id=self.key_id,
                                                                 request_id=self.id, model=state.model))
        check_tool_count(mcp_tools, request.tools or [], self.hub.settings.max_tools_per_request)
        catalog = ToolCatalog(mcp_tools, request.tools or [])
        messages = _attach_orphan_tool_results([dict(message) for message in request.messages], request.tools or [])
        automatic = request.automatic_tool_execution is not False
        parallel = request.passthrough(self._choices[0]).get("parallel_tool_calls") is not False
        while True:
            result: ChatResult | None = None
            async for piece in self._model_turn(messages, catalog):
                if isinstance(piece, ChatResult):
                    result = piece
                else:
                    yield piece
            assert result is not None
            state.turns += 1
            state.usage += result.usage
            mcp_calls = [call for call in result.tool_calls if catalog.mcp(call.name)]
            client_calls = [call for call in result.tool_calls if catalog.is_client(call.name)]
            unknown = [call for call in result.tool_calls if call not in mcp_calls and call not in client_calls]
            if not result.tool_calls:
                yield Finished(self._body(result.content, [], result.finish_reason, servers))
                return
            if not automatic:
                yield Finished(self._body(result.content, result.tool_calls, "tool_calls", servers))
                return
            if state.turns >= self.max_turns and (mcp_calls or unknown):
                body = self._body(result.content, client_calls, "tool_calls" if client_calls else "length", servers)
                body["turns_exhausted"] = True
                body["unexecuted_tool_calls"] = [self._describe_call(call, catalog) for call in mcp_calls + unknown]
                yield Finished(body)
                return
            for call in mcp_calls:
                tool = catalog.mcp(call.name)
                assert tool is not None
                yield ToolActivity("tool_call.started", call.id, tool.server, tool.tool.name)
            calls = [ToolCall(server=tool.server, tool=tool.tool.name, arguments=call.arguments, id=call.id)
                     for call in mcp_calls if (tool := catalog.mcp(call.name))]
            context = CallContext(tenant=self.tenant, key_id=self.key_id, request_id=self.id, model=state.model,
                                  turn=state.turns)
            batch = await self.hub.execute(calls, servers, parallel=parallel, context=context)
            for item in batch.results:
                state.results.append(item)
                state.executed.append(item.tool_name)
                kind = "tool_call.failed" if item.is_error else "tool_call.completed"
                yield ToolActivity(kind, item.call_id, item.server_name, item.tool_name, item.duration_ms)
            if client_calls:
                yield Finished(self._body(result.content, client_calls, "tool_calls", servers))
                return
            messages.append(_assistant_message(result.content, mcp_calls + unknown))
            cap = self.hub.settings.tool_result_max_chars
            rendered = {item.call_id: render_for_model(item, cap) for item in batch.results}
            for call in mcp_calls + unknown:
                content = rendered.get(call.id) or f"Error: there is no tool named {call.name!r}; use one of the tools offered."
                messages.append({"role": "tool", "tool_call_id": call.id, "content": content})

    async def _model_turn(self, messages: list[dict[str, Any]], catalog: ToolCatalog) -> AsyncIterator[Text | ChatResult]:
        """One model call, falling back to the next model on retryable failures before any output."""
        last_error: ProviderError | None = None
        tools = catalog.provider_tools()
        for choice in self._choices:
            provider, name = self.hub.providers.resolve(choice.model)
            call = ChatRequest(model=name, messages=messages, tools=tools, params=self._params(choice, catalog))
            produced = False
            started = time.perf_counter()
            try:
                if not self.stream:
                    result = await provider.complete(call, api_key=self.provider_key)
                else:
                    result = None
                    async for piece in _assemble(provider.stream(call, api_key=self.provider_key)):
                        if isinstance(piece, Text):
                            produced = True
                            yield piece
                        else:
                            result = piece
                    assert result is not None
            except ProviderError as exc:
                self.hub.metrics.model_call(provider.name, time.perf_counter() - started, exc.code)
                if not exc.retryable or produced:
                    raise
                last_error = exc
                continue
            self.hub.metrics.model_call(provider.name, time.perf_counter() - started)
            assert result is not None
            self._state.model = choice.model
            yield result
            return
        assert last_error is not None
        raise last_error

    def _params(self, choice: ModelChoice, catalog: ToolCatalog) -> dict[str, Any]:
        params = self.request.passthrough(choice)
        if not len(catalog):  # providers reject tool options without tools
            params.pop("tool_choice", None)
            params.pop("parallel_tool_calls", None)
        return params

    def _describe_call(self, call: ToolCallOut, catalog: ToolCatalog) -> dict[str, Any]:
        tool = catalog.mcp(call.name)
        described: dict[str, Any] = {"id": call.id, "name": call.name, "arguments": _arguments_object(call.arguments)}
        if tool is not None:
            described |= {"server_name": tool.server, "tool_name": tool.tool.name}
        return described

    def _body(self, content: str | None, tool_calls: list[ToolCallOut], finish_reason: str,
              servers: Servers) -> dict[str, Any]:
        state = self._state
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            message["tool_calls"] = [_wire_call(call) for call in tool_calls]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": state.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
            "usage": state.usage.as_dict(),
            "tools_executed": list(state.executed),
            "mcp_tool_results": [item.public() for item in state.results],
            "mcp_server_errors": servers.error_entries(),
            "turns_consumed": state.turns,
        }


def _arguments_object(raw: str) -> Any:
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return raw


def _wire_call(call: ToolCallOut) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _attach_orphan_tool_results(messages: list[dict[str, Any]], client_tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every `tool` message an assistant message that asked for it (PROTOCOL.md 3, item 4).

    The streaming Dedalus runner sends its local tools' results without the assistant
    message that called them; providers reject such orphans (OpenAI: 400; Anthropic: a
    `tool_result` without its `tool_use`). Without saved loop state (the handoff issue)
    the call is synthesised: named after the request's only client tool when there is
    exactly one, else a neutral placeholder, with empty arguments. Consecutive orphans
    share one synthesised message, as parallel calls would.
    """
    names = [tool["function"]["name"] for tool in client_tools]
    name = names[0] if len(names) == 1 else "client_tool"
    asked: set[str] = set()
    out: list[dict[str, Any]] = []
    synthesised: dict[str, Any] | None = None
    for message in messages:
        role = message.get("role")
        if role == "assistant":
            asked |= {str(call.get("id")) for call in message.get("tool_calls") or [] if isinstance(call, dict)}
        if role == "tool" and message["tool_call_id"] not in asked:
            if synthesised is None:
                synthesised = {"role": "assistant", "content": None, "tool_calls": []}
                out.append(synthesised)
            synthesised["tool_calls"].append(_wire_call(ToolCallOut(id=message["tool_call_id"], name=name, arguments="{}")))
            asked.add(message["tool_call_id"])
        else:
            synthesised = None  # only a run of orphans shares one synthesised message
        out.append(message)
    return out


def _assistant_message(content: str | None, calls: list[ToolCallOut]) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": [_wire_call(call) for call in calls]}


async def _assemble(deltas: AsyncIterator[Any]) -> AsyncIterator[Text | ChatResult]:
    """Yield content as it streams; finish with the assembled `ChatResult`."""
    content: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    finish_reason, usage, model = "stop", Usage(), ""
    async for delta in deltas:
        if delta.content:
            content.append(delta.content)
            yield Text(delta.content)
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
