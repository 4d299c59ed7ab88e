"""The MCP gateway: every registry server, re-exposed to MCP clients at `/mcp/{org}/{name}`.

One low-level SDK `Server` and one streamable-HTTP session manager (opened in the
hub's lifespan) serve every path; each request names its server in its own path
(`/mcp/acme/search`, or `/mcp/acme/search@^1.2` for a version range), its tenant through
the hub API key the authentication middleware checked, and its credentials in headers:

- `X-Hub-Credentials`: the JSON of a chat completion's `credentials` field (one
  `{connection_name, values}` object or a list), bound to the server's connections;
- `X-Hub-Encrypted-Credentials`: `{connection_name: envelope}`, envelopes sealed to the
  key at `/.well-known/jwks.json`, as `mcp_servers[i].credentials` carries them.

Handlers proxy to the hub's pooled session for (tenant, server, credentials): tool calls
go through `Hub.call_tool` with a `CallContext(source="gateway")`, so they are limited,
scrubbed and audited like every other call, and a `Relay` (see `backchannel.py`) carries
the upstream server's progress, logs, sampling and elicitation requests to this client.
Tools, resources, prompts and completions pass through as the server sent them (with
credentials scrubbed); tools withheld by pinning are neither listed nor callable.
Sessions are bound to the tenant that opened them and capped (`gateway_sessions.py`).
"""

from __future__ import annotations

import json
import logging
import uuid
import warnings
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import mcp.types as types
from mcp import MCPError
from mcp.server import Server, ServerRequestContext
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.message import ServerMessageMetadata
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS
from pydantic import BaseModel
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from . import __version__, jsoncodec
from .apikeys import ANONYMOUS, Principal
from .bodies import read_body
from .credentials import Credential
from .errors import CredentialError, RequestError, ResolutionError, ServerError
from .executor import CallContext
from .gateway_sessions import TenantSessions, bind_tenant, opens_session
from .sessions import ManagedSession

CREDENTIALS_HEADER = "x-hub-credentials"
ENCRYPTED_CREDENTIALS_HEADER = "x-hub-encrypted-credentials"
ResultT = TypeVar("ResultT", bound=BaseModel)
log = logging.getLogger("mcp_hub.gateway")


@dataclass(frozen=True)
class GatewayRoute:
    """What one gateway request is for: the server spec, its instance name, credentials, caller."""

    spec: dict[str, Any]
    name: str
    credentials: list[Credential]
    principal: Principal


def _header_json(request: Request, header: str) -> Any:
    raw = request.headers.get(header)
    if raw is None:
        return None
    try:
        return jsoncodec.loads_within(raw)
    except ValueError:  # not JSON, or nested too deep
        raise RequestError(f"the {header} header is not JSON", param=header) from None


def route_of(request: Request) -> GatewayRoute:
    """The server, version, credentials and caller of a gateway request (raises RequestError)."""
    from .hub import parse_credentials

    org, name = request.path_params["org"], request.path_params["name"]
    name, _, version = name.partition("@")
    slug = f"{org}/{name}"
    spec: dict[str, Any] = {"slug": slug}
    if version:
        spec["version"] = version
    encrypted = _header_json(request, ENCRYPTED_CREDENTIALS_HEADER)
    if encrypted is not None:
        if not isinstance(encrypted, dict) or not all(isinstance(v, str) for v in encrypted.values()):
            raise RequestError(f"{ENCRYPTED_CREDENTIALS_HEADER} must be a JSON object of connection name -> envelope",
                               param=ENCRYPTED_CREDENTIALS_HEADER)
        spec["credentials"] = encrypted
    credentials = parse_credentials(_header_json(request, CREDENTIALS_HEADER), param=CREDENTIALS_HEADER)
    principal = getattr(request.state, "principal", ANONYMOUS)
    return GatewayRoute(spec=spec, name=slug, credentials=credentials, principal=principal)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields `body` (already read) first, then what `receive` says (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replaying() -> Message:
        return pending.pop() if pending else await receive()

    return replaying


def _mcp_error(error: ServerError) -> MCPError:
    """A server the hub cannot serve, as a JSON-RPC error naming the hub's code and advice."""
    kind = INVALID_PARAMS if isinstance(error, ResolutionError | CredentialError) else INTERNAL_ERROR
    message = f"{error.message}. {error.recommendation}" if error.recommendation else error.message
    return MCPError(kind, message, {"code": error.code, "server": error.server})


class DownstreamRelay:
    """The gateway client of one `tools/call`: where its server's back-channel traffic goes."""

    def __init__(self, ctx: ServerRequestContext[Any, Any]) -> None:
        self._ctx = ctx
        self.result: types.CallToolResult | None = None
        self._scrub: Any = None

    def _related(self) -> ServerMessageMetadata:
        return ServerMessageMetadata(related_request_id=self._ctx.request_id)

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        try:
            await self._ctx.session.report_progress(progress, total, message)  # a no-op unless the client asked
        except Exception as exc:  # boundary: a client gone mid-call must not disturb the shared upstream session
            log.debug("gateway: progress not relayed: %s", type(exc).__name__)

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        try:
            await self._ctx.session.send_notification(types.LoggingMessageNotification(params=params),
                                                      related_request_id=self._ctx.request_id)
        except Exception as exc:  # boundary: as above
            log.debug("gateway: log message not relayed: %s", type(exc).__name__)

    async def sampling(self, params: types.CreateMessageRequestParams) -> types.CreateMessageResult | types.ErrorData:
        if not self._ctx.session.check_client_capability(types.ClientCapabilities(sampling=types.SamplingCapability())):
            return types.ErrorData(code=INVALID_PARAMS, message="the gateway's client does not support sampling")
        try:
            return await self._ctx.session.send_request(types.CreateMessageRequest(params=params),
                                                        types.CreateMessageResult, metadata=self._related())
        except MCPError as exc:
            return exc.error
        except Exception as exc:  # boundary: the client went away, or answered nonsense
            return types.ErrorData(code=INTERNAL_ERROR, message=f"the gateway's client did not answer ({type(exc).__name__})")

    async def elicitation(self, params: types.ElicitRequestParams) -> types.ElicitResult | types.ErrorData:
        if not self._ctx.session.check_client_capability(types.ClientCapabilities(elicitation=types.ElicitationCapability())):
            return types.ElicitResult(action="decline")
        try:
            return await self._ctx.session.send_request(types.ElicitRequest(params=params), types.ElicitResult,
                                                        metadata=self._related())
        except MCPError as exc:
            return exc.error
        except Exception as exc:  # boundary: as above
            return types.ErrorData(code=INTERNAL_ERROR, message=f"the gateway's client did not answer ({type(exc).__name__})")

    def capture(self, result: types.CallToolResult, scrub: Any) -> None:
        self.result, self._scrub = result, scrub

    def scrubbed(self) -> types.CallToolResult | None:
        if self.result is None:
            return None
        dumped = self.result.model_dump(mode="json", by_alias=True, exclude_none=True)
        return types.CallToolResult.model_validate(self._scrub(dumped), by_name=False)


class Gateway:
    """The gateway's SDK server and its session manager; the hub opens `run()` in its lifespan."""

    def __init__(self, hub: Any) -> None:
        self._hub = hub
        with warnings.catch_warnings():  # logging/setLevel is deprecated in 2026-07-28; older clients send it
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            self.server: Server[Any] = Server(
                "mcp-hub-gateway", version=__version__,
                on_list_tools=self._list_tools, on_call_tool=self._call_tool,
                on_list_resources=self._list_resources, on_list_resource_templates=self._list_resource_templates,
                on_read_resource=self._read_resource, on_subscribe_resource=self._subscribe,
                on_unsubscribe_resource=self._unsubscribe, on_list_prompts=self._list_prompts,
                on_get_prompt=self._get_prompt, on_completion=self._complete, on_set_logging_level=self._set_level)
        # Host and Origin are checked for every route by `origins.CrossSiteGuard`; the SDK's own check
        # (same rule, plain-text answers) is off. Its Content-Type check for POST stays on regardless.
        settings = hub.settings
        self.manager = TenantSessions(self.server,
                                      security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
                                      per_tenant=settings.gateway_sessions_per_tenant,
                                      max_sessions=settings.gateway_sessions_max,
                                      session_idle_timeout=settings.gateway_session_idle_timeout)

    def run(self) -> AbstractAsyncContextManager[None]:
        return self.manager.run()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request; an unknown server is a 404 before any MCP traffic."""
        request = Request(scope, receive)
        route = route_of(request)
        entry = self._hub.entry(route.name)
        version = route.spec.get("version")
        if version is not None and entry.match(version) is None:
            raise RequestError(f"{entry.slug} has no version matching {version!r}", code="version_not_found",
                               param="version")
        tenant = route.principal.tenant
        bind_tenant(scope, tenant)  # another tenant's session id is 404 here, as if it did not exist
        refusal = self.manager.refusal(tenant) if opens_session(scope) else None
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if scope["method"] == "POST":
            # Read the body here, capped: a client that leaves mid-body then ends the request quietly
            # (`ClientDisconnect`, see observability.py), where the SDK would log it as an error.
            receive = _replay(await read_body(request, self._hub.settings.max_body_bytes), receive)
        await self.manager.handle_request(scope, receive, send)

    # -- handlers ------------------------------------------------------------------------------

    def _route(self, ctx: ServerRequestContext[Any, Any]) -> GatewayRoute:
        if not isinstance(ctx.request, Request):
            raise MCPError(INTERNAL_ERROR, "the gateway serves HTTP requests only")
        try:
            return route_of(ctx.request)
        except RequestError as exc:
            raise MCPError(INVALID_PARAMS, exc.message) from None

    def _session(self, route: GatewayRoute) -> ManagedSession:
        servers = self._hub.open_servers(route.spec, route.credentials, tenant=route.principal.tenant)
        if route.name in servers.errors:
            raise _mcp_error(servers.errors[route.name])
        return servers.sessions[route.name]

    async def _forward(self, ctx: ServerRequestContext[Any, Any], request: Any, result_type: type[ResultT]) -> ResultT:
        """Send `request` on the caller's pooled session and pass the answer back, scrubbed."""
        session = self._session(self._route(ctx))
        try:
            client, _ = await session.client(self._hub.settings.connect_timeout)
        except ServerError as exc:
            raise _mcp_error(exc) from None
        result = await client.session.send_request(request, result_type,
                                                   request_read_timeout_seconds=self._timeout(session))
        if not session.scrubber:
            return result
        dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        return result_type.model_validate(session.scrubber.value(dumped), by_name=False)

    def _timeout(self, session: ManagedSession) -> float:
        return session.target.limits.call_timeout or self._hub.settings.call_timeout

    async def _list_tools(self, ctx: ServerRequestContext[Any, Any],
                          params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        route = self._route(ctx)
        servers = self._hub.open_servers(route.spec, route.credentials, tenant=route.principal.tenant)
        tools = await self._hub.list_tools(servers)
        if route.name not in tools:
            error = servers.errors.get(route.name)
            raise _mcp_error(error) if error else MCPError(INTERNAL_ERROR, f"server {route.name!r} is not available")
        return types.ListToolsResult(tools=tools[route.name])

    async def _call_tool(self, ctx: ServerRequestContext[Any, Any],
                         params: types.CallToolRequestParams) -> types.CallToolResult:
        from .backchannel import current_relay

        route = self._route(ctx)
        principal = route.principal
        context = CallContext(tenant=principal.tenant, key_id=principal.key_id,
                              request_id=f"gw-{uuid.uuid4().hex[:24]}", source="gateway")
        relay = DownstreamRelay(ctx)
        token = current_relay.set(relay)
        try:
            result, servers = await self._hub.call_tool(route.spec, params.name, params.arguments or {},
                                                        route.credentials, tenant=principal.tenant, context=context)
        finally:
            current_relay.reset(token)
        for error in servers.errors.values():
            if isinstance(error, ResolutionError | CredentialError):
                raise _mcp_error(error)
        passed = relay.scrubbed()
        if passed is not None and result.error_code is None and not result.truncated:
            return passed
        text = result.result if isinstance(result.result, str) else json.dumps(result.result, ensure_ascii=False)
        return types.CallToolResult(content=[types.TextContent(text=text)], is_error=result.is_error)

    async def _list_resources(self, ctx: ServerRequestContext[Any, Any],
                              params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return await self._forward(ctx, types.ListResourcesRequest(params=params), types.ListResourcesResult)

    async def _list_resource_templates(self, ctx: ServerRequestContext[Any, Any],
                                       params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
        return await self._forward(ctx, types.ListResourceTemplatesRequest(params=params),
                                   types.ListResourceTemplatesResult)

    async def _read_resource(self, ctx: ServerRequestContext[Any, Any],
                             params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        return await self._forward(ctx, types.ReadResourceRequest(params=params), types.ReadResourceResult)

    async def _subscribe(self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
        return await self._forward(ctx, types.SubscribeRequest(params=params), types.EmptyResult)

    async def _unsubscribe(self, ctx: ServerRequestContext[Any, Any],
                           params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        return await self._forward(ctx, types.UnsubscribeRequest(params=params), types.EmptyResult)

    async def _list_prompts(self, ctx: ServerRequestContext[Any, Any],
                            params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return await self._forward(ctx, types.ListPromptsRequest(params=params), types.ListPromptsResult)

    async def _get_prompt(self, ctx: ServerRequestContext[Any, Any],
                          params: types.GetPromptRequestParams) -> types.GetPromptResult:
        return await self._forward(ctx, types.GetPromptRequest(params=params), types.GetPromptResult)

    async def _complete(self, ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams) -> types.CompleteResult:
        return await self._forward(ctx, types.CompleteRequest(params=params), types.CompleteResult)

    async def _set_level(self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
        # The upstream session is shared with other callers: its log level is not this client's to
        # set. Logs of this client's own calls are relayed as the server sends them.
        self._route(ctx)
        return types.EmptyResult()
