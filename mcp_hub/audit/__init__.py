"""The audit trail: a tamper-evident, durable record of every tool execution.

`AuditTrail` is opened on the Hub's exit stack over the records database: it migrates
the schema, runs the group-commit flusher (`writer.py`) and, when `audit_retention_days`
is set, prunes old records hourly (`store.py`). `Hub.execute` / `Hub.call_tool` build
the records (`record.py`) and wait in `record()` until they are committed, or, for the
completion loop, hand them over and wait in `Commits.wait()` before answering, so a
response never reports a tool call whose record could be lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from ..database import Database
from .record import AuditRecord, server_error_record, tool_call_record
from .store import AuditStore, Filters, Verification
from .writer import AuditWriter

__all__ = ["AuditRecord", "AuditStore", "AuditTrail", "Commits", "Filters", "Verification", "server_error_record",
           "tool_call_record"]

log = logging.getLogger("mcp_hub.audit")
PRUNE_EVERY = 3600.0  # seconds between retention runs (capped at a tenth of the retention age)


class Commits:
    """The audit commits one request has handed over and not yet waited for.

    The completion loop sends a tool's result on to the model while its record is being
    committed, and waits here before anything that reports or derives from the result
    reaches the caller, so the commit runs alongside the next model call instead of before it.
    """

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[None]] = []

    def __bool__(self) -> bool:
        return bool(self._futures)

    def add(self, future: asyncio.Future[None]) -> None:
        self._futures.append(future)

    async def wait(self) -> None:
        """Return once every handed-over record is committed; `AuditUnavailable` if one could not be."""
        while self._futures:
            # Shielded: a cancelled caller leaves the records to be committed all the same.
            await asyncio.shield(self._futures[0])
            self._futures.pop(0)


class AuditTrail:
    """The store plus its writer and retention task; an async context manager."""

    def __init__(self, database: Database, *, max_batch: int = 512, commit_delay: float = 0.0,
                 retention_days: float | None = None, on_commit: Callable[[int, float], None] | None = None) -> None:
        """`database` serves queries, verification and retention; the writer process opens a connection
        of its own to the same database."""
        self.store = AuditStore(database)
        self.writer = AuditWriter(database.where(), max_batch=max_batch, commit_delay=commit_delay, on_commit=on_commit)
        self.retention = retention_days * 86400 if retention_days else None
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> AuditTrail:
        await self.store.migrate()
        await self.writer.start()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        if self.retention is not None:
            tg.start_soon(self._prune_periodically, self.retention)
        self._tg = tg
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        tg, self._tg = self._tg, None
        if tg is None:
            return
        with anyio.CancelScope(shield=True):
            await self.writer.stop()  # the writer process commits what it got, then ends
        tg.cancel_scope.cancel()  # the retention task
        await tg.__aexit__(None, None, None)  # an exception of the body propagates by itself

    async def record(self, records: Sequence[AuditRecord], commits: Commits | None = None) -> None:
        """Commit `records`: return once they are durable (`AuditUnavailable` if that failed), or, with
        `commits`, once they are handed to the writer, leaving the wait to `commits.wait()`."""
        if not records:
            return
        if commits is None:
            await self.writer.write(records)
        else:
            commits.add(await self.writer.submit(records))

    async def _prune_periodically(self, older_than: float) -> None:
        while True:
            try:
                removed = await self.store.prune(older_than)
            except Exception as exc:  # a transient database error: try again next time
                log.error("audit retention: pruning failed: %s", type(exc).__name__)
            else:
                if removed:
                    log.info("audit retention: pruned %d records", sum(removed.values()))
            await anyio.sleep(min(PRUNE_EVERY, older_than / 10))
