"""The marketplace's HTTP API: tool pins (review and approval); registrations (publishing servers).

Writes need a key with the right role: approving pins needs `admin`; registering needs
`admin` or `publisher` (see `registrations.py` for the per-org rule).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from .apikeys import Principal
from .bodies import json_body, validated
from .errors import Forbidden, NotFound, RequestError
from .hub import Hub
from .registrations import NewVersionBody, RegistrationBody
from .server_json import import_server_json


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
        raise NotFound(f"{slug} has no version {version!r}", code="version_not_found", param=param)
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


# -- registrations (publishing) ------------------------------------------------------------


def _slug(request: Request) -> str:
    return f"{request.path_params['org']}/{request.path_params['name']}"


async def _body(request: Request) -> Any:
    return await json_body(request, _hub(request).settings.max_body_bytes)


async def register_server(request: Request) -> JSONResponse:
    """`POST /v1/servers`: a new server with its first version (201)."""
    hub = _hub(request)
    body = validated(RegistrationBody, await _body(request))
    result = await hub.registrations.register(body, _principal(request))
    return JSONResponse(result, status_code=201)


async def import_server(request: Request) -> JSONResponse:
    """`POST /v1/servers/import`: a server.json of the official MCP Registry, registered (201)."""
    hub = _hub(request)
    data = await _body(request)
    if not isinstance(data, dict) or "server_json" not in data:
        raise RequestError("send {\"server_json\": {...}, \"slug\"?, \"prefer\"?, \"variables\"?, \"tags\"?, "
                           "\"network\"?, \"credentials\"?}", param="server_json")
    variables = data.get("variables") or {}
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise RequestError("`variables` must be an object of strings", param="variables")
    imported = import_server_json(data["server_json"], slug=data.get("slug"), prefer=data.get("prefer") or "remote",
                                  variables=variables, tags=data.get("tags"), network=data.get("network") or "none")
    body = validated(RegistrationBody, {**imported.body, "credentials": data.get("credentials")})
    result = await hub.registrations.register(body, _principal(request))
    return JSONResponse({**result, "notes": imported.notes}, status_code=201)


async def add_version(request: Request) -> JSONResponse:
    """`POST /v1/servers/{org}/{name}/versions`: one more immutable version (201)."""
    hub = _hub(request)
    body = validated(NewVersionBody, await _body(request))
    result = await hub.registrations.add_version(_slug(request), body, _principal(request))
    return JSONResponse(result, status_code=201)


async def update_version(request: Request) -> JSONResponse:
    """`PATCH /v1/servers/{org}/{name}/versions/{version}`: `{"deprecated": bool}`."""
    hub = _hub(request)
    data = await _body(request)
    if not isinstance(data, dict) or set(data) != {"deprecated"} or not isinstance(data["deprecated"], bool):
        raise RequestError("versions are immutable; only {\"deprecated\": true|false} can be set", param="deprecated")
    slug, version = _slug(request), request.path_params["version"]
    await hub.registrations.deprecate(slug, version, data["deprecated"], _principal(request))
    return JSONResponse({"slug": slug, "version": version, "deprecated": data["deprecated"]})


async def update_server(request: Request) -> JSONResponse:
    """`PATCH /v1/servers/{org}/{name}`: `unlisted`, `description`, `tags`."""
    hub = _hub(request)
    data = await _body(request)
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object", code="invalid_request")
    slug = _slug(request)
    await hub.registrations.update(slug, data, _principal(request))
    return JSONResponse({"slug": slug, **data})
