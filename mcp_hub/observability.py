"""Request ids, request metrics and JSON-lines logs.

`Observability` is the outermost ASGI middleware: it gives every HTTP request an id
(`X-Request-Id`: the caller's when it sends a sane one, else a new one), returns it in
the response header (with the hub's `x-hub-instance`), counts and times the request by route template and status in the
hub's metrics, and with `log_format: json` writes one access line per request. Every
log line written while the request runs carries the same `request_id`.

Logged: method, route template, status, duration, request id. Never a query string,
a header, a body, an argument or a result.

A client that goes away mid-request (mid-body or mid-stream) is not the hub's error: what
that raises (`ClientDisconnect`, or an OSError/anyio error once the server said the client
left) ends the request quietly here, counted with status 499, logged at debug level only.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import anyio
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import HubMetrics

# The id of the request the current task works for; a ContextVar is per task (and is
# copied into the tasks a request starts), so it is request-scoped, not shared state.
REQUEST_ID: ContextVar[str | None] = ContextVar("mcp_hub_request_id", default=None)
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("mcp_hub.access")
log = logging.getLogger("mcp_hub.observability")
CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection before the answer"
_GONE = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)


def client_gone(exc: BaseException, disconnected: bool) -> bool:
    """Whether `exc` (or every exception of a group) says the client left; OSError and anyio's stream
    errors count only when the server has told the app so (`disconnected`), else they are the hub's."""
    if isinstance(exc, BaseExceptionGroup):
        return all(client_gone(inner, disconnected) for inner in exc.exceptions)
    return isinstance(exc, ClientDisconnect) or (disconnected and isinstance(exc, _GONE))


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The path template of the route `scope` matches (`/v1/servers/{org}/{name}`), else "unmatched"."""
    matched = scope.get("route")  # set by Starlette's router when the request reached it
    if matched is not None:
        return getattr(matched, "path", "unmatched")
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", "unmatched")
    return "unmatched"


class Observability:
    """Request id, metrics and (optionally) a JSON access line for each HTTP request; and
    `x-hub-instance: <instance_name>` on every response (which hub behind a balancer answered)."""

    def __init__(self, app: ASGIApp, metrics: HubMetrics, routes: Sequence[BaseRoute], access_lines: bool = False,
                 instance: str = "") -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.access_lines = access_lines
        self.instance = (b"x-hub-instance", instance.encode("latin-1", "replace"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SANE_ID.fullmatch(given) else f"req_{uuid.uuid4().hex}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = REQUEST_ID.set(request_id)
        status = 500
        started = time.perf_counter()
        disconnected = False

        async def receive_noting_disconnect() -> Message:
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode()), self.instance]
            await send(message)

        try:
            await self.app(scope, receive_noting_disconnect, send_with_id)
        except BaseException as exc:
            if not client_gone(exc, disconnected):
                raise
            status = CLIENT_CLOSED
            log.debug("the client of %s %s disconnected (%s)", scope["method"], route_template(self.routes, scope),
                      type(exc).__name__)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(self.routes, scope)
            self.metrics.request(route, scope["method"], status, seconds, state.get("error_code"))
            if self.access_lines:
                access_log.info("%s %s %d", scope["method"], route, status,
                                extra={"http": {"method": scope["method"], "route": route, "status": status,
                                                "duration_ms": round(seconds * 1000, 3)}})
            REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (None outside a request) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (and `http` on access lines)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get(),
        }
        http = getattr(record, "http", None)
        if isinstance(http, dict):
            line["http"] = http
        if record.exc_info:
            line["exception"] = type(record.exc_info[1]).__name__  # the type only: a message may hold a value
        return json.dumps(line, ensure_ascii=False)


def logging_config(level: str, log_format: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the hub and uvicorn (uvicorn's `log_config`)."""
    formatter = {"()": JsonFormatter} if log_format == "json" else {"format": "%(levelname)s %(name)s: %(message)s"}
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "hub",
               "filters": ["request_id"]}
    loggers = {name: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
               for name in ("mcp_hub", "uvicorn", "uvicorn.error", "uvicorn.access")}
    return {"version": 1, "disable_existing_loggers": False, "formatters": {"hub": formatter},
            "filters": {"request_id": {"()": RequestIdFilter}}, "handlers": {"stderr": handler}, "loggers": loggers}
