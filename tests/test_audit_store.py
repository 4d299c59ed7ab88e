"""The audit store's contract, run against SQLite and PostgreSQL: chaining, queries, tamper
evidence (the database edited directly), retention, and concurrent writers."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from mcp_hub.audit import AuditStore, AuditTrail, Filters
from mcp_hub.audit.record import GENESIS, AuditRecord, chain_hash, micros
from mcp_hub.audit.writer import SENT
from mcp_hub.database import Database, open_database


def make(tenant: str = "acme", *, tool: str = "echo", server: str = "test/probe", is_error: bool = False,
         completion: str = "chatcmpl-1", ended: float | None = None, correlation: str | None = None) -> AuditRecord:
    end = micros(ended if ended is not None else time.time())
    return AuditRecord(
        id=f"audit_{tenant}_{tool}_{time.perf_counter_ns()}", tenant=tenant, kind="tool_call", source="completion",
        completion_id=completion, correlation_id=correlation, key_id="k1", server_name=server,
        server_ref=f"{server}@1.0.0", tool_name=tool, tool_hash="ab" * 32, arguments='{"text":"hi"}',
        result='{"result":"hi"}', result_bytes=15, result_sha256="cd" * 32, result_truncated=False, is_error=is_error,
        error_code="tool_error" if is_error else None, duration_ms=3, started_at=end - 3000, ended_at=end,
        model="openai/gpt-test", turn=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else None


@pytest.fixture
async def database(database_url: str | None, tmp_path: Path) -> AsyncIterator[Database]:
    async with open_database(database_url, tmp_path / "records.sqlite3") as db:
        yield db


@pytest.fixture
async def store(database: Database) -> AuditStore:
    store = AuditStore(database)
    await store.migrate()
    return store


async def write(store: AuditStore, count: int, tenant: str = "acme", **fields: Any) -> list[AuditRecord]:
    records = [make(tenant, **fields) for _ in range(count)]
    await store.append(records)
    return records


async def sql(database: Database, statement: str, params: tuple[Any, ...] = ()) -> None:
    async with database.transaction() as tx:
        await tx.execute(statement, params)


async def test_append_chains_each_tenant(store: AuditStore) -> None:
    first = await write(store, 3)
    await write(store, 2, tenant="other")
    more = await write(store, 1)
    assert [r.seq for r in first + more] == [1, 2, 3, 4]
    assert first[0].prev_hash == GENESIS and first[1].prev_hash == first[0].hash and more[0].prev_hash == first[2].hash
    assert first[0].hash == chain_hash(GENESIS, first[0].content())
    for tenant, count in (("acme", 4), ("other", 2)):
        report = await store.verify(tenant)
        assert report.ok and report.checked == count and report.head_seq == count
    stored = await store.get("acme", first[1].id)
    assert stored == first[1]


async def test_a_tenant_sees_only_its_own(store: AuditStore) -> None:
    (mine,) = await write(store, 1)
    assert await store.get("other", mine.id) is None
    page, _ = await store.page("other")
    assert page == []


async def test_filters_and_cursor_pagination(store: AuditStore) -> None:
    now = time.time()
    await write(store, 3, tool="echo", ended=now - 100)
    await write(store, 2, tool="fail", is_error=True, ended=now - 50, completion="chatcmpl-2", correlation="corr-9")
    await write(store, 4, tool="echo", server="other/srv", ended=now)
    seen: list[int] = []
    cursor = None
    while True:
        page, cursor = await store.page("acme", limit=4, before=cursor)
        seen += [r.seq for r in page]
        if cursor is None:
            break
    assert seen == list(range(9, 0, -1))  # newest first, every record once
    assert [r.seq for r in (await store.page("acme", Filters(is_error=True)))[0]] == [5, 4]
    assert len((await store.page("acme", Filters(is_error=False)))[0]) == 7
    assert [r.seq for r in (await store.page("acme", Filters(server="other/srv", tool="echo")))[0]] == [9, 8, 7, 6]
    assert len((await store.page("acme", Filters(completion_id="chatcmpl-2")))[0]) == 2
    assert len((await store.page("acme", Filters(correlation_id="corr-9")))[0]) == 2
    window = Filters(since=micros(now - 60), until=micros(now - 10))
    assert [r.tool_name for r in (await store.page("acme", window))[0]] == ["fail", "fail"]
    exported = [r.seq async for r in store.export("acme", Filters(tool="echo"))]
    assert exported == [1, 2, 3, 6, 7, 8, 9]


async def test_an_edited_record_is_found(store: AuditStore, database: Database) -> None:
    records = await write(store, 5)
    await sql(database, "UPDATE audit_records SET result = ? WHERE id = ?", ('{"result":"forged"}', records[2].id))
    report = await store.verify("acme")
    assert not report.ok and report.broken is not None
    assert report.broken["seq"] == 3 and report.broken["record_id"] == records[2].id and "edited" in report.broken["problem"]
    assert report.checked == 2


async def test_an_edit_with_its_hash_recomputed_breaks_the_next_link(store: AuditStore, database: Database) -> None:
    records = await write(store, 4)
    forged = records[1]
    forged.result = '{"result":"forged"}'
    forged.hash = chain_hash(forged.prev_hash, forged.content())
    await sql(database, "UPDATE audit_records SET result = ?, hash = ? WHERE id = ?", (forged.result, forged.hash, forged.id))
    report = await store.verify("acme")
    assert report.broken is not None and report.broken["seq"] == 3 and "prev_hash" in report.broken["problem"]


async def test_a_deleted_record_is_found(store: AuditStore, database: Database) -> None:
    records = await write(store, 5)
    await sql(database, "DELETE FROM audit_records WHERE id = ?", (records[1].id,))
    report = await store.verify("acme")
    assert report.broken is not None and report.broken["seq"] == 2 and "missing" in report.broken["problem"]


async def test_deleting_the_newest_records_is_found(store: AuditStore, database: Database) -> None:
    await write(store, 5)
    await sql(database, "DELETE FROM audit_records WHERE tenant = ? AND seq >= ?", ("acme", 4))
    report = await store.verify("acme")
    assert report.broken is not None and report.broken["seq"] == 4 and "deleted at the end" in report.broken["problem"]


async def test_an_inserted_record_is_found(store: AuditStore, database: Database) -> None:
    records = await write(store, 3)
    # Shift records 2 and 3 up and slip a forged one in at 2, chained onto record 1.
    await sql(database, "UPDATE audit_records SET seq = seq + 10 WHERE tenant = ? AND seq >= 2", ("acme",))
    await sql(database, "UPDATE audit_records SET seq = seq - 9 WHERE tenant = ? AND seq >= 12", ("acme",))
    forged = make()
    forged.seq, forged.prev_hash = 2, records[0].hash
    forged.hash = chain_hash(forged.prev_hash, forged.content())
    async with store.database.transaction() as tx:
        columns = list(forged.content()) + ["hash"]
        await tx.execute(f"INSERT INTO audit_records ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                         [getattr(forged, c) for c in columns])
    report = await store.verify("acme")
    assert report.broken is not None and report.broken["seq"] == 3 and "prev_hash" in report.broken["problem"]


async def test_a_record_appended_behind_the_head_is_found(store: AuditStore, database: Database) -> None:
    records = await write(store, 2)
    forged = make()
    forged.seq, forged.prev_hash = 3, records[1].hash
    forged.hash = chain_hash(forged.prev_hash, forged.content())
    async with database.transaction() as tx:
        columns = list(forged.content()) + ["hash"]
        await tx.execute(f"INSERT INTO audit_records ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                         [getattr(forged, c) for c in columns])
    report = await store.verify("acme")
    assert report.broken is not None and report.broken["seq"] == 3 and "after the chain head" in report.broken["problem"]


async def test_retention_prunes_a_prefix_and_what_remains_verifies(store: AuditStore, database: Database) -> None:
    now = time.time()
    await write(store, 3, ended=now - 10 * 86400)
    await write(store, 2, tenant="other", ended=now - 10 * 86400)
    young = await write(store, 2, ended=now)
    removed = await store.prune(7 * 86400, now=now)
    assert removed == {"acme": 3, "other": 2}
    remaining = [r async for r in store.export("acme")]
    assert [(r.seq, r.kind) for r in remaining] == [(4, "tool_call"), (5, "tool_call"), (6, "retention")]
    assert remaining[0].prev_hash == remaining[-1].pruned_through()[1]  # type: ignore[index]
    assert remaining[-1].pruned_through()[0] == 3 and remaining[-1].view()["status"] == "pruned"  # type: ignore[index]
    report = await store.verify("acme")
    assert report.ok and report.anchor_seq == 3 and report.checked == 3 and report.head_hash == remaining[-1].hash
    assert young[-1].hash == remaining[1].hash
    assert (await store.verify("other")).ok
    assert await store.prune(7 * 86400, now=now) == {}  # nothing more to do
    after = await write(store, 1)
    assert after[0].seq == 7 and (await store.verify("acme")).ok
    # Deleting the oldest remaining record is still found, though a prefix is gone legitimately.
    await sql(database, "DELETE FROM audit_records WHERE tenant = ? AND seq = ?", ("acme", 4))
    broken = (await store.verify("acme")).broken
    assert broken is not None and broken["seq"] == 4


async def forge_anchor(database: Database, tenant: str, through: int) -> None:
    """What an attacker with write access to the records database does: delete the oldest records and point
    the anchor at the last one deleted (no hashing needed)."""
    row = await database.fetch_one("SELECT hash FROM audit_records WHERE tenant = ? AND seq = ?", (tenant, through))
    assert row is not None
    await sql(database, "DELETE FROM audit_records WHERE tenant = ? AND seq <= ?", (tenant, through))
    await sql(database, "DELETE FROM audit_anchors WHERE tenant = ?", (tenant,))
    await sql(database, "INSERT INTO audit_anchors (tenant, seq, hash, pruned_at) VALUES (?, ?, ?, ?)",
              (tenant, through, row["hash"], 0))


async def test_a_forged_anchor_is_found(store: AuditStore, database: Database) -> None:
    now = time.time()
    await write(store, 3, ended=now - 10 * 86400)
    await write(store, 4, ended=now)
    await write(store, 4, tenant="never-pruned", ended=now)
    assert await store.prune(7 * 86400, now=now) == {"acme": 3}
    assert (await store.verify("acme")).ok  # the honest prune
    await forge_anchor(database, "acme", 5)  # two more of the oldest records gone, the anchor moved after them
    broken = (await store.verify("acme")).broken
    assert broken is not None and broken["seq"] == 5 and "retention anchor" in broken["problem"]
    await forge_anchor(database, "never-pruned", 2)  # an anchor where retention never ran
    broken = (await store.verify("never-pruned")).broken
    assert broken is not None and broken["seq"] == 2 and "retention anchor" in broken["problem"]


async def test_anchors_of_older_versions_still_verify(database: Database) -> None:
    """A chain pruned by a version whose anchors were outside the chain: the upgrade vouches for them once."""
    from mcp_hub.audit.store import MIGRATIONS

    await database.migrate("audit", MIGRATIONS[:1])  # the schema as the older version left it
    old = AuditStore(database)
    await old.append([make(ended=time.time() - 10 * 86400) for _ in range(3)] + [make() for _ in range(2)])
    await forge_anchor(database, "acme", 3)  # what its retention did: delete, then anchor
    await old.migrate()  # the upgrade
    report = await old.verify("acme")
    assert report.ok and report.anchor_seq == 3 and report.checked == 3
    assert [(r.seq, r.kind) async for r in old.export("acme")][-1] == (6, "retention")
    await old.migrate()  # once only: a later start vouches for nothing
    assert (await old.verify("acme")).checked == 3
    await forge_anchor(database, "acme", 4)
    await old.migrate()
    assert not (await old.verify("acme")).ok


async def test_the_writer_process_does_not_hold_records_longer_than_the_commit_delay(database: Database) -> None:
    """Records that queued up behind a slow commit have waited already: the writer process counts the
    commit delay from when the hub handed each over (`t`), not from when it read them."""
    store = AuditStore(database)
    await store.migrate()
    config = {"where": database.where(), "max_batch": 512, "commit_delay": 600.0}
    handed = time.monotonic() - 601  # both lines waited out the delay before the child read them
    lines = [{"id": n, "t": handed, "records": [{name: getattr(make(), name) for name in SENT}]} for n in (1, 2)]
    process = await anyio.open_process([sys.executable, "-m", "mcp_hub.audit.child"])
    try:
        assert process.stdin is not None and process.stdout is not None
        out = BufferedByteReceiveStream(process.stdout)
        await process.stdin.send(json.dumps(config).encode() + b"\n")
        assert json.loads(await out.receive_until(b"\n", 1 << 16)) == {"ready": True}
        # Two lines at once: concurrent writes, which would make a transaction wait for more.
        await process.stdin.send(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
        with anyio.fail_after(30):  # far less than the delay
            ack = json.loads(await out.receive_until(b"\n", 1 << 16))
        await process.stdin.aclose()
        assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()
    assert ack["ok"] is True and ack["ids"] == [1, 2] and ack["records"] == 2
    verification = await store.verify("acme")
    assert verification.checked == 2 and verification.broken is None


async def test_concurrent_writers_on_separate_connections_keep_one_chain(database_url: str | None, tmp_path: Path) -> None:
    """Two hub instances (two connection pools / SQLite connections) appending at once."""
    async with AsyncExitStack() as stack:
        trails = []
        for _ in range(2):
            db = await stack.enter_async_context(open_database(database_url, tmp_path / "records.sqlite3"))
            trails.append(await stack.enter_async_context(AuditTrail(db, max_batch=8)))

        async def writer(trail: AuditTrail, n: int) -> None:
            for i in range(10):
                await trail.record([make("shared", tool=f"t{n}-{i}"), make(f"own-{n}")])

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(writer, trails[n % 2], n)
        store = trails[0].store
        report = await store.verify("shared")
        assert report.ok and report.checked == 80 and report.head_seq == 80
        assert [(await store.verify(f"own-{n}")).checked for n in range(8)] == [10] * 8


async def test_group_commit_shares_transactions(store: AuditStore) -> None:
    commits: list[int] = []
    async with AuditTrail(store.database, on_commit=lambda n, _s: commits.append(n)) as trail, \
            anyio.create_task_group() as tg:
        for _ in range(32):
            tg.start_soon(trail.record, [make()])
    assert sum(commits) == 32 and len(commits) < 32  # some callers shared a commit
    assert (await store.verify("acme")).checked == 32


async def test_the_trail_prunes_by_itself_when_retention_is_set(store: AuditStore) -> None:
    old = await write(store, 3, ended=time.time() - 3600)
    # 1e-5 days: 0.864 s; the trail then prunes every 0.0864 s.
    async with AuditTrail(store.database, retention_days=1e-5):
        deadline = time.monotonic() + 10
        while (report := await store.verify("acme")).anchor_seq != 3 and time.monotonic() < deadline:
            await anyio.sleep(0.02)
    # What remains is the retention record (seq 4), chained onto the last record it removed.
    assert report.anchor_seq == 3 and report.ok and report.checked == 1 and report.head_seq == 4
    assert await store.get("acme", old[0].id) is None
