"""HTTP handlers of the OpenAI-compatible API: chat completions and models."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .bodies import decode_json, read_body
from .chat_request import ChatCompletionRequest
from .completion import Completion, Finished
from .errors import HubError
from .hub import Hub
from .idempotency import StoredResponse, fingerprint
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
    raw = await read_body(request)
    chat = ChatCompletionRequest.parse(decode_json(raw))
    tenant = "default"
    key = request.headers.get("idempotency-key")
    if key:
        stored = await hub.idempotency.claim(tenant, key, fingerprint(raw))
        if stored is not None:
            return _replay(stored)
    try:
        completion = Completion(hub, chat, tenant=tenant, provider_key=_provider_key(request))
    except HubError:
        if key:
            hub.idempotency.abandon(tenant, key)
        raise
    if chat.stream:
        return await _stream(hub, completion, tenant, key)
    try:
        final: Finished | None = None
        async for event in completion.events():
            if isinstance(event, Finished):
                final = event
    except HubError as exc:
        _settle_failure(hub, completion, tenant, key, exc)
        raise
    except BaseException:
        if key:
            hub.idempotency.abandon(tenant, key)
        raise
    assert final is not None
    body = json.dumps(final.body, separators=(",", ":"), ensure_ascii=False).encode()
    if key:
        hub.idempotency.complete(tenant, key, StoredResponse(status=200, body=body))
    return Response(body, media_type="application/json")


def _settle_failure(hub: Hub, completion: Completion, tenant: str, key: str | None, exc: HubError) -> None:
    """A failed attempt is kept only when MCP tools already ran (a retry must not run them again)."""
    if not key:
        return
    if completion.tools_ran:
        body = json.dumps(exc.to_body()).encode()
        hub.idempotency.complete(tenant, key, StoredResponse(status=exc.status, body=body))
    else:
        hub.idempotency.abandon(tenant, key)


async def _stream(hub: Hub, completion: Completion, tenant: str, key: str | None) -> Response:
    events = completion.events()
    try:
        first = await anext(events)  # failures before the first event are ordinary HTTP errors
    except HubError as exc:
        _settle_failure(hub, completion, tenant, key, exc)
        raise
    except BaseException:
        if key:
            hub.idempotency.abandon(tenant, key)
        raise

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
                    hub.idempotency.complete(tenant, key, StoredResponse(status=200, frames=recorded, streamed=True))
                else:  # the client went away: the model call and pending tool calls are cancelled
                    hub.idempotency.abandon(tenant, key)

    return StreamingResponse(frames(), media_type="text/event-stream", headers=STREAM_HEADERS)


async def list_models(request: Request) -> JSONResponse:
    hub: Hub = request.state.hub
    names, _failures = await hub.providers.list_models()
    data = [{"id": name, "object": "model", "created": 0, "owned_by": name.split("/", 1)[0]} for name in names]
    return JSONResponse({"object": "list", "data": data})

