"""The stdio client transport for hosted servers: linear-time reading, bounded messages.

It replaces the MCP SDK's `mcp.client.stdio.stdio_client`, whose reader decodes stdout
to text and, for every chunk, joins the partial line kept so far with the chunk and
splits the whole again: a message of n bytes costs O(n² / chunk) (each doubling of a
result quadruples the hub's CPU; bench/README.md has figures), and any member can ask
`hub/sql` for such a result. Here a message's chunks are kept in a list, the newline is looked for only in
each new chunk, and the message is joined once.

A message over `max_message_bytes` is never buffered: the rest of it is skipped up to
its newline, so the hub holds at most the limit (plus one read) per child. When the
message is a response whose id shows in its first or last bytes (where the Python and
TypeScript SDKs write it), the request it answers fails with `MESSAGE_TOO_LARGE`;
otherwise (a notification, a server request, an id buried in the middle) it becomes a
transport error for the session's message handler, like an unparsable line, and a call
waiting for it runs into its timeout. A server can only fail its own session's calls.

When the hub abandons a request (its call timed out, or its caller went away) it sends
`notifications/cancelled`; a child running code that never yields (a CPU loop, a
catastrophic regex, work in a worker thread) cannot honour it. So after each cancel the
transport holds further writes for about a second and, when nothing else is outstanding,
samples the states of the child's threads (its whole process tree, from /proc): if one
stays runnable the child is still busy with abandoned work, and the transport ends the
session (the owner restarts the child; the held writes fail as a lost connection).

Spawning and closing follow the SDK's version: the child gets the SDK's default
environment plus `server.env`, its own session (so its own process group), and on close
its stdin is closed, it gets 2 s to exit, then SIGTERM to the whole group and 2 s later
SIGKILL, all shielded from cancellation, so no descendant outlives the session. POSIX only.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, TextIO

import anyio
import anyio.lowlevel
import mcp.types as types
from anyio.abc import AsyncResource, Process
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import StdioServerParameters
from mcp.client.stdio import get_default_environment
from mcp.os.posix.utilities import terminate_posix_process_tree
from mcp.shared.message import SessionMessage

log = logging.getLogger("mcp_hub.stdio")

# The JSON-RPC error code of a response the hub dropped for its size (implementation-defined
# server error range; MCP itself uses -32000, -32001, -32020, -32022 and -32042).
MESSAGE_TOO_LARGE = -32097

PROCESS_TERMINATION_TIMEOUT = 2.0  # for the child to exit by itself once its stdin closes
FORCE_KILL_TIMEOUT = 2.0  # between SIGTERM and SIGKILL to the group
_KILL_REAP_TIMEOUT = 2.0  # for the event loop to see the killed child exit
_WRITER_FLUSH_TIMEOUT = 0.5  # for messages already accepted to reach the child before stdin closes
_READ_SIZE = 1 << 20  # at most what one read returns (the pipe reader holds less anyway)
_EDGE = 256  # bytes kept from each end of an over-limit message, to find its id
_BUSY_GRACE = 0.2  # for the child to act on a cancellation before its threads are sampled
_BUSY_SAMPLES = 12  # thread-state samples after a cancellation, _BUSY_INTERVAL apart
_BUSY_INTERVAL = 0.05
_BUSY_SHARE = 0.75  # of the samples with a runnable thread: still busy

_ID = rb'(-?\d{1,18}|"[^"\\]{0,128}")'
_VERSION = rb'(?:\s*"jsonrpc"\s*:\s*"2\.0"\s*,)?'
_HEAD_ID = re.compile(rb'\A\s*\{' + _VERSION + rb'\s*"id"\s*:\s*' + _ID + rb'\s*,' + _VERSION + rb'\s*"(?:result|error)"\s*:')
_HEAD_RESPONSE = re.compile(rb'\A\s*\{' + _VERSION + rb'\s*"(?:result|error)"\s*:')
_TAIL_ID = re.compile(rb'"id"\s*:\s*' + _ID + rb'\s*(?:,\s*"jsonrpc"\s*:\s*"2\.0"\s*)?\}\s*\Z')

ReadStream = MemoryObjectReceiveStream[SessionMessage | Exception]
WriteStream = MemoryObjectSendStream[SessionMessage]


class MessageTooLarge(ValueError):
    """A message from the server was over the limit and dropped; its request could not be told."""


def _response_id(head: bytes, tail: bytes) -> int | str | None:
    """The id of a response from its first and last bytes, or None when it is not clearly a response."""
    found = _HEAD_ID.match(head)
    if found is None and _HEAD_RESPONSE.match(head):
        found = _TAIL_ID.search(tail)
    if found is None:
        return None
    value = json.loads(found.group(1))
    return value if isinstance(value, int | str) else None


def too_large(head: bytes, tail: bytes, size: int, limit: int) -> SessionMessage | Exception:
    """What the session gets instead of an over-limit message of `size` bytes."""
    text = f"the server's message of {size} bytes was over the hub's limit of {limit} (stdio_message_max_bytes); dropped"
    request = _response_id(head, tail)
    if request is None:
        log.warning("dropped a message from a hosted server: %s", text)
        return MessageTooLarge(text)
    error = types.ErrorData(code=MESSAGE_TOO_LARGE, message=text, data={"limit": limit, "bytes": size})
    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=request, error=error))


class LineReader:
    """Splits a byte stream into messages in linear time, skipping those over `limit` bytes."""

    def __init__(self, limit: int, parse: Any) -> None:
        self.limit = limit
        self._parse = parse  # bytes -> SessionMessage | Exception
        self._parts: list[bytes] = []
        self._size = 0
        self._skipped = 0  # > 0 while skipping an over-limit message: its bytes so far
        self._head = b""
        self._tail = b""

    @property
    def buffered(self) -> int:
        """Bytes of the current message held (never over `limit`)."""
        return self._size

    def feed(self, chunk: bytes) -> list[SessionMessage | Exception]:
        """The messages that `chunk` completes, in order."""
        out: list[SessionMessage | Exception] = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if self._skipped:
                self._skipped += len(piece)
                self._tail = (self._tail + piece[-_EDGE:])[-_EDGE:]
            elif self._size + len(piece) > self.limit:
                self._head = _first_bytes([*self._parts, piece])
                self._tail = (b"".join(self._parts[-1:]) + piece)[-_EDGE:]
                self._skipped = self._size + len(piece)
                self._parts, self._size = [], 0
            elif piece:
                self._parts.append(piece)
                self._size += len(piece)
            if end < 0:
                return out
            if self._skipped:
                out.append(too_large(self._head, self._tail, self._skipped, self.limit))
            elif self._parts:
                line = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
                if line.strip():
                    out.append(self._parse(line))
            self._parts, self._size, self._skipped, self._head, self._tail = [], 0, 0, b"", b""
            start = end + 1


def _runnable(pid: int) -> bool | None:
    """Whether a thread of `pid` or of a descendant is running or runnable; None without /proc."""
    pending, seen = [pid], 0
    while pending and seen < 256:  # a fork bomb's tree is the sandbox's to bound, not ours to walk
        current = pending.pop()
        seen += 1
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            if current == pid:
                return None if not os.path.isdir("/proc/self/task") else False
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/stat", "rb") as stat:
                    if stat.read().rpartition(b")")[2][1:2] == b"R":
                        return True
                with open(f"/proc/{current}/task/{task}/children", "rb") as children:
                    pending += [int(child) for child in children.read().split()]
            except (OSError, ValueError):
                continue
    return False


class AbandonWatch:
    """Tracks the hub's outstanding requests to one child and tells whether it is busy after a cancel."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.outstanding: set[str] = set()

    def sent(self, message: Any) -> bool:
        """Note a message written to the child; True when it abandons a request (check the child now)."""
        if isinstance(message, types.JSONRPCRequest) and message.method != "subscriptions/listen":
            self.outstanding.add(str(message.id))  # (a listen stream stays open for good: it is not work)
        elif isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled":
            self.outstanding.discard(str((message.params or {}).get("requestId")))
            return True
        return False

    def received(self, item: SessionMessage | Exception) -> None:
        """Note a message read from the child (a response settles its request)."""
        if isinstance(item, SessionMessage) and isinstance(item.message, types.JSONRPCResponse | types.JSONRPCError):
            self.outstanding.discard(str(item.message.id))

    async def busy(self) -> bool:
        """Whether the child keeps a thread runnable while no request is outstanding (about 0.8 s)."""
        await anyio.sleep(_BUSY_GRACE)
        runnable = 0
        for _ in range(_BUSY_SAMPLES):
            if self.outstanding:
                return False  # other work is legitimately running: the session's probe judges
            state = _runnable(self.pid)
            if state is None:
                return False  # no /proc: nothing to judge by
            runnable += state
            await anyio.sleep(_BUSY_INTERVAL)
        return runnable >= _BUSY_SHARE * _BUSY_SAMPLES


def _first_bytes(parts: list[bytes]) -> bytes:
    head = b""
    for part in parts:
        head += part[:_EDGE - len(head)]
        if len(head) >= _EDGE:
            break
    return head


def _parser(server: StdioServerParameters) -> Any:
    utf8 = server.encoding.lower().replace("_", "-") in ("utf-8", "utf8") and server.encoding_error_handler == "strict"

    def parse(line: bytes) -> SessionMessage | Exception:
        try:
            data: bytes | str = line if utf8 else line.decode(server.encoding, server.encoding_error_handler)
            return SessionMessage(types.jsonrpc_message_adapter.validate_json(data, by_name=False))
        except ValueError as exc:  # pydantic's ValidationError and UnicodeDecodeError both are
            log.warning("a hosted server wrote a line that is not a JSON-RPC message (%d bytes)", len(line))
            return exc

    return parse


@asynccontextmanager
async def stdio_client(server: StdioServerParameters, errlog: TextIO, *,
                       max_message_bytes: int) -> AsyncIterator[tuple[ReadStream, WriteStream]]:
    """Spawn `server` and exchange newline-delimited JSON-RPC messages with it over its stdin/stdout.

    Yields the read stream (messages, or exceptions for lines that are not one) and the
    write stream, like the SDK's `stdio_client`.

    Raises:
        OSError: if the process cannot be spawned.
    """
    process = await anyio.open_process([server.command, *server.args], env=get_default_environment() | (server.env or {}),
                                       stderr=errlog, cwd=server.cwd, start_new_session=True)
    # No await between the spawn and the task group: a cancellation there would leak the child.
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
    reader = LineReader(max_message_bytes, _parser(server))
    watch = AbandonWatch(process.pid)
    writer_done = anyio.Event()
    shutting_down = False

    async def stdout_reader() -> None:
        assert process.stdout is not None
        try:
            async with read_writer:
                try:
                    while True:
                        try:
                            chunk = await process.stdout.receive(_READ_SIZE)
                        except anyio.EndOfStream:
                            return
                        for item in reader.feed(chunk):
                            watch.received(item)
                            try:
                                await read_writer.send(item)
                            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                                return  # the session is gone; the drain below remains
                finally:
                    await _drain(process)
        except anyio.ClosedResourceError:
            pass  # our own shutdown closed stdout under the read
        except (anyio.BrokenResourceError, ConnectionError):
            if not shutting_down:
                log.warning("reading a hosted server's stdout failed mid-session", exc_info=True)

    async def stdin_writer() -> None:
        assert process.stdin is not None
        try:
            async with write_reader:
                async for message in write_reader:
                    text = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    await process.stdin.send(text.encode(server.encoding, server.encoding_error_handler))
                    # Checked here, in the writer, so that nothing more is written meanwhile.
                    if watch.sent(message.message) and await watch.busy():
                        log.warning("hosted server process %d is still busy after a request was abandoned; "
                                    "ending its session", process.pid)
                        await read_writer.aclose()
                        return
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await read_writer.aclose()  # the child may live on: the session must see the end, not hang
        finally:
            writer_done.set()

    async def shutdown() -> None:
        read_stream.close()  # the reader drains, so a child blocked writing can read its stdin
        write_stream.close()
        with anyio.move_on_after(_WRITER_FLUSH_TIMEOUT):
            await writer_done.wait()
        await _stop(process)
        for stream in (read_stream, write_stream, read_writer, write_reader):
            await stream.aclose()
        await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stdout_reader)
        tg.start_soon(stdin_writer)
        try:
            yield read_stream, write_stream
        finally:
            shutting_down = True
            with anyio.CancelScope(shield=True):  # bounded; the child must not outlive the session
                await shutdown()
            tg.cancel_scope.cancel()  # a survivor holding a pipe end must not keep the tasks waiting


async def _drain(process: Process) -> None:
    """Discard the child's remaining stdout, so one flushing output at exit does not block on a full pipe."""
    assert process.stdout is not None
    with anyio.CancelScope(shield=True), suppress(anyio.EndOfStream, anyio.ClosedResourceError,
                                                  anyio.BrokenResourceError, OSError):
        while True:
            await process.stdout.receive(_READ_SIZE)


async def _stop(process: Process) -> None:
    """Close stdin, wait out the grace period, then terminate and kill the whole process group."""
    assert process.stdin is not None and process.stdout is not None
    await _close(process.stdin)
    if not await _exited(process, PROCESS_TERMINATION_TIMEOUT):
        await terminate_posix_process_tree(process, FORCE_KILL_TIMEOUT)
        if not await _exited(process, _KILL_REAP_TIMEOUT):
            log.warning("hosted server process %d is still alive after SIGKILL; abandoning it", process.pid)
    else:
        # The leader left; descendants in its group may not have. The group's id is the leader's pid.
        await terminate_posix_process_tree(process, FORCE_KILL_TIMEOUT)
    await _close(process.stdout)
    # The asyncio subprocess transport would otherwise stay open (and warn when collected)
    # while a survivor holds a pipe end; nothing public exposes it.
    transport = getattr(getattr(process, "_process", None), "_transport", None)
    close = getattr(transport, "close", None)
    if callable(close):
        with suppress(PermissionError):
            close()


async def _close(stream: AsyncResource) -> None:
    with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.aclose()


async def _exited(process: Process, timeout: float) -> bool:
    """Whether the child exited within `timeout` (polling returncode: `wait()` also waits for pipe EOF)."""
    deadline = anyio.current_time() + timeout
    while process.returncode is None:
        if anyio.current_time() >= deadline:
            return False
        await anyio.sleep(0.01)
    return True
