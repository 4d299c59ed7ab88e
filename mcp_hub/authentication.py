"""Request authentication: API keys as `Authorization: Bearer` or `x-api-key`.

A pure ASGI middleware in front of every route. While no key was ever created the
hub is open (every request is the `default` tenant, with the member role: admin powers
need a key, or the operator's `anonymous_admin` setting) — `mcp-hub serve` then binds only
to loopback addresses unless explicitly overridden. Revoking every key does not open it.
The store is shared by every hub on the same records database; it caches (see
`apikeys.CACHE_SECONDS`) which keys are valid and whether any exists. Once a key exists, every route but
the public ones needs one; the request's `Principal` (tenant, key id) is put in
`scope["state"]["principal"]` for handlers.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .apikeys import ANONYMOUS, ANONYMOUS_ADMIN, AuthError, KeyStore, Principal
from .errors import HubError, KeysUnavailable

PUBLIC_PATHS = frozenset({"/healthz", "/.well-known/jwks.json", "/openapi.json", "/console"})
PUBLIC_PREFIX = "/console/"  # the web console's static files (the page then calls the API with a key)
log = logging.getLogger("mcp_hub.authentication")


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts local connections."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    api_key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return api_key or None


class Authentication:
    """Resolves the caller of each HTTP request, or answers 401 in the hub's error shape."""

    def __init__(self, app: ASGIApp, keys: Callable[[], KeyStore], anonymous_admin: bool = False) -> None:
        """`keys`: the running hub's key store (called per request: the store exists while the hub runs);
        `anonymous_admin`: callers of an open hub are admins (the operator's explicit, dangerous choice)."""
        self.app = app
        self.keys = keys
        self.open_principal = ANONYMOUS_ADMIN if anonymous_admin else ANONYMOUS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        try:
            principal = await self._principal(scope)
        except HubError as error:
            headers = {"www-authenticate": "Bearer", "x-should-retry": "false"} if error.status == 401 else {}
            await JSONResponse(error.to_body(), status_code=error.status, headers=headers)(scope, receive, send)
            return
        state["principal"] = principal
        await self.app(scope, receive, send)

    async def _principal(self, scope: Scope) -> Principal:
        key = presented_key(dict(scope["headers"]))
        keys = self.keys()
        try:
            principal = await keys.lookup(key) if key else None
            if principal is not None:
                return principal
            if scope["path"] in PUBLIC_PATHS or scope["path"].startswith(PUBLIC_PREFIX):
                return ANONYMOUS  # public routes use no role (and need no database)
            if await keys.is_open():
                return self.open_principal
        except Exception as exc:  # the database: unreachable, locked, closed. Never "open" on a failure.
            log.warning("cannot read the API keys from the records database: %s", type(exc).__name__)
            raise KeysUnavailable("the hub cannot check API keys right now (its records database is unavailable); "
                                  "retry later") from None
        raise AuthError("a valid hub API key is required (Authorization: Bearer <key> or x-api-key)"
                        if key is None else "the API key is not valid or was revoked")
