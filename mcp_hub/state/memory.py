"""The in-memory `StateStore`: one process only, lost on restart (the default, `memory://`)."""

from __future__ import annotations

import json
import time
from types import TracebackType

import anyio

from ..ratelimit import RateLimiter, TokenBuckets
from .base import JSON, Clock

_SWEEP_EVERY = 60.0  # seconds between sweeps of expired entries


class MemoryStore:
    """`StateStore` in a dict; `changed` wakes on writes from this process."""

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._values: dict[tuple[str, str], tuple[str, float]] = {}  # -> (JSON text, expires)
        self._events: dict[tuple[str, str], anyio.Event] = {}
        self._limiters: dict[tuple[int, int | None, Clock], TokenBuckets] = {}
        self._swept = clock()

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._values.clear()

    def _live(self, slot: tuple[str, str], now: float) -> str | None:
        found = self._values.get(slot)
        if found is None:
            return None
        if found[1] <= now:
            del self._values[slot]
            return None
        return found[0]

    def _set(self, slot: tuple[str, str], value: JSON, ttl: float, now: float) -> None:
        # Stored as JSON text so that both backends accept and return the same values.
        self._values[slot] = (json.dumps(value), now + ttl)
        self._notify(slot)
        if now - self._swept >= _SWEEP_EVERY:
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
            self._swept = now

    def _notify(self, slot: tuple[str, str]) -> None:
        event = self._events.pop(slot, None)
        if event is not None:
            event.set()

    async def put(self, tenant: str, key: str, value: JSON, ttl: float) -> None:
        self._set((tenant, key), value, ttl, self._clock())

    async def put_new(self, tenant: str, key: str, value: JSON, ttl: float) -> bool:
        now = self._clock()
        if self._live((tenant, key), now) is not None:
            return False
        self._set((tenant, key), value, ttl, now)
        return True

    async def get(self, tenant: str, key: str) -> JSON | None:
        text = self._live((tenant, key), self._clock())
        return None if text is None else json.loads(text)

    async def delete(self, tenant: str, key: str) -> None:
        if self._values.pop((tenant, key), None) is not None:
            self._notify((tenant, key))

    async def swap(self, tenant: str, key: str, expected: JSON, value: JSON | None, ttl: float) -> bool:
        now = self._clock()
        if self._live((tenant, key), now) != json.dumps(expected):
            return False
        if value is None:
            await self.delete(tenant, key)
        else:
            self._set((tenant, key), value, ttl, now)
        return True

    async def changed(self, tenant: str, key: str, timeout: float) -> None:
        event = self._events.setdefault((tenant, key), anyio.Event())
        with anyio.move_on_after(timeout):
            await event.wait()

    def limiter(self, per_minute: int, burst: int | None = None, *, clock: Clock | None = None) -> RateLimiter:
        slot = (per_minute, burst, clock or time.monotonic)
        if slot not in self._limiters:
            self._limiters[slot] = TokenBuckets(per_minute, burst, clock=slot[2])
        return self._limiters[slot]
