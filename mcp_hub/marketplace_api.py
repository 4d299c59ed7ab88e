"""The marketplace's HTTP API: tool pins (review and approval); registrations (publishing servers).

Writes need a key with the right role: approving pins needs `admin`; registering needs
`admin` or `publisher` (see `registrations.py` for the per-org rule).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from .apikeys import Principal
from .bodies import json_body
from .errors import Forbidden, RequestError
from .hub import Hub


def _hub(request: Request) -> Hub:
    return request.state.hub


def _principal(request: Request) -> Principal:
    return request.state.principal


def require_admin(principal: Principal, action: str) -> None:
    if principal.role != "admin":
        raise Forbidden(f"{action} needs an API key with the admin role (this key's role: {principal.role})")


def _server_version(hub: Hub, ref: Any, *, param: str = "server") -> tuple[str, str | None]:
    """`org/name@1.0.0` (or `org/name`) -> (slug, exact version key or None); unknown ones are 404."""
    if not isinstance(ref, str) or not ref:
        raise RequestError("`server` must be a string like org/name@1.0.0", param=param)
    slug, _, version = ref.partition("@")
    entry = hub.entry(slug)
    if not version:
        return slug, None
    key = entry.match(version)
    if key is None or key not in entry.versions or (version not in entry.versions and key != version.lstrip("vV")):
        raise RequestError(f"{slug} has no version {version!r}", code="version_not_found", param=param)
    return slug, key


async def list_pins(request: Request) -> JSONResponse:
    hub = _hub(request)
    slug, version = _server_version(hub, request.query_params.get("server"))
    return JSONResponse({"object": "list", "data": await hub.pins.listing(slug, version)})


async def approve_pins(request: Request) -> JSONResponse:
    hub = _hub(request)
    principal = _principal(request)
    require_admin(principal, "approving tool definitions")
    body = await json_body(request, hub.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object", code="invalid_request")
    slug, version = _server_version(hub, body.get("server"))
    if version is None:
        raise RequestError("name the exact version to approve: org/name@1.0.0", param="server")
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, str) for t in tools)):
        raise RequestError("`tools` must be a list of tool names", param="tools")
    approved = await hub.approve_pins(slug, version, tools, approved_by=principal.key_id or "anonymous")
    return JSONResponse({"server": f"{slug}@{version}", "approved": approved})
