"""The HTTP API: one route table, thin handlers over the `Hub`, errors in the OpenAI shape."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import __version__, audit_api, console, marketplace_api, openapi
from .api_models import ToolCallRequest
from .authentication import Authentication
from .bodies import json_body, validated
from .chat_api import chat_completions, deferred_completion, list_models
from .errors import CredentialError, Forbidden, HubError, RequestError, ResolutionError, ServerError
from .executor import CallContext
from .hub import Hub, parse_credentials
from .metrics import CONTENT_TYPE
from .observability import Observability
from .origins import AllowedOrigins, CrossSiteGuard
from .ratelimit import RateLimiting
from .registry import Entry, Registry
from .settings import Settings
from .views import entry_detail, entry_summary, tool_view, with_source

log = logging.getLogger("mcp_hub")


def _hub(request: Request) -> Hub:
    return request.state.hub


def _tenant(request: Request) -> str:
    return request.state.principal.tenant


async def openapi_document(request: Request) -> JSONResponse:
    return JSONResponse(openapi.document(_hub(request).providers.prefixes))


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "version": __version__, **_hub(request).status()})


async def jwks(request: Request) -> JSONResponse:
    """The public key clients encrypt credentials to (PROTOCOL.md section 4); no auth."""
    document = await _hub(request).keyring.jwks()
    return JSONResponse(document, headers={"cache-control": "public, max-age=60"})


async def list_servers(request: Request) -> JSONResponse:
    hub = _hub(request)
    entries = hub.registry.entries()
    tag = request.query_params.get("tag")
    if tag:
        entries = [entry for entry in entries if tag in entry.tags]
    if request.query_params.get("include_unlisted") not in ("true", "1"):
        entries = [entry for entry in entries if entry.slug not in hub.registry.unlisted]
    query = (request.query_params.get("q") or "").strip().lower()
    if query:
        entries = [entry for entry in entries
                   if query in entry.slug or query in entry.description.lower() or any(query in t for t in entry.tags)]
    return JSONResponse({"object": "list", "data": [with_source(hub.registry, entry_summary(entry)) for entry in entries]})


async def get_server(request: Request) -> JSONResponse:
    hub = _hub(request)
    entry: Entry = hub.entry(f"{request.path_params['org']}/{request.path_params['name']}")
    version = request.query_params.get("version")
    detail = with_source(hub.registry, entry_detail(entry))
    key = entry.match(version)
    if key is None:
        raise RequestError(f"{entry.slug} has no version matching {version!r}", code="version_not_found", param="version")
    live: dict[str, Any] = {"version": key}
    servers = hub.open_servers({"slug": entry.slug, "version": key}, tenant=_tenant(request))
    tools = await hub.list_tools(servers)
    if entry.slug in tools:
        live["tools"] = [tool_view(tool) for tool in tools[entry.slug]]
        if (withheld := servers.errors.get(entry.slug)) is not None:  # tool pinning withholds some
            live["error"] = withheld.to_entry()
    else:
        error = servers.errors.get(entry.slug)
        live["error"] = error.to_entry() if error else None
    detail["live"] = live
    return JSONResponse(detail)


async def call_tool(request: Request) -> JSONResponse:
    hub = _hub(request)
    body: ToolCallRequest = validated(ToolCallRequest, await json_body(request, hub.settings.max_body_bytes))
    credentials = parse_credentials(body.credentials)
    principal = request.state.principal
    context = CallContext(tenant=principal.tenant, key_id=principal.key_id, request_id=f"call-{uuid.uuid4().hex[:24]}",
                          source="direct")
    result, servers = await hub.call_tool(body.server, body.tool, body.arguments, credentials, tenant=principal.tenant,
                                          context=context)
    for error in servers.errors.values():
        # The caller named something that cannot be served: a 4xx. A server that could not be
        # reached is reported like any failed call: a record with `is_error` (and the server error).
        if isinstance(error, ResolutionError | CredentialError):
            raise error
    record = result.model_dump(exclude={"call_id"})
    if servers.errors:
        record["mcp_server_errors"] = servers.error_entries()
    return JSONResponse(record)


async def metrics(request: Request) -> Response:
    """Prometheus metrics; admin keys only (or an open hub with `anonymous_admin`): they span every tenant."""
    if request.state.principal.role != "admin":
        raise Forbidden("GET /metrics needs an admin API key")
    return Response(_hub(request).metrics.render(), media_type=CONTENT_TYPE)


async def _error_response(request: Request, exc: Exception) -> JSONResponse:
    # For the request metrics (`Observability`): the error code, a name and never a value.
    request.state.error_code = exc.code if isinstance(exc, HubError) else \
        f"http_{exc.status_code}" if isinstance(exc, HTTPException) else "internal_error"
    if isinstance(exc, ServerError):
        body = exc.to_body()
        body["error"]["message"] = body["message"] = f"{exc.message}. {exc.recommendation}"
        body["recommendation"] = exc.recommendation
        return JSONResponse(body, status_code=exc.status)
    if isinstance(exc, HubError):
        return JSONResponse(exc.to_body(), status_code=exc.status, headers=exc.headers())
    if isinstance(exc, HTTPException):
        codes = {404: ("not_found", "invalid_request_error"), 405: ("method_not_allowed", "invalid_request_error")}
        code, kind = codes.get(exc.status_code, ("http_error", "invalid_request_error"))
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        error = {"message": message, "type": kind, "param": None, "code": code}
        return JSONResponse({"error": error, **error}, status_code=exc.status_code, headers=exc.headers)
    log.error("unhandled error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    error = {"message": "internal error", "type": "server_error", "param": None, "code": "internal_error"}
    return JSONResponse({"error": error, **error}, status_code=500)


async def servers_collection(request: Request) -> Response:
    """`/v1/servers`: GET lists the marketplace, POST publishes (one route, so `Allow` names both)."""
    return await (marketplace_api.register_server if request.method == "POST" else list_servers)(request)


async def server_item(request: Request) -> Response:
    """`/v1/servers/{org}/{name}`: GET shows one server, PATCH changes a published one."""
    return await (marketplace_api.update_server if request.method == "PATCH" else get_server)(request)


class GatewayEndpoint:
    """`/mcp/{org}/{name}`: the MCP gateway (a raw ASGI endpoint: the SDK's transport answers)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["state"]["hub"].gateway.handle(scope, receive, send)


ROUTES = [
    # The hot path first: Starlette tries the routes in order.
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/openapi.json", openapi_document, methods=["GET"]),
    Route("/.well-known/jwks.json", jwks, methods=["GET"]),
    Route("/v1/servers", servers_collection, methods=["GET", "POST"]),
    Route("/v1/servers/{org}/{name}", server_item, methods=["GET", "PATCH"]),
    Route("/v1/tools/call", call_tool, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/chat/deferred-completion/{request_id}", deferred_completion, methods=["GET"]),
    Route("/v1/audit/tool-calls", audit_api.list_tool_calls, methods=["GET"]),
    Route("/v1/audit/tool-calls/{id}", audit_api.get_tool_call, methods=["GET"]),
    Route("/v1/audit/verify", audit_api.verify, methods=["GET"]),
    Route("/v1/audit/export", audit_api.export, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/mcp/{org}/{name}", GatewayEndpoint(), methods=["GET", "POST", "DELETE"]),
    Route("/console", console.console_root, methods=["GET"]),
    Route("/console/", console.console_file, methods=["GET"]),
    Route("/console/{file}", console.console_file, methods=["GET"]),
    Route("/v1/pins", marketplace_api.list_pins, methods=["GET"]),
    Route("/v1/servers/import", marketplace_api.import_server, methods=["POST"]),
    Route("/v1/servers/{org}/{name}/versions", marketplace_api.add_version, methods=["POST"]),
    Route("/v1/servers/{org}/{name}/versions/{version}", marketplace_api.update_version, methods=["PATCH"]),
    Route("/v1/pins/approve", marketplace_api.approve_pins, methods=["POST"]),
]


def create_app(settings: Settings, registry: Registry | None = None) -> Starlette:
    """The ASGI app; the hub's resources live exactly as long as its lifespan."""
    hub = Hub(settings, registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with hub:
            yield {"hub": hub}

    # Authentication first: the rate limit counts per API key.
    # Observability outermost: every response (a 401 too) gets an X-Request-Id and is counted.
    # The cross-site guard before authentication: a foreign page never reaches a handler of a keyless hub.
    middleware = [Middleware(Observability, metrics=hub.metrics, routes=ROUTES, access_lines=settings.log_format == "json",
                             instance=hub.instance),
                  Middleware(CrossSiteGuard, allowed=AllowedOrigins(settings), keys=lambda: hub.keys, routes=ROUTES),
                  Middleware(Authentication, keys=lambda: hub.keys, anonymous_admin=settings.anonymous_admin),
                  Middleware(RateLimiting, limiter=lambda: hub.limiter)]
    return Starlette(routes=ROUTES, lifespan=lifespan, middleware=middleware,
                     exception_handlers={HubError: _error_response, HTTPException: _error_response,
                                         Exception: _error_response})
