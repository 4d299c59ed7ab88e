"""The audit trail: a tamper-evident, durable record of every tool execution.

`AuditTrail` is opened on the Hub's exit stack over the records database: it migrates
the schema, runs the group-commit flusher (`writer.py`) and, when `audit_retention_days`
is set, prunes old records hourly (`store.py`). `Hub.execute` / `Hub.call_tool` commit
each call's intent (`intents.py`) in `begin()` before the call is sent, then build the
records (`record.py`) and wait in `record()` until they are committed, or, for the
completion loop, hand them over and wait in `Commits.wait()` before answering, so a
response never reports a tool call whose record could be lost, and a hub killed mid-call
leaves the call recorded as `interrupted`. The trail's heartbeat keeps this instance alive
in `audit_instances` and sweeps the intents of instances that are gone.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from ..database import Database
from ..errors import AuditUnavailable
from . import intents
from .record import AuditRecord, ToolHashes, server_error_record, tool_call_record
from .store import AuditStore, Filters, Verification
from .writer import AuditWriter

if TYPE_CHECKING:  # annotations only: the writer process imports this package and must not load the MCP SDK
    from ..executor import CallContext, ToolCall
    from ..sessions import ManagedSession

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
                 retention_days: float | None = None, on_commit: Callable[[int, float], None] | None = None,
                 instance_timeout: float = 60.0) -> None:
        """`database` serves queries, verification and retention; the writer process opens a connection
        of its own to the same database. `instance_timeout`: see `intents.py`."""
        self.store = AuditStore(database)
        self.writer = AuditWriter(database.where(), max_batch=max_batch, commit_delay=commit_delay, on_commit=on_commit)
        self.retention = retention_days * 86400 if retention_days else None
        self.instance = f"hub_{uuid.uuid4().hex}"
        self.instance_timeout = instance_timeout
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> AuditTrail:
        await self.store.migrate()
        async with self.store.database.transaction() as tx:  # registered before any intent of this instance
            await intents.heartbeat(tx, self.instance)
        await self.writer.start()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        tg.start_soon(self._heartbeat)
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
        tg.cancel_scope.cancel()  # the heartbeat and retention tasks
        await tg.__aexit__(None, None, None)  # an exception of the body propagates by itself
        with anyio.CancelScope(shield=True):
            try:  # calls the shutdown cut short: recorded now rather than after the timeout
                async with self.store.database.transaction() as tx:
                    await intents.sweep(tx, self.instance_timeout, instance=self.instance)
            except Exception as exc:  # the database is away: another hub (or our restart) sweeps them
                log.error("audit: unfinished calls not swept at shutdown: %s", type(exc).__name__)

    async def begin(self, calls: Sequence[ToolCall], sessions: Mapping[str, ManagedSession], context: CallContext,
                    limit: int, hashes: ToolHashes) -> list[str | None]:
        """Commit the intent of each call that has a session (see `intents.py`) and return once they are durable,
        `AuditUnavailable` if they could not be (the calls must then not be sent). The calls' record ids."""
        started = [intents.intent(call, session, context, limit, hashes)
                   if (session := sessions.get(call.server)) is not None else None for call in calls]
        rows = intents.rows([record for record in started if record is not None], self.instance)
        if rows:
            try:
                await asyncio.shield(await self.writer.submit([], rows))
            except AuditUnavailable:  # the writer's message says a tool ran: none did
                raise AuditUnavailable("the audit trail cannot record tool calls now (the records database is "
                                       "unreachable or failing), so none was sent; retry shortly") from None
        return [record.id if record is not None else None for record in started]

    async def record(self, records: Sequence[AuditRecord], commits: Commits | None = None,
                     done: Sequence[str] = ()) -> None:
        """Commit `records` (and forget the intents `done`, which they complete): return once they are durable
        (`AuditUnavailable` if that failed), or, with `commits`, once they are handed to the writer, leaving
        the wait to `commits.wait()`."""
        if not records:
            return
        if commits is None:
            await self.writer.write(records, done)
        else:
            commits.add(await self.writer.submit(records, done=done))

    async def _heartbeat(self) -> None:
        """Keep this instance alive in `audit_instances`; record the calls of instances that are gone."""
        while True:
            try:
                async with self.store.database.transaction() as tx:
                    await intents.heartbeat(tx, self.instance)
                    swept = await intents.sweep(tx, self.instance_timeout)
            except Exception as exc:  # a transient database error: try again next beat
                log.error("audit heartbeat failed: %s", type(exc).__name__)
            else:
                if swept:
                    log.warning("audit: %d calls of a hub instance that is gone recorded as interrupted", swept)
            await anyio.sleep(self.instance_timeout / 3)

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
