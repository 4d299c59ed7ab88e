"""Deferred completions: `"deferred": true` answers at once; the work runs in the background.

The work runs in a task group the `Hub` owns (opened in its lifespan), not in the
request's task, so it goes on when the client disconnects. Its record lives in the
state store under `deferred:<request_id>`, per tenant, so every hub instance on the
same store answers `GET /v1/chat/deferred-completion/{request_id}` and only the
tenant that created it can read it:

- `{"status": "running", "instance"}` while it runs, written with a lease of
  `deferred_lease` seconds that a heartbeat renews every third of the lease. An
  instance that dies stops renewing, and the record lapses: readers then get 404,
  as for an unknown id, at most `deferred_lease` seconds after the death.
- `{"status": "done", "status_code": 200, "body"}` once finished (the completion,
  scrubbed like any response), or `"failed"` with the error's status and body,
  kept `deferred_ttl` seconds. A hub that shuts down cancels its running work and
  records it as failed (503 `deferred_interrupted`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .errors import DeferredInterrupted, HubError, StateUnavailable
from .state import StateStore

log = logging.getLogger("mcp_hub.deferred")
Work = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]  # -> (HTTP status, JSON body)
_SETTLE_TIMEOUT = 10.0


class DeferredCompletions:
    """Starts deferred work on the hub's task group and keeps its records in the state store."""

    def __init__(self, state: StateStore, tasks: TaskGroup, *, ttl: float, lease: float, instance: str) -> None:
        self.state = state
        self.tasks = tasks
        self.ttl = ttl
        self.lease = lease
        self.instance = instance

    @staticmethod
    def _key(request_id: str) -> str:
        return f"deferred:{request_id}"

    async def start(self, tenant: str, work: Work) -> str:
        """Record the request as running, start `work` in the background; its request id."""
        request_id = f"defer_{uuid.uuid4().hex}"
        await self.state.put(tenant, self._key(request_id), self._running(), self.lease)
        self.tasks.start_soon(self._run, tenant, request_id, work, name=f"deferred {request_id}")
        return request_id

    async def read(self, tenant: str, request_id: str) -> dict[str, Any] | None:
        """The record of `request_id` for `tenant`, or None when unknown, expired or lost."""
        record = await self.state.get(tenant, self._key(request_id))
        return record if isinstance(record, dict) else None

    def _running(self) -> dict[str, Any]:
        return {"status": "running", "instance": self.instance}

    async def _run(self, tenant: str, request_id: str, work: Work) -> None:
        record: dict[str, Any] | None = None
        try:
            async with anyio.create_task_group() as heartbeat:
                heartbeat.start_soon(self._heartbeat, tenant, request_id)
                try:
                    status, body = await work()
                finally:
                    heartbeat.cancel_scope.cancel()
            record = {"status": "done" if status == 200 else "failed", "status_code": status, "body": body}
        except anyio.get_cancelled_exc_class():
            error: HubError = DeferredInterrupted("the hub instance running this deferred completion shut down; submit it again")
            record = {"status": "failed", "status_code": error.status, "body": error.to_body()}
            raise
        except Exception:  # boundary: a bug must not take the hub's task group (and the hub) down
            log.exception("deferred completion %s failed", request_id)
            error = HubError("internal error")
            record = {"status": "failed", "status_code": error.status, "body": error.to_body()}
        finally:
            if record is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_SETTLE_TIMEOUT):
                    try:
                        await self.state.put(tenant, self._key(request_id), record, self.ttl)
                    except StateUnavailable:  # its running record lapses with the lease: polls then say unknown
                        log.error("deferred completion %s: its result could not be stored (state store unreachable)",
                                  request_id)

    async def _heartbeat(self, tenant: str, request_id: str) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            try:
                await self.state.put(tenant, self._key(request_id), self._running(), self.lease)
            except StateUnavailable:  # the work goes on; the next beat tries again
                log.warning("deferred completion %s: heartbeat missed (state store unreachable)", request_id)
