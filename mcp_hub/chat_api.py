"""HTTP handlers of the OpenAI-compatible API: chat completions and models."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from . import jsoncodec
from .bodies import decode_json, read_body
from .chat_request import ChatCompletionRequest
from .completion import Completion
from .errors import HubError, NotFound, RequestTimeout
from .events import Event, Finished, ToolActivity
from .hub import Hub
from .idempotency import StoredResponse, fingerprint
from .limits import check_client_tools, check_servers
from .streaming import ChunkStream

STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _provider_key(request: Request) -> SecretStr | None:
    value = request.headers.get("x-provider-key")
    return SecretStr(value) if value else None


def _replay(stored: StoredResponse) -> Response:
    headers = {"idempotent-replayed": "true"}
    if stored.streamed:
        async def frames() -> AsyncIterator[str]:
            for frame in stored.frames:
                yield frame

        return StreamingResponse(frames(), media_type="text/event-stream", headers=STREAM_HEADERS | headers)
    return Response(stored.body, status_code=stored.status, media_type="application/json", headers=headers)


async def chat_completions(request: Request) -> Response:
    hub: Hub = request.state.hub
    settings = hub.settings
    raw = await read_body(request, settings.max_body_bytes)
    chat = ChatCompletionRequest.parse(decode_json(raw))
    check_servers(chat.mcp_servers, settings.max_servers_per_request)
    check_client_tools(chat.tools, settings.max_tools_per_request)
    tenant = request.state.principal.tenant
    key = request.headers.get("idempotency-key")
    if key:
        stored = await hub.idempotency.claim(tenant, key, fingerprint(raw))
        if stored is not None:
            return _replay(stored)
    async with _settled(hub, None, tenant, key):
        if chat.deferred and chat.stream:  # the result is fetched whole, later: nothing to stream
            chat = chat.model_copy(update={"stream": False})
        completion = Completion(hub, chat, tenant=tenant, provider_key=_provider_key(request),
                                key_id=request.state.principal.key_id,
                                source="deferred" if chat.deferred else "completion")
        if chat.deferred:
            return await _defer(hub, completion, tenant, key)
    # The time budget covers every turn and tool call, not reading the body.
    deadline = anyio.current_time() + settings.request_timeout
    if chat.stream:
        return await _stream(hub, completion, within_budget(completion.events(), deadline, settings.request_timeout),
                             tenant, key)
    async with _settled(hub, completion, tenant, key):
        final = await final_event(completion.events(), deadline, settings.request_timeout)
    body = jsoncodec.dumps(final.body)
    if key:
        await hub.idempotency.complete(tenant, key, StoredResponse(status=200, body=body))
    return Response(body, media_type="application/json")


async def _defer(hub: Hub, completion: Completion, tenant: str, key: str | None) -> Response:
    """Start `completion` in the hub's background task group; answer 202 with its request id."""
    budget = hub.settings.request_timeout

    async def work() -> tuple[int, dict[str, Any]]:
        try:
            final = await final_event(completion.events(), anyio.current_time() + budget, budget)
            return 200, final.body
        except HubError as exc:
            return exc.status, exc.to_body()

    request_id = await hub.deferred.start(tenant, work)
    body = json.dumps({"id": request_id, "request_id": request_id, "object": "chat.completion.deferred",
                       "status": "running"}).encode()
    if key:
        await hub.idempotency.complete(tenant, key, StoredResponse(status=202, body=body))
    return Response(body, status_code=202, media_type="application/json",
                    headers={"location": f"/v1/chat/deferred-completion/{request_id}"})


async def deferred_completion(request: Request) -> Response:
    """`GET /v1/chat/deferred-completion/{request_id}`: 202 running, 200 done, 404 unknown or expired."""
    hub: Hub = request.state.hub
    request_id = request.path_params["request_id"]
    record = await hub.deferred.read(request.state.principal.tenant, request_id) if len(request_id) <= 128 else None
    if record is None:
        raise NotFound("no deferred completion with this request_id (unknown, expired, or its hub instance stopped)",
                       code="deferred_not_found", param="request_id")
    if record.get("status") == "running":
        body = {"id": request_id, "request_id": request_id, "object": "chat.completion.deferred", "status": "running"}
        return JSONResponse(body, status_code=202, headers={"retry-after": "1"})
    return JSONResponse(record["body"], status_code=int(record["status_code"]))


async def within_budget(events: AsyncIterator[Event], deadline: float, budget: float) -> AsyncIterator[Event]:
    """`events`, raising `RequestTimeout` once `deadline` (anyio clock) has passed.

    The deadline applies to each wait for the next event, never across a `yield`: a cancel
    scope left open while suspended would cancel whatever the consumer awaits meanwhile.
    """
    executed: list[str] = []
    while True:
        with anyio.CancelScope(deadline=deadline) as scope:
            try:
                event = await anext(events)
            except StopAsyncIteration:
                return
        if scope.cancelled_caught:
            await _close(events)
            raise _over_budget(budget, executed)
        if isinstance(event, ToolActivity) and event.type != "tool_call.started":
            executed.append(event.tool)
        yield event


async def final_event(events: AsyncIterator[Event], deadline: float, budget: float) -> Finished:
    """The `Finished` event that ends `events`, raising `RequestTimeout` once `deadline` has passed.

    Nothing else runs between the events here, so one cancel scope spans them all.
    """
    executed: list[str] = []
    final: Finished | None = None
    with anyio.CancelScope(deadline=deadline) as scope:
        async for event in events:
            if isinstance(event, Finished):
                final = event
            elif isinstance(event, ToolActivity) and event.type != "tool_call.started":
                executed.append(event.tool)
    if scope.cancelled_caught:
        await _close(events)
        raise _over_budget(budget, executed)
    assert final is not None
    return final


def _over_budget(budget: float, executed: list[str]) -> RequestTimeout:
    done = f"; {len(executed)} MCP tool call(s) had completed: {', '.join(executed)}" if executed else \
        "; no MCP tool had completed"
    return RequestTimeout(f"the request exceeded its time budget of {budget:g} s (request_timeout){done}",
                          tools_executed=executed)


async def _close(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            await aclose()


@contextlib.asynccontextmanager
async def _settled(hub: Hub, completion: Completion | None, tenant: str, key: str | None) -> AsyncIterator[None]:
    """Settle the Idempotency-Key of a failing attempt.

    A failure is kept only when MCP tools already ran (a retry must not run them again);
    otherwise, and on cancellation, the key is released so that a retry runs afresh.
    """
    try:
        yield
    except HubError as exc:
        if key and completion is not None and completion.tools_ran:
            body = json.dumps(exc.to_body()).encode()
            await hub.idempotency.complete(tenant, key, StoredResponse(status=exc.status, body=body))
        elif key:
            await hub.idempotency.abandon(tenant, key)
        raise
    except BaseException:
        if key:
            await hub.idempotency.abandon(tenant, key)
        raise


async def _stream(hub: Hub, completion: Completion, events: AsyncIterator[Event], tenant: str,
                  key: str | None) -> Response:
    async with _settled(hub, completion, tenant, key):
        first = await anext(events)  # failures before the first event are ordinary HTTP errors

    async def with_first() -> AsyncIterator[Any]:
        yield first
        async for event in events:
            yield event

    chunks = ChunkStream(completion)

    async def frames() -> AsyncIterator[str]:
        recorded: list[str] = []
        finished = False
        try:
            async for frame in chunks.frames(with_first()):
                recorded.append(frame)
                yield frame
            finished = True
        finally:
            if key:
                if finished:
                    await hub.idempotency.complete(tenant, key, StoredResponse(status=200, frames=recorded, streamed=True))
                else:  # the client went away: the model call and pending tool calls are cancelled
                    await hub.idempotency.abandon(tenant, key)

    return StreamingResponse(frames(), media_type="text/event-stream", headers=STREAM_HEADERS)


async def list_models(request: Request) -> JSONResponse:
    hub: Hub = request.state.hub
    names, _failures = await hub.providers.list_models()
    data = [{"id": name, "object": "model", "created": 0, "owned_by": name.split("/", 1)[0]} for name in names]
    return JSONResponse({"object": "list", "data": data})

