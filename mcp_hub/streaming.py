"""Server-sent events for streamed completions, shaped so that naive clients survive.

Every `data:` chunk is a standard `chat.completion.chunk` with exactly one choice,
except two opt-ins that carry `choices: []`: the usage chunk (only with
`stream_options.include_usage`) and tool-activity chunks (only with
`stream_options.include_tool_events`), which carry an `event` object. The
extension fields of the completion ride on the final chunk, the one with
`finish_reason`. A failure after the stream began is `event: error` with an
`error` object (its fields repeated at the top level, as in every error body);
the stream ends with `data: [DONE]`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from . import jsoncodec
from .completion import Completion
from .errors import HubError
from .events import Event, Finished, Text, ToolActivity

log = logging.getLogger("mcp_hub.streaming")
EXTENSIONS = ("tools_executed", "mcp_tool_results", "mcp_server_errors", "turns_consumed", "turns_exhausted",
              "unexecuted_tool_calls", "pending_tools", "server_results", "deferred", "correlation_id")


def sse(data: dict[str, Any] | str, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else jsoncodec.dumps(data).decode()
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def error_event(error: HubError) -> str:
    # The full error body, as on an HTTP error: the openai SDK reads the nested `error`
    # object, but the Dedalus SDK builds its exception from the event's data and reads
    # `code`/`type`/`param` from the top level (with only `error` they came out None).
    return sse(error.to_body(), event="error")


class ChunkStream:
    """Turns a completion's events into SSE text."""

    def __init__(self, completion: Completion) -> None:
        self.completion = completion
        options = completion.request.stream_options or {}
        self.include_usage = bool(options.get("include_usage"))
        self.include_tool_events = bool(options.get("include_tool_events"))
        self._started = False

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
        completion = self.completion
        return {"id": completion.id, "object": "chat.completion.chunk", "created": completion.created,
                "model": completion.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}

    def _opening(self) -> list[str]:
        if self._started:
            return []
        self._started = True
        return [sse(self._chunk({"role": "assistant", "content": ""}))]

    def render(self, event: Event) -> list[str]:
        """The SSE frames for one event."""
        if isinstance(event, Text):
            return [*self._opening(), sse(self._chunk({"content": event.text}))]
        if isinstance(event, ToolActivity):
            if not self.include_tool_events:
                return []
            completion = self.completion
            return [sse({"id": completion.id, "object": "chat.completion.chunk", "created": completion.created,
                         "model": completion.model, "choices": [], "event": event.as_dict()})]
        return self._final(event)

    def _final(self, event: Finished) -> list[str]:
        body = event.body
        choice = body["choices"][0]
        frames = self._opening()
        delta: dict[str, Any] = {}
        calls = choice["message"].get("tool_calls")
        if calls:
            delta["tool_calls"] = [{"index": index, **call} for index, call in enumerate(calls)]
        extensions = {key: body[key] for key in EXTENSIONS if key in body}
        frames.append(sse(self._chunk(delta, choice["finish_reason"], **extensions)))
        if self.include_usage:
            completion = self.completion
            frames.append(sse({"id": completion.id, "object": "chat.completion.chunk", "created": completion.created,
                               "model": completion.model, "choices": [], "usage": body["usage"]}))
        return frames

    async def frames(self, events: AsyncIterator[Event]) -> AsyncIterator[str]:
        """Every frame of the stream; errors after the start become an `error` event."""
        try:
            async for event in events:
                for frame in self.render(event):
                    yield frame
        except HubError as exc:
            yield error_event(exc)
        except Exception:  # boundary: a bug must still end the stream in a way SDKs understand
            log.exception("completion %s failed mid-stream", self.completion.id)
            yield error_event(HubError("internal error"))
        yield sse("[DONE]")
