"""What the completion loop yields (`Completion.events()`): content as the model produces it,
server-side tool activity, and, last, the complete `chat.completion` body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Text:
    """A content delta, as the model produced it."""

    text: str


@dataclass
class ToolActivity:
    """A server-side tool call started, completed or failed."""

    type: str  # tool_call.started | tool_call.completed | tool_call.failed
    call_id: str
    server: str
    tool: str
    duration_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        event: dict[str, Any] = {"type": self.type, "call_id": self.call_id, "server": self.server, "tool": self.tool}
        if self.duration_ms is not None:
            event["duration_ms"] = self.duration_ms
        return event


@dataclass
class Finished:
    """The complete `chat.completion` body."""

    body: dict[str, Any]


Event = Text | ToolActivity | Finished
