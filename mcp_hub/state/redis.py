"""The Redis `StateStore` (`redis://`, `rediss://`, `unix://`): shared by every hub using the same Redis.

Keys, under `state_prefix` (default `mcp-hub:`):
- `<prefix>t:<tenant>:<key>`: a stored JSON value, `SET ... PX <ttl>` (`NX` for `put_new`, a Lua
  compare-and-set for `swap`); the tenant is percent-quoted so that no tenant can reach into
  another's keys.
- `<prefix>rl:<caller>`: a rate-limit token bucket, a hash {tokens, at} updated by one Lua
  script (atomic), expiring once the bucket would be full again.

This module is the one boundary between redis-py and the hub: a Redis that cannot be reached
(refused, reset, timed out) becomes `StateUnavailable` (HTTP 503 `state_unavailable`) here, and
nowhere else. redis-py's pool opens a new connection on the next command, so requests succeed
again as soon as Redis is back, without a restart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import anyio
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigError, StateUnavailable
from ..ratelimit import Decision
from .base import JSON, Clock

# KEYS[1] bucket; ARGV capacity, rate (tokens/s), now (seconds; negative: Redis's own clock).
_TOKEN_BUCKET = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


# KEYS[1] value; ARGV expected JSON text, new JSON text ('' deletes: no JSON text is empty), ttl ms.
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"""


def _millis(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


SOCKET_TIMEOUT = 10.0  # seconds a command may wait on Redis before the request answers 503


@contextmanager
def reachable() -> Iterator[None]:
    """Translate redis-py's "Redis is not there" errors into `StateUnavailable` (no URL, no detail)."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StateUnavailable(f"the state store (Redis) cannot be reached ({type(exc).__name__}); "
                               "retry once it is back") from None


def redacted(url: str) -> str:
    """`url` with any password masked, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class RedisStore:
    """`StateStore` in Redis; `changed` polls (the caller backs off), values are JSON text."""

    def __init__(self, url: str, prefix: str = "mcp-hub:") -> None:
        self.url = url
        self.prefix = prefix
        self._client: aioredis.Redis | None = None
        self._swap: Any = None  # the registered _SWAP script

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("the state store is not open")
        return self._client

    async def __aenter__(self) -> RedisStore:
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=5,
                                          socket_timeout=SOCKET_TIMEOUT, health_check_interval=30)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise ConfigError(f"cannot reach the state store at {redacted(self.url)}: {type(exc).__name__}") from None
        self._client = client
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._client is not None:
            client, self._client, self._swap = self._client, None, None
            await client.aclose()

    def key(self, tenant: str, key: str) -> str:
        return f"{self.prefix}t:{quote(tenant, safe='')}:{key}"

    async def put(self, tenant: str, key: str, value: JSON, ttl: float) -> None:
        with reachable():
            await self.client.set(self.key(tenant, key), json.dumps(value), px=_millis(ttl))

    async def put_new(self, tenant: str, key: str, value: JSON, ttl: float) -> bool:
        with reachable():
            return bool(await self.client.set(self.key(tenant, key), json.dumps(value), px=_millis(ttl), nx=True))

    async def get(self, tenant: str, key: str) -> JSON | None:
        with reachable():
            text = await self.client.get(self.key(tenant, key))
        return None if text is None else json.loads(text)

    async def delete(self, tenant: str, key: str) -> None:
        with reachable():
            await self.client.delete(self.key(tenant, key))

    async def swap(self, tenant: str, key: str, expected: JSON, value: JSON | None, ttl: float) -> bool:
        if self._swap is None:
            self._swap = self.client.register_script(_SWAP)
        new = "" if value is None else json.dumps(value)
        with reachable():
            return bool(await self._swap(keys=[self.key(tenant, key)], args=[json.dumps(expected), new, _millis(ttl)]))

    async def changed(self, tenant: str, key: str, timeout: float) -> None:
        await anyio.sleep(timeout)  # no notification across processes: the caller polls

    def limiter(self, per_minute: int, burst: int | None = None, *, clock: Clock | None = None) -> RedisTokenBuckets:
        return RedisTokenBuckets(self, per_minute, burst, clock=clock)


class RedisTokenBuckets:
    """A `RateLimiter` whose token buckets live in Redis: every hub on it counts together.

    The time is Redis's own clock (one clock for all instances) unless `clock` is given.
    """

    def __init__(self, store: RedisStore, per_minute: int, burst: int | None = None, *,
                 clock: Clock | None = None) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.store = store
        self.limit = per_minute
        self.capacity = float(burst if burst is not None else per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._script: Any = None

    async def hit(self, key: str) -> Decision:
        if self._script is None:
            self._script = self.store.client.register_script(_TOKEN_BUCKET)
        now = self._clock() if self._clock is not None else -1.0
        with reachable():
            allowed, left = await self._script(keys=[f"{self.store.prefix}rl:{key}"],
                                               args=[repr(self.capacity), repr(self.rate), repr(now)])
        tokens = float(left)
        return Decision(allowed=bool(allowed), limit=self.limit, remaining=int(tokens),
                        reset=(self.capacity - tokens) / self.rate,
                        retry_after=0.0 if allowed else (1.0 - tokens) / self.rate)
