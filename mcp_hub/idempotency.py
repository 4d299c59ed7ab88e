"""Idempotency-Key handling: a retried request gets the first one's response.

Entries are per tenant and key, and remember a fingerprint of the request body: the
same key with a different body is refused. While the first request runs, a retry
waits for it. A request that failed before any MCP tool ran is forgotten, so its
retry runs afresh; once a tool has run, even a failure is kept, so that no tool
runs twice because of a retry.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import anyio

from .errors import IdempotencyConflict


@dataclass
class StoredResponse:
    """What the first request answered: a JSON body, or the frames of an event stream."""

    status: int
    body: bytes = b""
    frames: list[str] = field(default_factory=list)
    streamed: bool = False


@dataclass
class _Entry:
    fingerprint: str
    expires: float
    done: anyio.Event = field(default_factory=anyio.Event)
    response: StoredResponse | None = None


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class IdempotencyStore:
    """In-memory idempotency records with a time to live."""

    def __init__(self, ttl: float = 24 * 3600.0, wait: float = 600.0) -> None:
        self.ttl = ttl
        self.wait = wait
        self._entries: dict[tuple[str, str], _Entry] = {}

    def _prune(self, now: float) -> None:
        for key in [key for key, entry in self._entries.items() if entry.expires < now and entry.done.is_set()]:
            del self._entries[key]

    async def claim(self, tenant: str, key: str, body_fingerprint: str) -> StoredResponse | None:
        """None: the caller runs the request and must `complete` or `abandon`. Else the stored response."""
        now = time.monotonic()
        self._prune(now)
        while True:
            entry = self._entries.get((tenant, key))
            if entry is None:
                self._entries[(tenant, key)] = _Entry(fingerprint=body_fingerprint, expires=now + self.ttl)
                return None
            if entry.fingerprint != body_fingerprint:
                raise IdempotencyConflict("this Idempotency-Key was used with a different request body",
                                          param="Idempotency-Key")
            with anyio.fail_after(self.wait):
                await entry.done.wait()
            if entry.response is not None:
                return entry.response
            # The first attempt was abandoned: loop to claim it afresh.

    def complete(self, tenant: str, key: str, response: StoredResponse) -> None:
        entry = self._entries.get((tenant, key))
        if entry is not None:
            entry.response = response
            entry.done.set()

    def abandon(self, tenant: str, key: str) -> None:
        entry = self._entries.pop((tenant, key), None)
        if entry is not None:
            entry.done.set()
