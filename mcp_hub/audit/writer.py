"""Group commit: callers hand records over and wait until they are committed; one flusher commits.

While one transaction is being committed, the records of every caller that arrives queue
up; the next transaction takes all of them (up to `max_batch` records). And when other tool
executions are still running (`producers()`, like PostgreSQL's `commit_delay` with
`commit_siblings`), the flusher waits for their records up to `linger` seconds before it
commits, so that concurrent requests share one transaction. An idle hub commits at once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

from ..errors import AuditUnavailable
from .record import AuditRecord
from .store import AuditStore

log = logging.getLogger("mcp_hub.audit")


@dataclass
class _Waiting:
    records: Sequence[AuditRecord]
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class AuditWriter:
    """Commits records in batches; `run()` is the flusher task, `write()` is for any task."""

    def __init__(self, store: AuditStore, max_batch: int = 512,
                 on_commit: Callable[[int, float], None] | None = None, *,
                 producers: Callable[[], int] | None = None, linger: float = 0.0) -> None:
        self.store = store
        self.max_batch = max_batch
        self._producers = producers  # tool executions whose records are still to come
        self._linger = linger
        self._on_commit = on_commit  # (records, seconds) of each committed transaction, for metrics
        self._queue: deque[_Waiting] = deque()
        self._wake = anyio.Event()
        self._closing = False
        self.finished = anyio.Event()  # set when `run()` has returned

    async def write(self, records: Sequence[AuditRecord]) -> None:
        """Return once `records` are committed; `AuditUnavailable` if they could not be."""
        if self._closing:
            raise AuditUnavailable("the audit trail is closed: the hub is shutting down")
        waiting = _Waiting(records)
        self._queue.append(waiting)
        self._wake.set()
        await waiting.done.wait()  # cancelled (request timeout): the records are committed all the same
        if waiting.error is not None:
            raise AuditUnavailable("a tool ran but its audit record could not be committed; "
                                   f"the result is withheld ({type(waiting.error).__name__})")

    def close(self) -> None:
        """Refuse new records; `run()` returns once the queued ones are committed."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        try:
            await self._flush_until_closed()
        finally:
            self.finished.set()

    async def _flush_until_closed(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            if self._linger and self._producers is not None and not self._closing:
                await self._gather()
            while self._queue:
                batch: list[_Waiting] = []
                size = 0
                while self._queue and (not batch or size + len(self._queue[0].records) <= self.max_batch):
                    batch.append(self._queue.popleft())
                    size += len(batch[-1].records)
                await self._commit(batch)
            if self._closing:
                return

    async def _gather(self) -> None:
        """Wait (at most `linger`) while other executions are about to hand over records."""
        assert self._producers is not None
        with anyio.move_on_after(self._linger):
            while self._producers() > 0 and sum(len(w.records) for w in self._queue) < self.max_batch:
                await self._wake.wait()
                self._wake = anyio.Event()

    async def _commit(self, batch: list[_Waiting]) -> None:
        records = [record for waiting in batch for record in waiting.records]
        started = time.perf_counter()
        try:
            await self.store.append(records)
        except Exception as exc:  # the callers get AuditUnavailable; the flusher goes on
            log.error("audit: could not commit %d records: %s", len(records), type(exc).__name__)
            for waiting in batch:
                waiting.error = exc
        else:
            if self._on_commit is not None:
                self._on_commit(len(records), time.perf_counter() - started)
        finally:
            for waiting in batch:
                waiting.done.set()
