"""Group commit in a writer process: callers hand records over and wait until they are committed.

The hub starts one writer process (`child.py`) per audit trail and writes each caller's
records to its stdin as one JSON line; the child commits whatever has arrived in one
transaction and acknowledges it; a reader task here resolves the callers' futures. So
under load records share transactions by themselves, an idle hub commits at once, and the
event loop's share of a record is encoding one line and one wake-up per transaction.

If the child dies, the callers waiting on it get `AuditUnavailable` (the tool ran; its
result is withheld) and the next write starts a new child. The futures are asyncio's: the
hub runs on asyncio (uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import jsoncodec
from ..errors import AuditUnavailable
from .record import CONTENT, AuditRecord

log = logging.getLogger("mcp_hub.audit")

SENT = tuple(name for name in CONTENT if name not in ("seq", "prev_hash"))  # the child chains the records
START_TIMEOUT = 30.0  # seconds for the child to start and open its connection
STOP_TIMEOUT = 30.0  # seconds the child may take to commit what is queued at shutdown
BUFFER_LIMIT = 1 << 20  # bytes queued for the child before a writer waits for the pipe to drain


class AuditWriter:
    """The hub's side of the writer process; `start()` and `stop()` on the hub's lifespan."""

    def __init__(self, where: dict[str, Any], *, max_batch: int = 512, commit_delay: float = 0.0,
                 on_commit: Callable[[int, float], None] | None = None) -> None:
        """`where`: `Database.where()`, the database the child opens (`open_blocking_writer(**where)`);
        `commit_delay`: how long a transaction may wait for more writes while the hub is busy."""
        self._config = {"where": where, "max_batch": max_batch, "commit_delay": commit_delay}
        self._on_commit = on_commit  # (records, seconds) of each committed transaction, for metrics
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._next_id = 0
        self._closing = False
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        await self._spawn()

    async def stop(self) -> None:
        """Refuse new records; return once the child has committed what it got and ended."""
        self._closing = True
        process, reader = self._process, self._reader
        if process is None or process.stdin is None:
            return
        process.stdin.close()  # end of input: the child commits what arrived, acknowledges, exits
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.error("audit: the writer process did not finish within %g s; killed", STOP_TIMEOUT)
            process.kill()
            await process.wait()
        if reader is not None:
            await reader  # every acknowledgement read
        self._process = self._reader = None

    async def write(self, records: Sequence[AuditRecord], done: Sequence[str] = ()) -> None:
        """Return once `records` are committed; `AuditUnavailable` if they could not be."""
        # Cancelled (request timeout, client gone): the records are committed all the same.
        await asyncio.shield(await self.submit(records, done=done))

    async def submit(self, records: Sequence[AuditRecord], intents: Sequence[Sequence[Any]] = (),
                     done: Sequence[str] = ()) -> asyncio.Future[None]:
        """Hand `records` (and `intents`, rows of calls about to be sent: committed without waiting for more
        writes; `done`, the ids of intents the records complete) to the child; the future settles once they
        are committed (or could not be)."""
        if self._closing:
            raise AuditUnavailable("the audit trail is closed: the hub is shutting down")
        process = self._process
        if process is None or process.returncode is not None:
            process = await self._spawn()
        assert process.stdin is not None
        self._next_id += 1
        ident = self._next_id
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # an error nobody awaits any more (cancelled caller) is not logged
        self._pending[ident] = future
        contents = [{name: getattr(record, name) for name in SENT} for record in records]
        line: dict[str, Any] = {"id": ident, "t": time.monotonic(), "records": contents}  # t: the commit delay counts from here
        if intents:
            line.update(intents=list(intents), now=True)
        if done:
            line["done"] = list(done)
        process.stdin.write(jsoncodec.dumps(line) + b"\n")
        if process.stdin.transport.get_write_buffer_size() > BUFFER_LIMIT:
            await process.stdin.drain()
        return future

    async def _spawn(self) -> asyncio.subprocess.Process:
        async with self._starting:
            if self._process is not None and self._process.returncode is None:
                return self._process
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mcp_hub.audit.child", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE)
            assert process.stdin is not None and process.stdout is not None
            # The configuration (a database URL may hold a password) goes over the pipe, not argv or env.
            process.stdin.write(json.dumps(self._config).encode() + b"\n")
            try:
                ready = json.loads(await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT) or b"{}")
            except (TimeoutError, ValueError):
                ready = {"error": "no answer"}
            if ready.get("ready") is not True:
                if process.returncode is None:
                    process.kill()
                await process.wait()
                raise AuditUnavailable("the audit writer process could not open the records database "
                                       f"({ready.get('error', 'it exited')})")
            self._process = process
            self._reader = asyncio.create_task(self._read(process, process.stdout))
            return process

    async def _read(self, process: asyncio.subprocess.Process, stdout: asyncio.StreamReader) -> None:
        """Resolve the futures the child acknowledges; when it ends, fail the ones it did not."""
        try:
            async for line in stdout:
                ack = jsoncodec.loads(line)
                error = None if ack["ok"] else AuditUnavailable(
                    "a tool ran but its audit record could not be committed; "
                    f"the result is withheld ({ack['error']})")
                if error is not None:
                    log.error("audit: could not commit %d writes: %s", len(ack["ids"]), ack["error"])
                elif self._on_commit is not None:
                    self._on_commit(ack["records"], ack["seconds"])
                for ident in ack["ids"]:
                    _settle(self._pending.pop(ident, None), error)
        finally:
            await process.wait()
            lost = [self._pending.pop(ident) for ident in list(self._pending)]
            if lost:
                log.error("audit: the writer process ended (status %s) with %d writes unacknowledged",
                          process.returncode, len(lost))
            for future in lost:
                _settle(future, AuditUnavailable("a tool ran but the audit writer stopped before committing its "
                                                 "record; the result is withheld"))


def _settle(future: asyncio.Future[None] | None, error: BaseException | None) -> None:
    if future is None or future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        with contextlib.suppress(BaseException):
            future.exception()
