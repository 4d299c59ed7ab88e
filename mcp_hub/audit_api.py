"""The audit trail's HTTP API: list, show, verify and export a tenant's tool-call records.

A caller sees only its own tenant's records (the tenant of its API key). Listing is
newest first with an opaque cursor (`next_cursor` → `?cursor=`); export is JSON lines,
oldest first, with the chain fields so that it can be checked elsewhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from .audit import AuditTrail, Filters
from .audit.record import micros
from .errors import NotFound, RequestError
from .hub import Hub

MAX_PAGE = 500
EPOCH = re.compile(r"^-?[0-9]{1,11}(\.[0-9]{1,9})?$")
RFC3339 = re.compile(r"^([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$")
EPOCH_LIMIT = 2.6e11  # seconds either side of 1970: past the years 1-9999 of RFC 3339


def _trail(request: Request) -> AuditTrail:
    hub: Hub = request.state.hub
    if not hub.settings.audit_enabled:
        raise NotFound("the audit trail is off on this hub (audit_enabled: false)", code="audit_disabled")
    return hub.audit


def _time(value: str, param: str) -> int:
    """RFC 3339 (`2026-11-26T12:00:00Z`) or epoch seconds (`1764158400.5`), as microseconds."""
    if EPOCH.fullmatch(value):
        seconds = float(value)
    elif found := RFC3339.fullmatch(value):
        date, hours, minutes, second, fraction, zone = found.groups()
        second = min(int(second), 59)  # a leap second counts as the one before
        zone = "+00:00" if zone in ("Z", "z") else zone
        text = f"{date}T{hours}:{minutes}:{second:02d}{(fraction or '')[:7]}{zone}"
        try:
            seconds = datetime.fromisoformat(text).timestamp()
        except ValueError:
            raise RequestError(f"{param} is not a valid date", param=param) from None
    else:
        raise RequestError(f"{param} must be an RFC 3339 time (2026-11-26T12:00:00Z) or epoch seconds", param=param)
    if not -EPOCH_LIMIT <= seconds <= EPOCH_LIMIT:
        raise RequestError(f"{param} is out of range", param=param)
    return micros(seconds)


def _int(value: str, param: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise RequestError(f"{param} must be an integer", param=param) from None
    if not low <= number <= high:
        raise RequestError(f"{param} must be between {low} and {high}", param=param)
    return number


def _filters(request: Request) -> Filters:
    query = request.query_params
    is_error = query.get("is_error")
    if is_error is not None and is_error not in ("true", "false"):
        raise RequestError("is_error must be true or false", param="is_error")
    return Filters(server=query.get("server"), tool=query.get("tool"),
                   is_error=None if is_error is None else is_error == "true",
                   since=_time(query["since"], "since") if "since" in query else None,
                   until=_time(query["until"], "until") if "until" in query else None,
                   completion_id=query.get("completion_id"), correlation_id=query.get("correlation_id"))


async def list_tool_calls(request: Request) -> JSONResponse:
    trail = _trail(request)
    limit = _int(request.query_params.get("limit", "50"), "limit", 1, MAX_PAGE)
    cursor = request.query_params.get("cursor")
    before = _int(cursor, "cursor", 1, 10**18) if cursor is not None else None
    page, next_seq = await trail.store.page(request.state.principal.tenant, _filters(request), limit=limit, before=before)
    return JSONResponse({"object": "list", "data": [record.view() for record in page], "has_more": next_seq is not None,
                         "next_cursor": str(next_seq) if next_seq is not None else None})


async def get_tool_call(request: Request) -> JSONResponse:
    trail = _trail(request)
    record = await trail.store.get(request.state.principal.tenant, request.path_params["id"])
    if record is None:
        raise NotFound(f"no audit record {request.path_params['id']!r}", code="audit_record_not_found", param="id")
    return JSONResponse(record.view())


async def verify(request: Request) -> JSONResponse:
    report = await _trail(request).store.verify(request.state.principal.tenant)
    return JSONResponse(report.view())


async def export(request: Request) -> StreamingResponse:
    trail, filters = _trail(request), _filters(request)
    tenant = request.state.principal.tenant

    async def lines() -> AsyncIterator[bytes]:
        async for record in trail.store.export(tenant, filters):
            yield json.dumps(record.view(), ensure_ascii=False).encode() + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson",
                             headers={"content-disposition": f'attachment; filename="audit-{tenant}.jsonl"'})
