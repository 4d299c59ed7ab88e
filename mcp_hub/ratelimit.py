"""Per-caller request rate limits: a token bucket per API key, answered with 429 and `retry-after`.

`RateLimiter` is the interface; `TokenBuckets` keeps the buckets in this process. A
limiter shared by several hub instances (Redis, a later issue) implements the same
`hit`. The `Hub` owns the limiter; the `RateLimiting` middleware consults it once per
request, after authentication, on every route but the public ones.

A bucket holds up to `burst` requests and refills at `per_minute / 60` a second. A
request takes one token; with none left it is refused with the seconds until the
next one. Callers are counted by API key; an anonymous caller (a hub without keys)
by client address.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .authentication import PUBLIC_PATHS
from .errors import RateLimited, StateUnavailable

Clock = Callable[[], float]


@dataclass(frozen=True)
class Decision:
    """The outcome of one request against its caller's bucket."""

    allowed: bool
    limit: int  # requests per minute
    remaining: int  # whole requests left right now
    reset: float  # seconds until the bucket is full again
    retry_after: float  # seconds until the next request is allowed (0 when allowed)

    def headers(self) -> dict[str, str]:
        """The `x-ratelimit-*` headers (OpenAI's names), plus `retry-after` when refused."""
        headers = {"x-ratelimit-limit-requests": str(self.limit),
                   "x-ratelimit-remaining-requests": str(self.remaining),
                   "x-ratelimit-reset-requests": f"{math.ceil(self.reset)}s"}
        if not self.allowed:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after)))
            headers["retry-after-ms"] = str(max(1, math.ceil(self.retry_after * 1000)))
        return headers


class RateLimiter(Protocol):
    """Counts requests per caller key; `hit` takes one request from the key's allowance."""

    async def hit(self, key: str) -> Decision: ...


class TokenBuckets:
    """An in-memory `RateLimiter`: one token bucket per key, in this process only.

    `hit` never awaits, so concurrent requests cannot race on a bucket. Buckets that
    have refilled completely are dropped (a full bucket and no bucket are the same), so
    memory follows the callers active within the last refill period.
    """

    def __init__(self, per_minute: int, burst: int | None = None, *, clock: Clock = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.limit = per_minute
        self.capacity = float(burst if burst is not None else per_minute)
        self.rate = per_minute / 60.0  # tokens a second
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._swept = clock()

    async def hit(self, key: str) -> Decision:
        return self.take(key)

    def take(self, key: str) -> Decision:
        """`hit` without the coroutine: the whole decision, synchronously."""
        now = self._clock()
        full_after = self.capacity / self.rate
        if now - self._swept >= full_after:
            self._sweep(now, full_after)
        tokens, at = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        return Decision(allowed=allowed, limit=self.limit, remaining=int(tokens),
                        reset=(self.capacity - tokens) / self.rate,
                        retry_after=0.0 if allowed else (1.0 - tokens) / self.rate)

    def _sweep(self, now: float, full_after: float) -> None:
        self._buckets = {key: (tokens, at) for key, (tokens, at) in self._buckets.items() if now - at < full_after}
        self._swept = now

    def __len__(self) -> int:
        return len(self._buckets)


def caller_key(scope: Scope) -> str:
    """Whose allowance a request uses: its API key's id, else (anonymous) its client address."""
    principal = scope.get("state", {}).get("principal")
    key_id = getattr(principal, "key_id", None)
    if key_id:
        return f"key:{key_id}"
    client = scope.get("client")
    return f"addr:{client[0] if client else 'unknown'}"


class RateLimiting:
    """ASGI middleware (inside `Authentication`): 429 over the limit, `x-ratelimit-*` headers always.

    `limiter` is called per request so that the hub can open its limiter in its lifespan;
    it returns None when rate limiting is off (the request then costs one call).
    """

    def __init__(self, app: ASGIApp, limiter: Callable[[], RateLimiter | None]) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limiter = self.limiter() if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS else None
        if limiter is None:
            await self.app(scope, receive, send)
            return
        try:
            decision = await limiter.hit(caller_key(scope))
        except StateUnavailable as exc:  # shared buckets out of reach: refuse rather than count nothing
            await JSONResponse(exc.to_body(), status_code=exc.status)(scope, receive, send)
            return
        extra = [(name.encode(), value.encode()) for name, value in decision.headers().items()]
        if not decision.allowed:
            error = RateLimited(f"rate limit of {decision.limit} requests per minute exceeded; "
                                f"retry in {max(1, math.ceil(decision.retry_after))} s", retry_after=decision.retry_after)
            response = JSONResponse(error.to_body(), status_code=error.status)
            response.raw_headers.extend(extra)
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
