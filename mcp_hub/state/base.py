"""The state store interface: JSON values with a time to live, per tenant.

State that several hub processes must share (idempotency records, rate-limit buckets,
later handoff loop state and deferred results) lives behind `StateStore`. The
backends (`memory.py`, `redis.py`) are chosen by the scheme of `state_url`.

Rule: the store never holds plaintext credentials. Request credentials, provider keys
and OAuth tokens stay in the process that received them; a resumed request supplies
them again, or what is stored is sealed so that only the hub can decrypt it
(`envelopes.py`). A stored response body must not echo a credential either.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from ..ratelimit import RateLimiter

JSON = Any  # a value `json.dumps` accepts
Clock = Callable[[], float]


class StateStore(Protocol):
    """Keyed JSON values with a TTL (seconds), namespaced by tenant. An async context manager."""

    async def __aenter__(self) -> StateStore: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

    async def put(self, tenant: str, key: str, value: JSON, ttl: float) -> None:
        """Store `value` under (tenant, key), replacing any value, for `ttl` seconds."""

    async def put_new(self, tenant: str, key: str, value: JSON, ttl: float) -> bool:
        """Store `value` only if (tenant, key) holds nothing, atomically; False if it did."""

    async def get(self, tenant: str, key: str) -> JSON | None:
        """The value under (tenant, key), or None when absent or expired."""

    async def delete(self, tenant: str, key: str) -> None:
        """Forget (tenant, key); nothing happens if it is absent."""

    async def swap(self, tenant: str, key: str, expected: JSON, value: JSON | None, ttl: float) -> bool:
        """If (tenant, key) holds `expected`, replace it with `value` for `ttl` seconds (None: delete it),
        atomically; False, changing nothing, if it holds anything else or nothing."""

    async def changed(self, tenant: str, key: str, timeout: float) -> None:
        """Return once (tenant, key) may have changed, or after `timeout` seconds at the latest.

        A hint for waiters, which re-read the value afterwards: a backend that cannot be
        notified (Redis, across processes) simply waits `timeout`.
        """

    def limiter(self, per_minute: int, burst: int | None = None, *, clock: Clock | None = None) -> RateLimiter:
        """A rate limiter whose counts are shared by every handle on this store."""
        ...
