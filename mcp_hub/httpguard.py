"""The HTTP server's edge, before any ASGI code runs: request-head caps, slow-client timeouts, proxies.

uvicorn's httptools protocol buffers a request line and headers of any size for as long as
the client likes: two unfinished 64 MiB headers cost 130 MiB before authentication, and a
client that sends half a request line and stops holds its connection for good.
`GuardedHttpTools` is that protocol with:

- `max_header_bytes` on the request line plus headers and `max_header_count` on header lines:
  over either, a 431 `headers_too_large` in the hub's error shape and the connection closes
  (at most one socket read past the cap is ever buffered);
- `header_timeout`: a request's head must arrive within it, counted from its first byte
  (or from the connection, for a client that sends nothing); `body_timeout`: a body may
  stall at most that long between two chunks (not while the hub itself is not reading).
  A client over either is disconnected.

`server_config` builds the uvicorn configuration with it (httptools stays: it matters for
throughput, see bench/), and trusts `X-Forwarded-For`/`X-Forwarded-Proto` only from
`forwarded_allow_ips` (uvicorn alone trusts 127.0.0.1). `Forwarded` is read by nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .errors import HeadersTooLarge
from .settings import Settings

log = logging.getLogger("mcp_hub.httpguard")


class _HeadOverCap(Exception):
    """Raised from a parser callback to stop parsing a head that is over a cap."""


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with head caps and slow-client timeouts (see the module doc).

    The limits are class attributes of the subclass `protocol_class` makes per settings;
    this class itself carries the defaults of `Settings`.
    """

    max_header_bytes: ClassVar[int] = 64 * 1024
    max_header_count: ClassVar[int] = 100
    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between requests, or reading a request's line and headers
        self._head_bytes = 0  # bytes received since the current head began (an upper bound)
        self._header_lines = 0
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None

    # -- timers ----------------------------------------------------------------------------

    def _arm(self, seconds: float, why: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, why)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, why: str) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if why == "body" and self.flow is not None and self.flow.read_paused:
            self._arm(self.body_timeout, why)  # the hub is not reading the body: the client is not slow
            return
        if why == "head" and self.cycle is not None and not self.cycle.response_complete:
            self._arm(self.header_timeout, why)  # a pipelined head waits while the hub still answers
            return
        log.info("closed a connection whose request %s stalled", "head" if why == "head" else "body")
        self.transport.close()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, "head")  # a client that connects and sends nothing

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            if self._head_bytes == 0:
                self._arm(self.header_timeout, "head")
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadOverCap):
                self._send_431()
                return
            self._bad_request()
        except httptools.HttpParserError:
            self._bad_request()
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        else:
            # Still in the head after this read and past the cap: what httptools holds is over it.
            if self._in_head and self._head_bytes > self.max_header_bytes:
                self._send_431()

    def _bad_request(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def _send_431(self) -> None:
        self._refused = True
        self._disarm()
        error = HeadersTooLarge(f"request line and headers exceed {self.max_header_bytes} bytes or "
                                f"{self.max_header_count} lines (max_header_bytes, max_header_count)")
        body = json.dumps(error.to_body()).encode()
        head = [STATUS_LINE[431], *(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers),
                b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body), b"connection: close\r\n",
                b"\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._header_lines = 0

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self.max_header_bytes:
            raise _HeadOverCap
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_lines += 1
        if self._header_lines > self.max_header_count:
            raise _HeadOverCap
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:  # one read can carry a whole head over the cap
            raise _HeadOverCap
        super().on_headers_complete()
        self._arm(self.body_timeout, "body")

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm(self.body_timeout, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes = True, 0  # what arrives next is the next request's head
        super().on_message_complete()


def protocol_class(settings: Settings) -> type[GuardedHttpTools]:
    """`GuardedHttpTools` with the caps and timeouts of `settings`."""
    limits = {"max_header_bytes": settings.max_header_bytes, "max_header_count": settings.max_header_count,
              "header_timeout": settings.header_timeout, "body_timeout": settings.body_timeout}
    return type("GuardedHttpTools", (GuardedHttpTools,), limits)


def server_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration of a hub: guarded httptools, trusted proxies only, a connection cap."""
    trusted = list(settings.forwarded_allow_ips)
    return uvicorn.Config(app, http=protocol_class(settings), proxy_headers=bool(trusted),
                          forwarded_allow_ips=trusted or None, limit_concurrency=settings.max_connections,
                          h11_max_incomplete_event_size=settings.max_header_bytes, **options)
