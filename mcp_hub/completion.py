"""One chat completion: the model / MCP-tool loop, as a stream of events.

`Completion.events()` drives the loop and yields `Text` (content as the model
produces it), `ToolActivity` (server-side tool calls starting and ending) and, last,
`Finished` with the complete `chat.completion` body. The non-streaming endpoint
keeps only the last event; the streaming one turns each into SSE chunks.

Per turn: one model call (trying the request's models in order while failures are
retryable) -> the MCP calls it asked for run in the hub, in parallel unless
`parallel_tool_calls` is false -> their results are appended as tool messages ->
the next turn. A tool's audit record is committed while the next model call runs
(`Commits`): nothing that reports or derives from the result reaches the caller
before the commit. The loop ends when the model answers without MCP calls; when it asks
for client tools (returned to the caller with `finish_reason: "tool_calls"`); or
when `max_turns` model calls are used up, in which case the last turn's MCP calls
are not executed and are listed in `unexecuted_tool_calls` (`finish_reason:
"length"`, `turns_exhausted: true`).

Handoffs (README "Client tools and handoffs"): a turn with client calls runs only the
MCP calls that need no client output (`references.py`: the `$ref` rule, waves), saves
the loop state (`handoff.py`) and answers with `pending_tools`, `server_results`,
`deferred` and `correlation_id`. A follow-up request is matched to that state before
its servers open, its conversation rebuilt and its deferred calls run, then the loop
goes on.
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

from .audit import Commits
from .catalog import ToolCatalog
from .chat_request import ChatCompletionRequest, ModelChoice
from .conversation import (
    arguments_or_text,
    assistant_message,
    attach_orphan_tool_results,
    tool_answer,
    wire_call,
)
from .errors import NotFound, ProviderError
from .events import Event, Finished, Text, ToolActivity
from .executor import CallContext, ToolCall, ToolResult
from .handoff import DeferredCall, Handoff, Resume, new_correlation_id, trailing_tool_run, without_credentials
from .hub import Hub, Servers, parse_credentials
from .limits import check_tool_count
from .providers.base import ChatRequest, ChatResult, ToolCallOut, Usage, assemble
from .references import TurnGraph, arguments_object, client_value, substitute, waves
from .rendering import render_for_model
from .scrubbing import Scrubber, TextStream


@dataclass
class _State:
    usage: Usage = field(default_factory=Usage)
    turns: int = 0
    results: list[ToolResult] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    model: str = ""
    carried: int = 0  # how many of `results` an earlier request of the exchange ran


@dataclass
class _Run:
    """One MCP call to run: its presented name and (normalised) arguments."""

    id: str
    name: str
    arguments: Any


class Completion:
    """One request's loop. Build it, then iterate `events()` once."""

    def __init__(self, hub: Hub, request: ChatCompletionRequest, *, tenant: str = "default",
                 provider_key: SecretStr | None = None, completion_id: str | None = None,
                 key_id: str | None = None, source: str = "completion") -> None:
        self.hub = hub
        self.key_id = key_id  # the caller's API key id (never the key), for the audit trail
        self.source = source  # completion | deferred (a deferred completion), for the audit trail
        self.correlation_id: str | None = None  # the exchange's handoff handle, once known
        self._resumed: Handoff | None = None
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
        self._commits = Commits()  # audit records still being committed while the model reads their results

    @property
    def tools_ran(self) -> bool:
        """Whether this request executed an MCP tool (so a retry must not run it again)."""
        return len(self._state.results) > self._state.carried

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
                if self._commits and not isinstance(event, ToolActivity):
                    await self._commits.wait()  # nothing derived from a tool result before its record is durable
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
        messages = [dict(message) for message in request.messages]
        resume = await self._find_resume(messages)
        spec = request.mcp_servers
        if spec is None and resume.handoff is not None:
            spec = resume.handoff.mcp_servers  # saved without credentials: the request supplies them
        credentials = parse_credentials(request.credentials)
        servers = self.hub.open_servers(spec, credentials, tenant=self.tenant)
        secrets = [secret for session in servers.sessions.values() for secret in session.binding.secrets()]
        secrets += [value.get_secret_value() for credential in credentials for value in credential.values.values()]
        if self.provider_key is not None:
            secrets.append(self.provider_key.get_secret_value())
        self._scrubber = Scrubber(secrets)
        mcp_tools = await self.hub.list_tools(servers)
        await self.hub.record_server_errors(servers, CallContext(tenant=self.tenant, key_id=self.key_id,
                                                                 request_id=self.id, model=state.model))
        check_tool_count(mcp_tools, request.tools or [], self.hub.settings.max_tools_per_request)
        catalog = self.hub.catalogs.catalog(mcp_tools, request.tools or [])
        automatic = request.automatic_tool_execution is not False
        parallel = request.passthrough(self._choices[0]).get("parallel_tool_calls") is not False
        structured = request.handoff_mode is not False
        if resume.handoff is not None or resume.deferred_calls is not None:
            async for event in self._resume(resume, messages, catalog, servers, parallel):
                yield event
        messages = attach_orphan_tool_results(messages, request.tools or [])
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
                await self._exchange_over()
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
            graph = TurnGraph([(call.id, call.name, call.arguments) for call in result.tool_calls])
            client_ids = {call.id for call in client_calls}
            blocked = graph.blocked([call.id for call in mcp_calls], client_ids) if structured and client_calls else set()
            ready = [_Run(call.id, call.name, graph.arguments[call.id]) for call in mcp_calls if call.id not in blocked]
            values: dict[str, Any] = {}
            rendered: dict[str, str] = {}
            if structured and client_calls:  # a handoff: its calls are audited under its correlation id
                self.correlation_id = self.correlation_id or new_correlation_id()
            context = self._context(turn=state.turns)
            async for event in self._run(ready, graph.needs, values, rendered, catalog, servers, parallel, context):
                yield event
            if client_calls and structured:
                body = await self._handoff(result, graph, messages, blocked, values, rendered, catalog, servers)
                yield Finished(body)
                return
            if client_calls:
                yield Finished(self._body(result.content, client_calls, "tool_calls", servers))
                return
            messages.append(assistant_message(result.content, mcp_calls + unknown))
            for call in mcp_calls + unknown:
                messages.append({"role": "tool", "tool_call_id": call.id, "content": tool_answer(rendered, call)})

    def _context(self, *, turn: int | None, source: str | None = None) -> CallContext:
        return CallContext(tenant=self.tenant, key_id=self.key_id, request_id=self.id, model=self._state.model,
                           turn=turn, correlation_id=self.correlation_id, source=source or self.source)

    async def _run(self, calls: list[_Run], needs: dict[str, list[str]], values: dict[str, Any],
                   rendered: dict[str, str], catalog: ToolCatalog, servers: Servers, parallel: bool,
                   context: CallContext) -> AsyncIterator[Event]:
        """Run MCP calls in waves (a call after those it references), filling `values` and `rendered`."""
        by_id = {call.id: call for call in calls}
        cap = self.hub.settings.tool_result_max_chars
        for wave in waves(list(by_id), needs):
            batch: list[ToolCall] = []
            for call_id in wave:
                call = by_id[call_id]
                tool = catalog.mcp(call.name)
                if tool is None:  # a deferred call naming a tool this request does not offer
                    rendered[call_id] = f"Error: there is no tool named {call.name!r}; use one of the tools offered."
                    continue
                arguments = substitute(call.arguments, values)
                yield ToolActivity("tool_call.started", call_id, tool.server, tool.tool.name)
                batch.append(ToolCall(server=tool.server, tool=tool.tool.name, id=call_id,
                                      arguments=arguments if isinstance(arguments, dict | str) else json.dumps(arguments)))
            if not batch:
                continue
            done = await self.hub.execute(batch, servers, parallel=parallel, context=context, commits=self._commits)
            for item in done.results:
                self._state.results.append(item)
                self._state.executed.append(item.tool_name)
                values[item.call_id] = item.result
                rendered[item.call_id] = render_for_model(item, cap)
                kind = "tool_call.failed" if item.is_error else "tool_call.completed"
                yield ToolActivity(kind, item.call_id, item.server_name, item.tool_name, item.duration_ms)

    # -- handoffs ---------------------------------------------------------------------------

    async def _find_resume(self, messages: list[dict[str, Any]]) -> Resume:
        """What this request resumes, in PROTOCOL.md's order (see `handoff.py`)."""
        request = self.request
        if request.handoff_mode is False:
            return Resume()
        store = self.hub.handoffs
        trailing = [message["tool_call_id"] for message in messages[trailing_tool_run(messages):]]
        if request.correlation_id:
            handoff = await store.load(self.tenant, request.correlation_id)
            if handoff is not None:
                self.correlation_id = handoff.correlation_id
                if trailing:
                    self._resumed = handoff
                    return Resume(handoff=handoff, correlation_id=handoff.correlation_id)
                return Resume(correlation_id=handoff.correlation_id)
            if request.handoff_mode is True:
                raise NotFound("no saved handoff state for this correlation_id (unknown, expired or already "
                               "finished); send the whole conversation with handoff_mode false or absent",
                               code="handoff_not_found", param="correlation_id")
        if request.deferred_calls and trailing:  # without tool results there is nothing they could wait for
            return Resume(deferred_calls=list(request.deferred_calls))
        if trailing:
            handoff = await store.find(self.tenant, trailing)
            if handoff is not None:
                self.correlation_id = handoff.correlation_id
                self._resumed = handoff
                return Resume(handoff=handoff, correlation_id=handoff.correlation_id)
        return Resume()

    async def _resume(self, resume: Resume, messages: list[dict[str, Any]], catalog: ToolCatalog, servers: Servers,
                      parallel: bool) -> AsyncIterator[Event]:
        """Rebuild the conversation of a handoff (in place) and run its deferred calls."""
        start = trailing_tool_run(messages)
        answers = {message["tool_call_id"]: message for message in messages[start:]}
        handoff = resume.handoff
        if handoff is not None:
            rebuilt = [*handoff.conversation, handoff.assistant, *handoff.tool_messages]
            values = dict(handoff.server_values)
            for call in handoff.client_calls:
                answer = answers.get(call["id"])
                if answer is None:
                    answer = {"role": "tool", "tool_call_id": call["id"],
                              "content": "Error: the caller sent no result for this call."}
                else:
                    values[call["id"]] = client_value(answer.get("content"))
                rebuilt.append(answer)
            self._state.results = [ToolResult.model_validate(item) for item in handoff.results]
            self._state.executed = [item.tool_name for item in self._state.results]
            self._state.carried = len(self._state.results)
            deferred = handoff.deferred
        else:
            assert resume.deferred_calls is not None
            rebuilt = attach_orphan_tool_results(messages, self.request.tools or [])
            start = trailing_tool_run(rebuilt)
            asked = rebuilt[start - 1] = dict(rebuilt[start - 1])
            known = {str(call.get("id")) for call in asked.get("tool_calls") or []} | set(answers)
            deferred = [call for call in resume.deferred_calls if call.id not in known]
            asked["tool_calls"] = [*(asked.get("tool_calls") or []), *(
                wire_call(ToolCallOut(id=call.id, name=call.name, arguments=json.dumps(call.arguments)))
                for call in deferred)]
            values = {call_id: client_value(answer.get("content")) for call_id, answer in answers.items()}
        rendered: dict[str, str] = {}
        runs = [_Run(call.id, call.name, call.arguments) for call in deferred]
        needs = {call.id: call.dependencies for call in deferred}
        context = self._context(turn=None, source="handoff")
        async for event in self._run(runs, needs, values, rendered, catalog, servers, parallel, context):
            yield event
        for waiting in deferred:
            rebuilt.append({"role": "tool", "tool_call_id": waiting.id,
                            "content": rendered.get(waiting.id, "Error: this call did not run.")})
        messages[:] = rebuilt

    async def _handoff(self, result: ChatResult, graph: TurnGraph, messages: list[dict[str, Any]], blocked: set[str],
                       values: dict[str, Any], rendered: dict[str, str], catalog: ToolCatalog,
                       servers: Servers) -> dict[str, Any]:
        """Save the loop state of a turn that asks for client tools; the structured handoff body."""
        await self._commits.wait()  # the saved state holds the results: their records first
        client_calls = [call for call in result.tool_calls if catalog.is_client(call.name)]
        client_ids = {call.id for call in client_calls}
        blockers: dict[str, list[str]] = {}

        def blocked_by(call_id: str, seen: frozenset[str] = frozenset()) -> list[str]:
            if call_id not in blockers:
                found: list[str] = []
                for dep in graph.needs[call_id]:
                    if dep in client_ids:
                        found.append(dep)
                    elif dep in blocked and dep not in seen:
                        found += blocked_by(dep, seen | {call_id})
                blockers[call_id] = list(dict.fromkeys(found))
            return blockers[call_id]

        deferred: list[DeferredCall] = []
        for call in result.tool_calls:
            if call.id in blocked:
                tool = catalog.mcp(call.name)
                assert tool is not None
                deferred.append(DeferredCall(id=call.id, name=call.name, arguments=substitute(graph.arguments[call.id], values),
                                             blocked_by=blocked_by(call.id), dependencies=graph.needs[call.id],
                                             server_name=tool.server, tool_name=tool.tool.name))
        pending, wire = [], []
        for call in client_calls:
            arguments = substitute(graph.arguments[call.id], values)
            if arguments != arguments_object(call.arguments):  # an MCP output was filled in
                call = ToolCallOut(id=call.id, name=call.name, arguments=json.dumps(arguments))
            wire.append(call)
            pending.append({"id": call.id, "name": call.name, "arguments": arguments,
                            "dependencies": [dep for dep in graph.needs[call.id] if dep in client_ids]})
        answered = [call for call in result.tool_calls if call.id not in client_ids and call.id not in blocked]
        replaced = self._resumed
        assert self.correlation_id is not None
        record = {
            "correlation_id": self.correlation_id,
            "conversation": messages,
            "assistant": assistant_message(result.content, result.tool_calls),
            "tool_messages": [{"role": "tool", "tool_call_id": call.id, "content": tool_answer(rendered, call)}
                              for call in answered],
            "server_values": values,
            "client_calls": [{"id": call.id, "name": call.name} for call in client_calls],
            "deferred": [call.model_dump() for call in deferred],
            "results": [item.model_dump() for item in self._state.results],
            "mcp_servers": without_credentials(self.request.mcp_servers if self.request.mcp_servers is not None
                                               else replaced.mcp_servers if replaced else None),
        }
        handoff = Handoff.model_validate(self._scrubber.value(record))
        await self.hub.handoffs.save(self.tenant, handoff, replaced=replaced)
        self._resumed = None
        body = self._body(result.content, wire, "tool_calls", servers)
        body["pending_tools"] = pending
        body["server_results"] = {item.call_id: item.result for item in self._state.results[self._state.carried:]}
        body["deferred"] = [call.model_dump(exclude_none=True) for call in deferred]
        body["correlation_id"] = self.correlation_id
        return body

    async def _exchange_over(self) -> None:
        if self._resumed is not None:
            await self.hub.handoffs.finish(self.tenant, self._resumed)
            self._resumed = None

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
                    async for piece in assemble(provider.stream(call, api_key=self.provider_key)):
                        if isinstance(piece, str):
                            produced = True
                            yield Text(piece)
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
        described: dict[str, Any] = {"id": call.id, "name": call.name, "arguments": arguments_or_text(call.arguments)}
        if tool is not None:
            described |= {"server_name": tool.server, "tool_name": tool.tool.name}
        return described

    def _body(self, content: str | None, tool_calls: list[ToolCallOut], finish_reason: str,
              servers: Servers) -> dict[str, Any]:
        state = self._state
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            message["tool_calls"] = [wire_call(call) for call in tool_calls]
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
