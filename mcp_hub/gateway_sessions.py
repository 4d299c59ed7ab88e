"""The gateway's stateful sessions: bound to the tenant that opened them, capped per tenant and in all.

The SDK's `StreamableHTTPSessionManager` keeps one transport per `Mcp-Session-Id` and binds a
session to the principal of `scope["user"]`: a request for the session from another principal
is answered 404, as if the session did not exist. The gateway puts the caller's tenant there
(`bind_tenant`), so one tenant's session id is useless to another, for POST, GET and DELETE.

`TenantSessions` adds the per-tenant cap to the manager's total one (`max_sessions`). It hooks
the manager's admission and discard steps, the two places a session starts and ends. A
tenant at its cap gets a 429 JSON-RPC error (`refusal`) before any session work; the total cap
is the SDK's 503. We refuse rather than evict: evicting would let one client cut off another
of the same tenant mid-exchange, while a refused client can close its own sessions (DELETE) or
wait for idle ones to expire (`gateway_session_idle_timeout`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, AuthorizationContext
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.responses import JSONResponse
from starlette.types import Scope

TOO_MANY = -32000  # a JSON-RPC server error: the request is well-formed, the server will not serve it now


def bind_tenant(scope: Scope, tenant: str) -> None:
    """Mark the request as the tenant's: the session manager binds new sessions to it and refuses others."""
    # Not the caller's key: the manager compares only these components, and never stores a secret.
    scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=tenant, scopes=[], subject=tenant))


def opens_session(scope: Scope) -> bool:
    """A handshake-era request without a session id: the manager opens a session for it (whatever its method)."""
    headers = dict(scope["headers"])
    version = headers.get(MCP_PROTOCOL_VERSION_HEADER.lower().encode())
    return MCP_SESSION_ID_HEADER.lower().encode() not in headers and \
        (version is None or version.decode("latin-1") in HANDSHAKE_PROTOCOL_VERSIONS)


class TenantSessions(StreamableHTTPSessionManager):
    """The SDK's session manager with sessions counted per tenant and capped at `per_tenant`."""

    def __init__(self, app: Any, *, per_tenant: int, **options: Any) -> None:
        super().__init__(app, **options)
        self.per_tenant = per_tenant
        self._open: Counter[str] = Counter()
        self._tenant_of: dict[str, str] = {}

    def open_sessions(self, tenant: str) -> int:
        return self._open[tenant]

    def refusal(self, tenant: str) -> JSONResponse | None:
        """The 429 for a tenant at its cap, or None."""
        if self._open[tenant] < self.per_tenant:
            return None
        message = (f"this tenant has {self._open[tenant]} open MCP gateway sessions, the most allowed "
                   "(gateway_sessions_per_tenant); close one (DELETE with its Mcp-Session-Id) or wait for an idle "
                   "one to expire")
        return JSONResponse({"jsonrpc": "2.0", "id": None, "error": {"code": TOO_MANY, "message": message}},
                            status_code=429, headers={"retry-after": "10"})

    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        tenant = requestor["client_id"] if requestor is not None else ""
        if self._open[tenant] >= self.per_tenant:  # requests that passed `refusal` together
            return None
        transport = super()._admit_session(requestor)
        if transport is not None and transport.mcp_session_id is not None:
            self._tenant_of[transport.mcp_session_id] = tenant
            self._open[tenant] += 1
        return transport

    async def _discard_session(self, session_id: str, transport: StreamableHTTPServerTransport) -> None:
        tenant = self._tenant_of.pop(session_id, None)  # called once or twice per session: count it once
        if tenant is not None:
            self._open[tenant] -= 1
            if not self._open[tenant]:
                del self._open[tenant]
        await super()._discard_session(session_id, transport)
