"""Saved loop state of client-tool handoffs, and how a request finds what it resumes.

When a model turn asks for client tools, the completion saves a `Handoff` under a
`correlation_id` (state store, key `handoff:<id>`, per tenant, `handoff_ttl`) plus one
index entry per client call id (`handoff-call:<call id>` -> correlation id), so that a
follow-up request can be matched to it in PROTOCOL.md's order:

1. `correlation_id` in the request;
2. `deferred_calls` echoed back (stateless: nothing is read from the store);
3. the ids of the trailing `tool` messages (what the Dedalus runner sends);
4. nothing: the messages alone (drop-in).

The record holds the conversation as the model saw it (including the hub's own MCP
turns, which the caller never sees), the handoff turn's full assistant message, the
results of the MCP calls already run, the deferred calls, and the exchange's
`mcp_tool_results`. It is scrubbed of the request's secrets before it is written, and
the `mcp_servers` spec is kept without `credentials`: a resumed request supplies its
credentials again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from .chat_request import DeferredCall
from .state import StateStore

__all__ = ["DeferredCall", "Handoff", "HandoffStore", "Resume"]


class Handoff(BaseModel):
    """The saved loop state of one exchange, at its latest handoff."""

    correlation_id: str
    conversation: list[dict[str, Any]]  # what the model saw before the handoff turn
    assistant: dict[str, Any]  # the handoff turn: every call the model made
    tool_messages: list[dict[str, Any]] = Field(default_factory=list)  # answers to its non-client calls
    server_values: dict[str, Any] = Field(default_factory=dict)  # call id -> MCP output, for references
    client_calls: list[dict[str, str]] = Field(default_factory=list)  # [{id, name}]
    deferred: list[DeferredCall] = Field(default_factory=list)
    results: list[dict[str, Any]] = Field(default_factory=list)  # the exchange's ToolResult records
    mcp_servers: Any = None  # the request's spec without credentials

    @property
    def client_ids(self) -> list[str]:
        return [call["id"] for call in self.client_calls]


def new_correlation_id() -> str:
    return f"corr_{uuid.uuid4().hex}"


def without_credentials(spec: Any) -> Any:
    """An `mcp_servers` spec with every `credentials` dropped (the state store never holds them)."""
    if isinstance(spec, list):
        return [without_credentials(item) for item in spec]
    if isinstance(spec, dict):
        return {key: value for key, value in spec.items() if key != "credentials"}
    return spec


def trailing_tool_run(messages: list[dict[str, Any]]) -> int:
    """Index of the first of the `tool` messages that end `messages` (len(messages) if none)."""
    start = len(messages)
    while start > 0 and messages[start - 1].get("role") == "tool":
        start -= 1
    return start


class HandoffStore:
    """`Handoff` records in the state store, per tenant, for `ttl` seconds."""

    def __init__(self, state: StateStore, ttl: float) -> None:
        self.state = state
        self.ttl = ttl

    async def save(self, tenant: str, handoff: Handoff, replaced: Handoff | None = None) -> None:
        # The record first, then its index: a reader that finds the index finds the record.
        await self.state.put(tenant, f"handoff:{handoff.correlation_id}", handoff.model_dump(mode="json"), self.ttl)
        for call_id in handoff.client_ids:
            await self.state.put(tenant, f"handoff-call:{call_id}", handoff.correlation_id, self.ttl)
        if replaced is not None:
            for call_id in set(replaced.client_ids) - set(handoff.client_ids):
                await self.state.delete(tenant, f"handoff-call:{call_id}")

    async def load(self, tenant: str, correlation_id: str) -> Handoff | None:
        record = await self.state.get(tenant, f"handoff:{correlation_id}")
        return None if record is None else Handoff.model_validate(record)

    async def find(self, tenant: str, call_ids: list[str]) -> Handoff | None:
        """The handoff that asked for any of these client call ids."""
        for call_id in call_ids:
            correlation_id = await self.state.get(tenant, f"handoff-call:{call_id}")
            handoff = await self.load(tenant, correlation_id) if isinstance(correlation_id, str) else None
            if handoff is not None and call_id in handoff.client_ids:
                return handoff
        return None

    async def finish(self, tenant: str, handoff: Handoff) -> None:
        """The exchange is over: forget its state."""
        await self.state.delete(tenant, f"handoff:{handoff.correlation_id}")
        for call_id in handoff.client_ids:
            await self.state.delete(tenant, f"handoff-call:{call_id}")


@dataclass
class Resume:
    """What a request resumes: saved state, or (stateless) the echoed deferred calls."""

    handoff: Handoff | None = None
    deferred_calls: list[DeferredCall] | None = None
    correlation_id: str | None = None
