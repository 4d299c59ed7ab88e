"""The state store contract, run against both backends: memory and a real Redis.

Every test gets `handles`: a way to open another handle on the same state (memory: the
same store; Redis: another client on the same prefix, as another hub instance would).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

from mcp_hub.errors import ConfigError, IdempotencyConflict
from mcp_hub.idempotency import IdempotencyStore, StoredResponse
from mcp_hub.state import StateStore, open_store
from mcp_hub.state.memory import MemoryStore
from mcp_hub.state.redis import RedisStore, redacted

Handles = Callable[[], Awaitable[StateStore]]


@pytest.fixture(params=["memory", "redis"])
async def handles(request: pytest.FixtureRequest) -> AsyncIterator[Handles]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "memory":
            shared = await stack.enter_async_context(MemoryStore())

            async def memory() -> StateStore:
                return shared

            yield memory
        else:
            url, prefix = request.getfixturevalue("redis_state")

            async def redis() -> StateStore:
                return await stack.enter_async_context(RedisStore(url, prefix))

            yield redis


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll `check` (bounded) until it holds."""
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.02)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Watched:
    """A store whose `changed` is observable: `waiting` is set once someone waits on it."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.waiting = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def changed(self, tenant: str, key: str, timeout: float) -> None:
        self.waiting.set()
        await self.inner.changed(tenant, key, timeout)


# -- the keyed store ---------------------------------------------------------------------------

async def test_put_get_delete_per_tenant(handles: Handles) -> None:
    one, two = await handles(), await handles()
    value = {"text": "héllo", "items": [1, 2.5, None, True], "nested": {"a": "b"}}
    await one.put("acme", "loop/1", value, ttl=60)
    assert await two.get("acme", "loop/1") == value
    assert await two.get("other", "loop/1") is None  # tenants never see each other's keys
    assert await two.get("acme:loop", "1") is None  # and a tenant name cannot forge a key
    await one.put("acme", "loop/1", {"v": 2}, ttl=60)
    assert await two.get("acme", "loop/1") == {"v": 2}
    await two.delete("acme", "loop/1")
    assert await one.get("acme", "loop/1") is None
    await one.delete("acme", "absent")  # deleting nothing is fine


async def test_put_new_is_first_writer_wins(handles: Handles) -> None:
    one, two = await handles(), await handles()
    results = []

    async def claim(store: StateStore, who: str) -> None:
        results.append((who, await store.put_new("t", "k", who, ttl=60)))

    async with anyio.create_task_group() as tg:
        for index in range(8):
            tg.start_soon(claim, (one, two)[index % 2], f"w{index}")
    winners = [who for who, won in results if won]
    assert len(winners) == 1 and await one.get("t", "k") == winners[0]


async def test_swap_replaces_or_deletes_only_the_expected_value(handles: Handles) -> None:
    one, two = await handles(), await handles()
    mine, theirs = {"state": "running", "claim": "a"}, {"state": "running", "claim": "b"}
    assert not await one.swap("t", "k", mine, {"state": "done"}, ttl=60)  # nothing there: nothing stored
    assert await one.get("t", "k") is None
    await one.put("t", "k", theirs, ttl=60)
    assert not await two.swap("t", "k", mine, None, ttl=60)  # someone else's value stays
    assert await one.get("t", "k") == theirs
    assert await two.swap("t", "k", theirs, {"state": "done", "n": 1}, ttl=60)
    assert await one.get("t", "k") == {"state": "done", "n": 1}
    assert await one.swap("t", "k", {"state": "done", "n": 1}, None, ttl=60)
    assert await two.get("t", "k") is None
    assert await one.put_new("t", "k", mine, ttl=60)  # deleted: free again
    assert await two.swap("other", "k", mine, None, ttl=60) is False  # per tenant


async def test_values_expire(handles: Handles) -> None:
    store = await handles()
    await store.put("t", "short", {"x": 1}, ttl=0.2)
    await store.put("t", "long", {"x": 2}, ttl=60)
    assert await store.get("t", "short") == {"x": 1}

    async def gone() -> bool:
        return await store.get("t", "short") is None

    await eventually(gone)
    assert await store.get("t", "long") == {"x": 2}
    assert await store.put_new("t", "short", {"x": 3}, ttl=60)  # an expired key is free again


async def test_memory_expiry_follows_the_clock() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    await store.put("t", "k", 1, ttl=10)
    clock.now += 9.9
    assert await store.get("t", "k") == 1
    clock.now += 0.2
    assert await store.get("t", "k") is None


def test_backend_is_chosen_by_scheme() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store("redis://127.0.0.1:6379/0", "p:"), RedisStore)
    with pytest.raises(ConfigError, match="unknown scheme"):
        open_store("postgres://x")
    assert redacted("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"


async def test_unreachable_redis_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        async with RedisStore("redis://:hunter2@127.0.0.1:1/0"):
            pass
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


# -- idempotency records -----------------------------------------------------------------------

RESPONSE = StoredResponse(status=200, body=b'{"answer":"\xc3\xa9"}')


async def test_first_claim_runs_and_a_retry_gets_the_stored_response(handles: Handles) -> None:
    first, second = IdempotencyStore(await handles()), IdempotencyStore(await handles())
    assert await first.claim("acme", "key", "fp") is None
    await first.complete("acme", "key", RESPONSE)
    assert await second.claim("acme", "key", "fp") == RESPONSE
    assert await second.claim("other", "key", "fp") is None  # per tenant
    streamed = StoredResponse(status=200, frames=["data: 1\n\n", "data: [DONE]\n\n"], streamed=True)
    binary = StoredResponse(status=502, body=b"\xff\x00")
    for index, response in enumerate((streamed, binary)):
        assert await first.claim("acme", f"k{index}", "fp") is None
        await first.complete("acme", f"k{index}", response)
        assert await second.claim("acme", f"k{index}", "fp") == response


async def test_a_different_body_is_a_conflict(handles: Handles) -> None:
    first, second = IdempotencyStore(await handles()), IdempotencyStore(await handles())
    assert await first.claim("acme", "key", "fp-1") is None
    with pytest.raises(IdempotencyConflict):
        await second.claim("acme", "key", "fp-2")  # while running
    await first.complete("acme", "key", RESPONSE)
    with pytest.raises(IdempotencyConflict):
        await second.claim("acme", "key", "fp-2")  # and once done


async def settled_while_a_retry_waits(handles: Handles,
                                      settle: Callable[[IdempotencyStore], Awaitable[None]]) -> list[StoredResponse | None]:
    """A first attempt claims the key, a retry on another handle waits for it, then `settle(first)`:
    what the retry's claim returned."""
    first = IdempotencyStore(await handles())
    watched = Watched(await handles())
    second = IdempotencyStore(watched)  # type: ignore[arg-type]
    assert await first.claim("acme", "key", "fp") is None
    got: list[StoredResponse | None] = []

    async def retry() -> None:
        got.append(await second.claim("acme", "key", "fp"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(retry)
        with anyio.fail_after(5):
            await watched.waiting.wait()
        assert got == []  # still waiting for the first attempt
        await settle(first)
    return got


async def test_a_concurrent_retry_waits_for_the_first(handles: Handles) -> None:
    assert await settled_while_a_retry_waits(handles, lambda first: first.complete("acme", "key", RESPONSE)) == [RESPONSE]


async def test_abandon_lets_a_waiting_retry_run(handles: Handles) -> None:
    assert await settled_while_a_retry_waits(handles, lambda first: first.abandon("acme", "key")) == [None]  # runs itself...
    with pytest.raises(TimeoutError):  # ...and holds the claim
        await IdempotencyStore(await handles(), wait=0.1).claim("acme", "key", "fp")


async def test_records_expire(handles: Handles) -> None:
    store = IdempotencyStore(await handles(), ttl=0.2)
    assert await store.claim("acme", "key", "fp") is None
    await store.complete("acme", "key", RESPONSE)
    assert await store.claim("acme", "key", "fp") == RESPONSE
    states = await handles()

    async def gone() -> bool:
        return await states.get("acme", "idempotency:key") is None

    await eventually(gone)
    assert await store.claim("acme", "key", "fp") is None  # runs afresh


async def test_the_claim_of_an_instance_that_died_lapses(handles: Handles) -> None:
    dead = IdempotencyStore(await handles(), lease=0.2)
    assert await dead.claim("acme", "key", "fp") is None  # and never completes
    retry = IdempotencyStore(await handles(), wait=5)
    started = time.monotonic()
    assert await retry.claim("acme", "key", "fp") is None
    assert time.monotonic() - started < 5


async def test_a_lapsed_claim_does_not_settle_over_the_retry_that_took_it(handles: Handles) -> None:
    """A request outlives its claim's lease; a retry claims the key and runs. The first one's
    abandon must not delete the retry's claim, nor its completion overwrite it."""
    slow = IdempotencyStore(await handles(), lease=0.2)
    assert await slow.claim("acme", "key", "fp") is None
    retry = IdempotencyStore(await handles(), wait=5)
    assert await retry.claim("acme", "key", "fp") is None  # once the lease lapsed
    states = await handles()
    taken = await states.get("acme", "idempotency:key")
    assert taken is not None and taken["state"] == "running"
    await slow.abandon("acme", "key")
    assert await states.get("acme", "idempotency:key") == taken
    await slow.complete("acme", "key", RESPONSE)  # already settled by the abandon: nothing happens
    assert await states.get("acme", "idempotency:key") == taken
    third = IdempotencyStore(await handles(), wait=0.1)
    with pytest.raises(TimeoutError):  # the retry still holds the key
        await third.claim("acme", "key", "fp")
    await retry.complete("acme", "key", RESPONSE)
    assert await third.claim("acme", "key", "fp") == RESPONSE


async def test_a_completion_after_the_lease_lapsed_is_kept_when_nobody_took_over(handles: Handles) -> None:
    slow = IdempotencyStore(await handles(), lease=0.2)
    assert await slow.claim("acme", "key", "fp") is None
    states = await handles()

    async def lapsed() -> bool:
        return await states.get("acme", "idempotency:key") is None

    await eventually(lapsed)
    await slow.complete("acme", "key", RESPONSE)
    assert await IdempotencyStore(await handles()).claim("acme", "key", "fp") == RESPONSE


async def test_a_late_completion_leaves_the_retry_that_took_over_alone(handles: Handles) -> None:
    slow = IdempotencyStore(await handles(), lease=0.2)
    assert await slow.claim("acme", "key", "fp") is None
    retry = IdempotencyStore(await handles(), wait=5)
    assert await retry.claim("acme", "key", "fp") is None
    states = await handles()
    taken = await states.get("acme", "idempotency:key")
    await slow.complete("acme", "key", StoredResponse(status=200, body=b'{"late": true}'))
    assert await states.get("acme", "idempotency:key") == taken


# -- rate limits ---------------------------------------------------------------------------------

async def test_limiters_on_one_store_count_together(handles: Handles) -> None:
    clock = Clock()
    one = (await handles()).limiter(60, 2, clock=clock)
    two = (await handles()).limiter(60, 2, clock=clock)
    first, second, third = await one.hit("key:a"), await two.hit("key:a"), await one.hit("key:a")
    assert (first.allowed, first.remaining) == (True, 1)
    assert (second.allowed, second.remaining) == (True, 0)
    assert not third.allowed and third.retry_after == pytest.approx(1.0) and third.limit == 60
    assert (await two.hit("key:b")).allowed  # another caller, its own bucket
    clock.now += 0.5
    assert not (await two.hit("key:a")).allowed
    clock.now += 0.5
    refilled = await two.hit("key:a")
    assert refilled.allowed and refilled.remaining == 0
    clock.now += 60
    full = await one.hit("key:a")  # refilled to the burst, not beyond
    assert full.allowed and full.remaining == 1 and full.reset == pytest.approx(1.0)


async def test_limiter_refills_in_real_time(handles: Handles) -> None:
    one, two = (await handles()).limiter(3000, 1), (await handles()).limiter(3000, 1)  # 50 a second
    assert (await one.hit("key:r")).allowed
    refused = await two.hit("key:r")
    assert not refused.allowed and 0 < refused.retry_after <= 0.02

    async def allowed() -> bool:
        return (await two.hit("key:r")).allowed

    await eventually(allowed)
