"""Idempotency-Key handling: a retried request gets the first one's response.

Entries are per tenant and key, and remember a fingerprint of the request body: the
same key with a different body is refused. While the first request runs, a retry
waits for it. A request that failed before any MCP tool ran is forgotten, so its
retry runs afresh; once a tool has run, even a failure is kept, so that no tool
runs twice because of a retry.

The records live in the hub's `StateStore`, so a retry that lands on another hub
instance sharing the store is answered the same way. A claim is one atomic
`put_new` ({"state": "running"}, held for `lease` seconds so that the claim of an
instance that died lapses, and naming the claim by a random `claim` id); completing
replaces it with {"state": "done", "response"} for `ttl` seconds, and abandoning deletes
it, each only while the record is still this claim (`swap`): a claim that lapsed and was
taken over by a retry is not touched. A waiting retry re-reads the record after each
`changed` hint, backing off from 20 ms to 500 ms between reads.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import anyio

from .errors import IdempotencyConflict, StateUnavailable
from .state import StateStore

log = logging.getLogger("mcp_hub.idempotency")
_FIRST_POLL, _MAX_POLL = 0.02, 0.5
_SETTLE_TIMEOUT = 10.0  # seconds a complete/abandon may take, shielded from cancellation


@dataclass
class StoredResponse:
    """What the first request answered: a JSON body, or the frames of an event stream."""

    status: int
    body: bytes = b""
    frames: list[str] = field(default_factory=list)
    streamed: bool = False

    def to_json(self) -> dict[str, Any]:
        try:
            body: dict[str, str] = {"body": self.body.decode()}
        except UnicodeDecodeError:
            body = {"body_b64": base64.b64encode(self.body).decode()}
        return {"status": self.status, **body, "frames": self.frames, "streamed": self.streamed}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoredResponse:
        body = base64.b64decode(data["body_b64"]) if "body_b64" in data else data["body"].encode()
        return cls(status=data["status"], body=body, frames=list(data["frames"]), streamed=data["streamed"])


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class IdempotencyStore:
    """Idempotency records in a `StateStore`, kept `ttl` seconds; a retry waits up to `wait`."""

    def __init__(self, state: StateStore, ttl: float = 24 * 3600.0, wait: float = 600.0,
                 lease: float | None = None) -> None:
        self.state = state
        self.ttl = ttl
        self.wait = wait
        self.lease = lease if lease is not None else wait
        self._claimed: dict[tuple[str, str], dict[str, str]] = {}  # this process's running claims -> their record

    @staticmethod
    def _key(key: str) -> str:
        return f"idempotency:{key}"

    async def claim(self, tenant: str, key: str, body_fingerprint: str) -> StoredResponse | None:
        """None: the caller runs the request and must `complete` or `abandon`. Else the stored response."""
        slot = self._key(key)
        poll = _FIRST_POLL
        with anyio.fail_after(self.wait):
            while True:
                record = await self.state.get(tenant, slot)
                if record is None:
                    running = {"state": "running", "fingerprint": body_fingerprint, "claim": secrets.token_hex(16)}
                    if await self.state.put_new(tenant, slot, running, self.lease):
                        self._claimed[(tenant, key)] = running
                        return None
                    continue  # another attempt claimed it meanwhile
                if record["fingerprint"] != body_fingerprint:
                    raise IdempotencyConflict("this Idempotency-Key was used with a different request body",
                                              param="Idempotency-Key")
                if record["state"] == "done":
                    return StoredResponse.from_json(record["response"])
                # Running elsewhere: wait for it; if it is abandoned the record vanishes and we claim it.
                await self.state.changed(tenant, slot, poll)
                poll = min(poll * 2, _MAX_POLL)

    async def complete(self, tenant: str, key: str, response: StoredResponse) -> None:
        running = self._claimed.pop((tenant, key), None)
        if running is None:
            return  # not claimed here (or already settled)
        record = {"state": "done", "fingerprint": running["fingerprint"], "response": response.to_json()}
        slot = self._key(key)
        with anyio.CancelScope(shield=True), anyio.move_on_after(_SETTLE_TIMEOUT):
            # Our claim lapsed (a run longer than the lease)? Store the response if the slot is free;
            # a retry that claimed it meanwhile is running the request itself and keeps its claim.
            try:
                if not await self.state.swap(tenant, slot, running, record, self.ttl) \
                        and not await self.state.put_new(tenant, slot, record, self.ttl):
                    log.warning("idempotency: a request outlived its claim's lease (%g s); a retry took it over",
                                self.lease)
            except StateUnavailable:  # the answer still goes out; a retry after the lease runs afresh
                log.error("idempotency: a response could not be stored (state store unreachable)")

    async def abandon(self, tenant: str, key: str) -> None:
        running = self._claimed.pop((tenant, key), None)
        if running is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(_SETTLE_TIMEOUT):
            try:
                await self.state.swap(tenant, self._key(key), running, None, 0)  # only our own claim
            except StateUnavailable:  # the claim lapses with its lease
                log.error("idempotency: a claim could not be released (state store unreachable)")
