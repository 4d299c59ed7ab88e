"""One live, supervised MCP client session.

A `ManagedSession` is opened and closed by a single owner task (`run`), as the MCP
SDK requires: the SDK's transports hold anyio task groups that must be exited by
the task that entered them, and a dying streamable-HTTP transport cancels the task
inside it. Other tasks only call `call_tool` / `list_tools`, which wait for the
session to be ready.

Lifecycle::

    starting ──connect ok──▶ ready ──child exits / session lost──▶ restarting ──▶ ready …
        │                      │                                        │
        └──connect fails──▶ failed          stop() ──▶ closed     too many failures ──▶ failed

A session that dies (a hosted child exits, an HTTP session expires or its server
goes away) is reopened by its owner with exponential backoff, so callers waiting
in `client()` get the replacement; after `MAX_FAILED_RESTARTS` failed reopenings
in a row the session is `failed` and the pool drops it.

A hosted child whose call timed out may still be working on it (a tool spinning on
the CPU, a catastrophic regex): the SDK's cancellation cannot stop code that never
yields. So the owner then probes the child (`tools/list`, within `busy_probe_timeout`)
while new calls wait; a child that does not answer is still busy and is replaced. One
that answers but keeps a worker thread spinning is caught by the transport
(`mcp_hub.stdio`), which samples the child's threads after every cancellation.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import mcp.types as types
from anyio.abc import TaskStatus
from mcp import Client, MCPError
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, INVALID_REQUEST, REQUEST_TIMEOUT
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from .backchannel import BackChannel, current_relay
from .credentials import Binding
from .errors import ConnectError, ResultTooLarge, ServerError, SessionLost, ToolsChanged
from .pinning import Review, ToolGate, clean_tool
from .resolution import Target
from .scrubbing import Scrubber
from .stdio import MESSAGE_TOO_LARGE
from .transports import Opener

log = logging.getLogger("mcp_hub.sessions")
State = Literal["starting", "ready", "restarting", "failed", "closed"]
MAX_FAILED_RESTARTS = 5


@dataclass(frozen=True)
class SessionKey:
    """Sessions are shared only between callers of one tenant with identical credentials."""

    tenant: str
    ident: str
    credential: str = ""


@dataclass(frozen=True)
class SessionPolicy:
    connect_timeout: float
    restart_backoff: float
    restart_backoff_max: float
    concurrency: int
    busy_probe_timeout: float = 5.0


class CallTimeout(Exception):
    """A call exceeded its timeout; the session is still usable."""


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a connect failure (flattening exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return f"MCP error {exc.code}: {exc.message}"
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {exc.filename}"
    if isinstance(exc, TimeoutError):
        return "timed out while connecting"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _modern_list_changed(client: Client) -> bool:
    """Whether to open a listen stream: a 2026-era session whose server may announce tool changes.

    A pinned protocol version skips discovery, so capabilities can be unknown (no `tools` entry).
    """
    tools = client.server_capabilities.tools
    return client.protocol_version in MODERN_PROTOCOL_VERSIONS and (tools is None or bool(tools.list_changed))


def _is_dead(exc: MCPError, *, http: bool) -> bool:
    """Whether an error means the session is gone (and must be reopened), not just the call failed."""
    message = exc.message.lower()
    if exc.code == CONNECTION_CLOSED or (exc.code == INVALID_REQUEST and "session" in message
                                         and ("not found" in message or "terminated" in message)):
        return True
    # The SDK's stand-in for an HTTP error status without a JSON-RPC body: a stateful server that
    # restarted and forgot our Mcp-Session-Id answers that way (server-everything: 400).
    return http and exc.code == INTERNAL_ERROR and exc.message == "Server returned an error response"


class ManagedSession:
    """A pooled session to one target, owned by the task running `run()`."""

    def __init__(self, key: SessionKey, target: Target, binding: Binding, opener: Opener, policy: SessionPolicy,
                 gate: ToolGate | None = None) -> None:
        self.key = key
        self.target = target
        self.binding = binding
        self.hosted = target.version.kind == "stdio"
        self.scrubber = Scrubber(binding.secrets())
        self.backchannel = BackChannel(opener.elicitation)
        self._opener = opener
        self._policy = policy
        self._client: Client | None = None
        self._wake = anyio.Event()          # set to end the current incarnation (stop or death)
        self._changed = anyio.Event()       # replaced at every state change
        self._stopping = False
        self._probing = False               # a timed-out call's child is being probed; new calls wait
        self._suspicion = anyio.Event()     # set when a hosted call timed out: probe the child
        self._tools: list[types.Tool] | None = None  # as the server listed them (the audit hashes these)
        self._shown: list[types.Tool] | None = None  # after review: pinned and cleaned (what models see)
        self._gate = gate
        self.withheld: frozenset[str] = frozenset()  # tools pinning holds back
        self.pin_error: ToolsChanged | None = None
        self.reviewed_at = 0.0
        self._tools_lock = anyio.Lock()
        self.state: State = "starting"
        self.error: str | None = None
        self.failure: ServerError | None = None  # the opener's own verdict, e.g. AuthRequired, raised as-is
        self.generation = 0
        self.restarts = 0
        self.in_flight = 0
        self.last_used = time.monotonic()
        self.limiter = anyio.CapacityLimiter(target.limits.concurrency or policy.concurrency)
        self.finished = anyio.Event()

    def __repr__(self) -> str:
        return f"<ManagedSession {self.target.ident} {self.state} gen={self.generation}>"

    # -- owner task -------------------------------------------------------------------------

    def _set_state(self, state: State, error: str | None = None) -> None:
        self.state, self.error = state, error
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.invalidate_tools()

    async def _listen_for_tool_changes(self, client: Client, *, task_status: TaskStatus[None]) -> None:
        """2026-07-28 sessions announce tool changes only on a `subscriptions/listen` stream."""
        started = False
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                task_status.started()
                started = True
                async for _event in subscription:
                    self.invalidate_tools()
        except Exception as exc:  # boundary: without the stream the cache just is not invalidated early
            log.info("server %s: no tools/list_changed stream: %s", self.target.name, _describe(exc))
        finally:
            if not started:
                task_status.started()

    async def run(self) -> None:
        """Open the session, hold it until stopped, and reopen it after it dies."""
        backoff = self._policy.restart_backoff
        failures = 0
        try:
            while not self._stopping:
                wake = self._wake = anyio.Event()
                started = time.monotonic()
                log_offset = self._opener.log_offset(self.target) if self.hosted else 0
                connected = False
                error, self.failure = "the session ended", None
                try:
                    await self._opener.prepare(self.target)
                except ServerError as exc:  # a package that cannot be installed: reported as it is
                    self.failure = exc
                    self._set_state("failed", exc.message)
                    return
                with anyio.CancelScope(deadline=anyio.current_time() + self._policy.connect_timeout) as deadline:
                    try:
                        async with self._opener.open(self.target, self.binding, on_message=self._on_message,
                                                     closed=wake, tenant=self.key.tenant,
                                                     backchannel=self.backchannel) as client:
                            tools = await _list_all_tools(client)
                            review = await self._review(tools)
                            async with anyio.create_task_group() as watchers:
                                if _modern_list_changed(client):
                                    await watchers.start(self._listen_for_tool_changes, client)
                                if self.hosted:
                                    self._suspicion = anyio.Event()
                                    watchers.start_soon(self._replace_if_busy, client, wake)
                                deadline.deadline = math.inf
                                self._client, self._tools, connected = client, tools, True
                                self._apply(review)
                                self.generation += 1
                                self._set_state("ready")
                                await wake.wait()
                                watchers.cancel_scope.cancel()
                    except ServerError as exc:
                        error, self.failure = exc.message, exc
                    except Exception as exc:  # boundary: every connect/transport failure lands here
                        error = _describe(exc)
                    finally:
                        self._client = None
                if deadline.cancelled_caught and not connected:
                    error = f"timed out after {self._policy.connect_timeout:g}s while connecting"
                if self.hosted and not self._stopping:
                    tail = self._opener.stderr_tail(self.target, log_offset, self.binding)
                    error += f" (server stderr: {tail})" if tail else ""
                if self._stopping:
                    break
                if not connected and (self.generation == 0 or failures >= MAX_FAILED_RESTARTS):
                    self._set_state("failed", error)
                    return
                failures = 0 if connected else failures + 1
                if connected:
                    self.restarts += 1
                    if time.monotonic() - started > 60:
                        backoff = self._policy.restart_backoff
                self._set_state("restarting", error)
                with anyio.move_on_after(backoff):
                    await self._stop_requested()
                backoff = min(max(backoff * 2, 0.05), self._policy.restart_backoff_max)
        finally:
            if self.state != "failed":
                self._set_state("closed", self.error)
            self.finished.set()

    async def _replace_if_busy(self, client: Client, wake: anyio.Event) -> None:
        """After a call timed out: end this incarnation unless the child answers a probe in time."""
        try:
            while True:
                await self._suspicion.wait()
                self._suspicion = anyio.Event()
                answered = False
                with anyio.move_on_after(self._policy.busy_probe_timeout):
                    with suppress(Exception):  # any answer, even an error, shows the child is listening
                        await client.list_tools()
                    answered = True
                if not answered:
                    log.warning("server %s: still busy %gs after a call timed out; restarting it", self.target.name,
                                self._policy.busy_probe_timeout)
                    wake.set()
                self._probing = False
                self._set_state(self.state, self.error)  # callers waiting for the verdict go on
        finally:
            self._probing = False

    def _suspect(self, generation: int) -> None:
        """A call of incarnation `generation` timed out: have the owner probe the child."""
        if self.hosted and generation == self.generation and self.state == "ready" and not self._wake.is_set():
            self._probing = True
            self._suspicion.set()

    async def _stop_requested(self) -> None:
        while not self._stopping:
            await self._changed.wait()

    def stop(self) -> None:
        """Ask the owner task to close the session (returns at once; await `finished`)."""
        self._stopping = True
        self._wake.set()
        self._set_state(self.state, self.error)

    def mark_dead(self, generation: int) -> None:
        """Report that the incarnation `generation` is dead; the owner replaces it."""
        if generation == self.generation:
            self._wake.set()

    # -- callers ----------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.state in ("starting", "ready", "restarting")

    async def client(self, timeout: float) -> tuple[Client, int]:
        """The ready client and its generation; waits through start-up and restarts."""
        if self.state == "ready" and self._client is not None and not self._wake.is_set() and not self._probing:
            return self._client, self.generation  # the hot path: no timer, no cancel scope
        with anyio.fail_after(timeout):
            while True:
                if self.state == "ready" and self._client is not None and not self._wake.is_set() and not self._probing:
                    return self._client, self.generation
                if self.state == "failed" and self.failure is not None:
                    raise self.failure
                if self.state in ("failed", "closed"):
                    raise ConnectError(f"server {self.target.name!r}: {self.error or 'session closed'}",
                                       server=self.target.name)
                await self._changed.wait()

    async def list_tools(self) -> list[types.Tool]:
        """The tools models may see, cached per incarnation and refreshed after `tools/list_changed`.

        Tools that pinning withholds are left out; `pin_error` then names them.
        """
        client, generation = await self.client(self._policy.connect_timeout)
        if self._tools is not None and self._shown is not None:
            return self._shown
        async with self._tools_lock:
            if self._tools is None or self._shown is None:
                try:
                    tools = await _list_all_tools(client)
                except MCPError as exc:
                    if _is_dead(exc, http=self.target.version.kind != "stdio"):
                        self.mark_dead(generation)
                    raise ConnectError(f"server {self.target.name!r}: {_describe(exc)}", server=self.target.name) from None
                review = await self._review(tools)
                if generation != self.generation:
                    return review.tools
                self._tools = tools
                self._apply(review)
            assert self._shown is not None
            return self._shown

    async def _review(self, tools: list[types.Tool]) -> Review:
        if self._gate is None:
            return Review([clean_tool(tool) for tool in tools])
        return await self._gate.review(self.target.slug or self.target.name, self.target.name, self.target.version_key
                                       if self.target.slug else None, tools)

    def _apply(self, review: Review) -> None:
        self._shown = review.tools
        self.withheld = frozenset(review.withheld)
        self.pin_error = ToolsChanged(self.target.name, self.target.ident, review.withheld) if review.withheld else None
        self.reviewed_at = time.monotonic()

    async def raw_tools(self) -> list[types.Tool]:
        """The tools as the server lists them right now, unreviewed (what registration pins)."""
        client, generation = await self.client(self._policy.connect_timeout)
        try:
            return await _list_all_tools(client)
        except MCPError as exc:
            raise ConnectError(f"server {self.target.name!r}: {_describe(exc)}", server=self.target.name) from None

    def invalidate_tools(self) -> None:
        """Forget the listing (the server changed its tools, or an admin approved pins): re-list next time."""
        self._tools = self._shown = None

    def cached_tools(self) -> list[types.Tool] | None:
        return self._tools

    def ready_tools(self) -> list[types.Tool] | None:
        """The cached tools when the session is ready and they need no listing, else None."""
        if self.state == "ready" and self._client is not None and not self._wake.is_set() and self._tools is not None:
            return self._shown
        return None

    async def call_tool(self, name: str, arguments: dict[str, Any], timeout: float) -> types.CallToolResult:
        """Call one tool. Raises CallTimeout, SessionLost (with `delivered`), ConnectError or MCPError."""
        self.in_flight += 1
        try:
            try:  # a free slot is taken without a checkpoint; the send below checkpoints anyway
                self.limiter.acquire_nowait()
            except anyio.WouldBlock:
                await self.limiter.acquire()
            try:
                client, generation = await self.client(self._policy.connect_timeout)
                if name in self.withheld:
                    raise ToolsChanged(self.target.name, self.target.ident, [name])
                request = types.CallToolRequest(params=types.CallToolRequestParams(name=name, arguments=arguments))
                try:
                    relay = current_relay.get()
                    if relay is not None:  # a gateway call: its client gets the server's back-channel traffic
                        with self.backchannel.attached(relay):
                            result = await client.session.send_request(
                                request, types.CallToolResult, request_read_timeout_seconds=timeout,
                                progress_callback=relay.progress)
                        relay.capture(result, self.scrubber.value)
                        return result
                    # send_request skips the SDK's output-schema check: the hub passes results through.
                    return await client.session.send_request(request, types.CallToolResult,
                                                             request_read_timeout_seconds=timeout)
                except MCPError as exc:
                    if exc.code == REQUEST_TIMEOUT:
                        self._suspect(generation)
                        raise CallTimeout(f"tool {name!r} timed out after {timeout:g}s") from None
                    if exc.code == MESSAGE_TOO_LARGE and self.hosted:
                        raise ResultTooLarge(f"tool {name!r}: {exc.message}", server=self.target.name) from None
                    if _is_dead(exc, http=self.target.version.kind != "stdio"):
                        self.mark_dead(generation)
                        lost = SessionLost(f"server {self.target.name!r} went away during the call ({exc.message})",
                                           server=self.target.name)
                        lost.delivered = exc.code != INVALID_REQUEST  # a 404 session means it never ran
                        raise lost from None
                    raise
            finally:
                self.limiter.release()
        finally:
            self.in_flight -= 1
            self.last_used = time.monotonic()


async def _list_all_tools(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(100):  # a paginator that never ends cannot hang the hub
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        if (cursor := page.next_cursor) is None:
            break
    return tools
