"""The executor: runs batches of MCP tool calls and reports them in PROTOCOL.md's shapes.

A tool failure is data (`is_error: true` in the result), never an exception; a
server that cannot be reached becomes an `mcp_server_errors` entry and every call
routed to it an error result. Calls run concurrently (bounded per session by its
limiter) with a per-call timeout; a call whose session died is retried once on a
fresh session when that is safe: the call never reached the server, or the tool
declares itself read-only or idempotent.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp.types as types
from mcp import MCPError
from pydantic import BaseModel, Field

from . import jsoncodec
from .errors import ResultTooLarge, ServerError, SessionLost
from .scrubbing import Scrubber
from .sessions import CallTimeout, ManagedSession


@dataclass(frozen=True)
class ToolCall:
    """One call to run: `server` is the instance name of a resolved server."""

    server: str
    tool: str
    arguments: dict[str, Any] | str | None = None
    id: str = ""


@dataclass(frozen=True)
class CallContext:
    """Who asked for a batch of calls and within what, for the audit trail (never a secret)."""

    tenant: str = "default"
    key_id: str | None = None  # the API key's id, never the key
    request_id: str | None = None  # the completion id (chatcmpl-…) or the direct call's id
    correlation_id: str | None = None  # a handoff's correlation id
    model: str | None = None
    turn: int | None = None  # the model turn (1-based) whose calls these are
    source: str = "completion"  # completion | handoff | deferred | direct | gateway


class ToolResult(BaseModel):
    """One `mcp_tool_results` item (plus the call id and an error code for hub-side failures)."""

    call_id: str = ""
    server_name: str
    tool_name: str
    arguments: dict[str, Any]
    result: Any
    is_error: bool
    duration_ms: int
    error_code: str | None = None
    truncated: bool = False  # the result was over the output limit and was cut
    # For the audit trail, never in a response: when the call began (epoch seconds) and the
    # size and SHA-256 of the full (scrubbed) result's JSON, before any cut.
    started_at: float = Field(0.0, exclude=True)
    result_bytes: int = Field(0, exclude=True)
    result_sha256: str = Field("", exclude=True)

    def public(self) -> dict[str, Any]:
        """The PROTOCOL.md shape (plus `truncated: true` when the result was cut)."""
        keys = {"server_name", "tool_name", "arguments", "result", "is_error", "duration_ms"}
        return self.model_dump(include=keys | {"truncated"} if self.truncated else keys)


@dataclass
class Batch:
    """What a batch produced: results in call order and the servers that failed."""

    results: list[ToolResult] = field(default_factory=list)
    server_errors: dict[str, ServerError] = field(default_factory=dict)


def render_result(result: types.CallToolResult) -> Any:
    """`structuredContent` when present, else the content blocks as JSON."""
    if result.structured_content is not None:
        return result.structured_content
    return [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]


def _safe_to_retry(tool: types.Tool | None) -> bool:
    hints = tool.annotations if tool else None
    return bool(hints and (hints.read_only_hint or hints.idempotent_hint))


def _parse_arguments(arguments: dict[str, Any] | str | None) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        parsed = jsoncodec.loads_within(arguments)  # a model's text: strict JSON, depth-capped
        if not isinstance(parsed, dict):
            raise ValueError("tool arguments must be a JSON object")
        return parsed
    jsoncodec.check_depth(arguments)  # filled-in `$ref` values come from tool results
    return arguments


class Executor:
    """Runs tool calls against sessions; owns no resources of its own."""

    def __init__(self, default_timeout: float, max_output_bytes: int = 1 << 20) -> None:
        self.default_timeout = default_timeout
        self.max_output_bytes = max_output_bytes

    def _limited(self, result: Any) -> tuple[Any, bool, int, str]:
        """The result, or when its JSON is over the limit, that JSON cut short with a marker;
        and the full JSON's size and SHA-256."""
        data = jsoncodec.dumps(result)
        size, digest = len(data), hashlib.sha256(data).hexdigest()
        if size <= self.max_output_bytes:
            return result, False, size, digest
        kept = data[:self.max_output_bytes].decode("utf-8", "ignore")
        marker = f"\n[truncated: the tool returned {size} bytes; the first {self.max_output_bytes} are shown]"
        return kept + marker, True, size, digest

    async def run(self, calls: Sequence[ToolCall], sessions: dict[str, ManagedSession], *,
                  parallel: bool = True) -> Batch:
        """Run `calls`; each call's server must be a key of `sessions` (else it is an error result)."""
        batch = Batch(results=[None] * len(calls))  # type: ignore[list-item]

        async def one(index: int, call: ToolCall) -> None:
            batch.results[index] = await self.call(call, sessions.get(call.server), batch.server_errors)

        if parallel and len(calls) > 1:
            async with anyio.create_task_group() as tg:
                for index, call in enumerate(calls):
                    tg.start_soon(one, index, call)
        else:
            for index, call in enumerate(calls):
                await one(index, call)
        return batch

    async def call(self, call: ToolCall, session: ManagedSession | None,
                   server_errors: dict[str, ServerError] | None = None) -> ToolResult:
        """Run one call; never raises for tool, timeout or server failures."""
        started = time.perf_counter()
        started_at = time.time()

        scrubber = session.scrubber if session is not None else Scrubber()

        def done(result: Any, *, is_error: bool, code: str | None = None, arguments: dict[str, Any] | None = None) -> ToolResult:
            # A server may echo a credential back: no secret leaves the executor.
            limited, truncated, size, digest = self._limited(scrubber.value(result))
            return ToolResult(call_id=call.id, server_name=call.server, tool_name=call.tool,
                              arguments=scrubber.value(arguments) if arguments is not None else {}, result=limited,
                              is_error=is_error, duration_ms=round((time.perf_counter() - started) * 1000),
                              error_code=code, truncated=truncated, started_at=started_at, result_bytes=size,
                              result_sha256=digest)

        try:
            arguments = _parse_arguments(call.arguments)
        except ValueError as exc:
            return done({"error": {"code": "invalid_arguments", "message": f"arguments are not a JSON object: {exc}"}},
                        is_error=True, code="invalid_arguments")
        if session is None:
            return done({"error": {"code": "server_unavailable", "message": f"server {call.server!r} is not available"}},
                        is_error=True, code="server_unavailable", arguments=arguments)
        timeout = session.target.limits.call_timeout or self.default_timeout
        for attempt in (1, 2):
            try:
                result = await session.call_tool(call.tool, arguments, timeout)
            except CallTimeout as exc:
                return done({"error": {"code": "timeout", "message": str(exc)}}, is_error=True, code="timeout",
                            arguments=arguments)
            except SessionLost as exc:
                tool = next((t for t in session.cached_tools() or [] if t.name == call.tool), None)
                if attempt == 1 and (not exc.delivered or _safe_to_retry(tool)):
                    continue
                return done({"error": {"code": exc.code, "message": exc.message}}, is_error=True, code=exc.code,
                            arguments=arguments)
            except ResultTooLarge as exc:  # this call's failure, not the server's
                return done({"error": {"code": exc.code, "message": exc.message}}, is_error=True, code=exc.code,
                            arguments=arguments)
            except ServerError as exc:
                if server_errors is not None:
                    server_errors.setdefault(exc.server, exc)
                return done({"error": {"code": exc.code, "message": exc.message}}, is_error=True, code=exc.code,
                            arguments=arguments)
            except MCPError as exc:
                return done({"error": {"code": "protocol_error", "message": f"MCP error {exc.code}: {exc.message}"}},
                            is_error=True, code="protocol_error", arguments=arguments)
            except ValueError:  # pydantic: the server's answer is not a CallToolResult
                return done({"error": {"code": "protocol_error", "message": "the server sent a malformed tool result"}},
                            is_error=True, code="protocol_error", arguments=arguments)
            return done(render_result(result), is_error=result.is_error, arguments=arguments)
        raise AssertionError("unreachable")  # pragma: no cover

