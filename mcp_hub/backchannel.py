"""Server-to-client traffic of pooled sessions, relayed to the client whose call caused it.

An upstream MCP server may talk back while it runs a tool: progress and log
notifications, sampling and elicitation requests. A pooled session is shared by many
callers, and nothing on the wire ties a server-to-client request to the client request
that caused it, so each `ManagedSession` keeps a `BackChannel`: the `Relay`s of the
gateway calls in flight on it. Progress is exact (each call has its own progress token);
logs, sampling and elicitation go to the relay when exactly one call with a relay is in
flight on the session, and otherwise get the hub's own answers (logs dropped, sampling
refused, elicitation declined), as calls made for a model always do.

The gateway hands its relay down with `current_relay` (a context variable), so the
executor and the audit trail between the gateway and the session stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import mcp.types as types
from mcp.client.session import ClientRequestContext, ElicitationFnT
from mcp_types import INVALID_REQUEST


class Relay(Protocol):
    """Where one downstream call wants its upstream server's back-channel traffic."""

    async def progress(self, progress: float, total: float | None, message: str | None) -> None: ...

    async def log(self, params: types.LoggingMessageNotificationParams) -> None: ...

    async def sampling(self, params: types.CreateMessageRequestParams) -> types.CreateMessageResult | types.ErrorData: ...

    async def elicitation(self, params: types.ElicitRequestParams) -> types.ElicitResult | types.ErrorData: ...

    def capture(self, result: types.CallToolResult, scrub: Any) -> None:
        """Keep the upstream result as sent (`scrub` maps JSON values to their scrubbed form)."""


current_relay: ContextVar[Relay | None] = ContextVar("mcp_hub_current_relay", default=None)


class BackChannel:
    """One session's relays in flight, and the callbacks its MCP client is built with."""

    def __init__(self, elicitation: ElicitationFnT) -> None:
        self._fallback = elicitation
        self._relays: list[Relay] = []

    @contextmanager
    def attached(self, relay: Relay) -> Iterator[None]:
        self._relays.append(relay)
        try:
            yield
        finally:
            self._relays.remove(relay)

    def _sole(self) -> Relay | None:
        return self._relays[0] if len(self._relays) == 1 else None

    async def sampling(self, context: ClientRequestContext,
                       params: types.CreateMessageRequestParams) -> types.CreateMessageResult | types.ErrorData:
        relay = self._sole()
        if relay is None:
            return types.ErrorData(code=INVALID_REQUEST, message="sampling is not available: the hub has no client "
                                                                 "to ask for this call")
        return await relay.sampling(params)

    async def elicitation(self, context: ClientRequestContext,
                          params: types.ElicitRequestParams) -> types.ElicitResult | types.ErrorData:
        relay = self._sole()
        if relay is None:
            return await self._fallback(context, params)
        return await relay.elicitation(params)

    async def logging(self, params: types.LoggingMessageNotificationParams) -> None:
        relay = self._sole()
        if relay is not None:
            await relay.log(params)
