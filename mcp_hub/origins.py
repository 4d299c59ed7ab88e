"""Cross-site protection for every route: request bodies are JSON; Host and Origin are checked.

A web page in the operator's browser can send requests to `http://127.0.0.1:8000` (cross-site)
or, through a name it controls that re-resolves to 127.0.0.1, as if it were that origin (DNS
rebinding). A hub without API keys cannot tell such a request from its operator's, so:

- on the MCP gateway (`/mcp/...`), always: the `Host` must be a loopback name, the bind host
  or one of `gateway_allowed_hosts`; an `Origin`, when sent, a loopback origin or one of
  `gateway_allowed_origins` (`*` among the hosts turns the check off, behind a proxy that checks);
- on every other route, while the hub is bound to a loopback address and no API key was ever
  created: the same rule.

Refused: 403 `forbidden_host` / `forbidden_origin` in the OpenAI error shape. And on every
route but the gateway (whose SDK transport refuses non-JSON POSTs itself), a POST, PUT or
PATCH body must be `application/json` or `application/*+json` (415 `unsupported_media_type`):
a page cannot send those cross-site without the hub's CORS consent, which it never gives.
Together they keep a browser page from driving a keyless hub.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from .apikeys import KeyStore
from .authentication import is_loopback
from .bodies import json_type_refusal
from .errors import ForbiddenOrigin, HubError
from .settings import Settings

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_PORT = re.compile(r"^[0-9]{1,5}$")
log = logging.getLogger("mcp_hub.origins")


def _matches(value: str, allowed: Iterable[str]) -> bool:
    """`value` equals an entry, or an entry `name:*` is `name:<port>`."""
    for entry in allowed:
        if value == entry:
            return True
        if entry.endswith(":*") and value.startswith(entry[:-1]) and _PORT.match(value[len(entry) - 1:]):
            return True
    return False


class AllowedOrigins:
    """Which Host and Origin header values this hub answers (from `Settings`)."""

    def __init__(self, settings: Settings) -> None:
        self.off = "*" in settings.gateway_allowed_hosts
        names = [*LOOPBACK_HOSTS, settings.host.lower()]
        self.hosts = [form for name in names for form in (name, f"{name}:*")]
        self.hosts += [host.lower() for host in settings.gateway_allowed_hosts]
        self.origins = [f"{scheme}://{name}{port}" for name in LOOPBACK_HOSTS for scheme in ("http", "https")
                        for port in ("", ":*")] + [origin.lower() for origin in settings.gateway_allowed_origins]
        self.loopback_bound = is_loopback(settings.host)

    def refusal(self, host: str | None, origin: str | None) -> ForbiddenOrigin | None:
        """Why a request with these headers is refused, or None."""
        if self.off:
            return None
        if host is None or not _matches(host.lower(), self.hosts):
            return ForbiddenOrigin("the Host header names no address this hub serves (DNS rebinding protection); "
                                   "add it to gateway_allowed_hosts", code="forbidden_host", param="host")
        if origin is not None and not _matches(origin.lower(), self.origins):
            return ForbiddenOrigin("requests from this Origin are not accepted (cross-site protection); "
                                   "add it to gateway_allowed_origins", code="forbidden_origin", param="origin")
        return None


class CrossSiteGuard:
    """ASGI middleware (outside `Authentication`): 403 for a foreign Host or Origin where `AllowedOrigins`
    applies, 415 for a body that is not JSON.

    The check is a string match per request; whether the hub is open (keyless) is asked of the key
    store only for a request that fails it, so the hot path costs no lookup.
    """

    def __init__(self, app: ASGIApp, allowed: AllowedOrigins, keys: Callable[[], KeyStore],
                 routes: Sequence[BaseRoute] = ()) -> None:
        """`routes`: the app's; a body is checked only where one takes it (an unknown method stays a 405)."""
        self.app = app
        self.allowed = allowed
        self.keys = keys
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host, origin = headers.get(b"host"), headers.get(b"origin")
        refusal: HubError | None = self.allowed.refusal(None if host is None else host.decode("latin-1"),
                                       None if origin is None else origin.decode("latin-1"))
        gateway = scope["path"].startswith("/mcp/")
        if refusal is not None and (gateway or await self._open_on_loopback()):
            log.info("refused a request for %s: %s", scope["path"][:64], refusal.code)
        elif scope["method"] in ("POST", "PUT", "PATCH") and not gateway and self._routed(scope):
            refusal = json_type_refusal(headers.get(b"content-type", b"").decode("latin-1"))
        else:
            refusal = None
        if refusal is not None:
            scope.setdefault("state", {})["error_code"] = refusal.code
            await JSONResponse(refusal.to_body(), status_code=refusal.status)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _routed(self, scope: Scope) -> bool:
        """Whether a route takes this path and method."""
        return any(route.matches(scope)[0] is Match.FULL for route in self.routes)

    async def _open_on_loopback(self) -> bool:
        if not self.allowed.loopback_bound:
            return False
        try:
            return await self.keys().is_open()
        except Exception:  # noqa: BLE001 - the records database is unavailable: refuse rather than guess "closed"
            return True
