"""Request authentication: API keys as `Authorization: Bearer` or `x-api-key`.

A pure ASGI middleware in front of every route. With no active key in the store the
hub is open (every request is the `default` tenant) — `mcp-hub serve` then binds only
to loopback addresses unless explicitly overridden. Once a key exists, every route but
the public ones needs one; the request's `Principal` (tenant, key id) is put in
`scope["state"]["principal"]` for handlers.
"""

from __future__ import annotations

import ipaddress
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .apikeys import ANONYMOUS, AuthError, KeyStore

PUBLIC_PATHS = frozenset({"/healthz", "/.well-known/jwks.json", "/openapi.json", "/console"})
PUBLIC_PREFIX = "/console/"  # the web console's static files (the page then calls the API with a key)
OPEN_CHECK_SECONDS = 5.0


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

    def __init__(self, app: ASGIApp, keys: KeyStore) -> None:
        self.app = app
        self.keys = keys
        self._open_checked = -OPEN_CHECK_SECONDS
        self._open = True

    def _is_open(self) -> bool:
        now = time.monotonic()
        if now - self._open_checked >= OPEN_CHECK_SECONDS:
            self._open = self.keys.active_count() == 0
            self._open_checked = now
        return self._open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        key = presented_key(dict(scope["headers"]))
        principal = await self.keys.lookup(key) if key else None
        if principal is None:
            if scope["path"] in PUBLIC_PATHS or scope["path"].startswith(PUBLIC_PREFIX) or self._is_open():
                principal = ANONYMOUS
            else:
                error = AuthError("a valid hub API key is required (Authorization: Bearer <key> or x-api-key)"
                                  if key is None else "the API key is not valid or was revoked")
                response = JSONResponse(error.to_body(), status_code=401,
                                        headers={"www-authenticate": "Bearer", "x-should-retry": "false"})
                await response(scope, receive, send)
                return
        state["principal"] = principal
        await self.app(scope, receive, send)
