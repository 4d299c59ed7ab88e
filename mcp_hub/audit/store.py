"""`AuditStore`: the audit records in the records database (SQLite or PostgreSQL, see database.py).

Tables (owner "audit"):
- `audit_records`: one row per record, unique (tenant, seq).
- `audit_heads`: per tenant, the seq and hash of its last record. Appending locks the
  tenant's head row (PostgreSQL: the upsert's row lock; SQLite: the one writer), so that
  concurrent writers, also in other hub processes, extend the chain one after the other.
- `audit_anchors`: per tenant, the seq and hash of the last record removed by retention;
  verification of what remains starts from it. An anchor is only a pointer: each retention
  run also appends a chained `retention` record naming the seq and hash it pruned through,
  and `verify` accepts the anchor only if the chain's latest retention record names it. So
  deleting more of the oldest records and moving the anchor breaks verification; getting
  past it means forging chain records (see the README, "Audit trail", for what a hash chain
  can and cannot show).

The SQL is portable (SQLite ≥ 3.35 for RETURNING): one code path for both backends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ..database import Database, Migration, Steps, Transaction, drive_in
from . import intents as _intents
from .record import GENESIS, AuditRecord, chain_hash, micros, retention_record


async def _vouch_for_anchors(tx: Transaction) -> None:
    """Migration 2, once: the anchors that older versions kept outside the chain get their retention
    record, so that chains pruned before the upgrade still verify."""
    for anchor in await tx.fetch_all("SELECT tenant, seq, hash, pruned_at FROM audit_anchors ORDER BY tenant"):
        record = retention_record(anchor["tenant"], int(anchor["seq"]), anchor["hash"], None, int(anchor["pruned_at"]))
        await drive_in(tx, AuditStore.chain_and_insert([record]))

MIGRATIONS = [
    Migration(1, (
        """CREATE TABLE audit_records (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            seq BIGINT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            kind TEXT NOT NULL,
            source TEXT NOT NULL,
            completion_id TEXT,
            correlation_id TEXT,
            key_id TEXT,
            server_name TEXT NOT NULL,
            server_ref TEXT,
            tool_name TEXT,
            tool_hash TEXT,
            arguments TEXT NOT NULL,
            result TEXT NOT NULL,
            result_bytes BIGINT NOT NULL,
            result_sha256 TEXT NOT NULL,
            result_truncated BOOLEAN NOT NULL,
            is_error BOOLEAN NOT NULL,
            error_code TEXT,
            duration_ms BIGINT NOT NULL,
            started_at BIGINT NOT NULL,
            ended_at BIGINT NOT NULL,
            model TEXT,
            turn INTEGER,
            UNIQUE (tenant, seq)
        )""",
        "CREATE INDEX audit_records_completion ON audit_records (tenant, completion_id)",
        "CREATE INDEX audit_records_correlation ON audit_records (tenant, correlation_id)",
        "CREATE INDEX audit_records_ended ON audit_records (tenant, ended_at)",
        "CREATE TABLE audit_heads (tenant TEXT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL)",
        """CREATE TABLE audit_anchors (tenant TEXT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL,
            pruned_at BIGINT NOT NULL)""",
    )),
    Migration(2, (), after=_vouch_for_anchors),
    _intents.MIGRATION,
]

COLUMNS = [f.name for f in fields(AuditRecord)]
_INSERT = f"INSERT INTO audit_records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM audit_records"
PAGE = 1000  # rows per query when walking a whole chain
# The tenant's head, created at seq 0 if new, and locked until the transaction ends (PostgreSQL:
# ON CONFLICT DO UPDATE locks the row; SQLite: the transaction holds the one write lock).
_LOCK_HEAD = ("INSERT INTO audit_heads (tenant, seq, hash) VALUES (?, 0, ?) "
              "ON CONFLICT (tenant) DO UPDATE SET seq = audit_heads.seq RETURNING seq, hash")


@dataclass(frozen=True)
class Filters:
    """What `list` and `export` select within one tenant (None: any)."""

    server: str | None = None
    tool: str | None = None
    is_error: bool | None = None
    since: int | None = None  # started_at >= (microseconds)
    until: int | None = None  # started_at < (microseconds)
    completion_id: str | None = None
    correlation_id: str | None = None

    def where(self, tenant: str) -> tuple[list[str], list[Any]]:
        clauses: list[str] = ["tenant = ?"]
        params: list[Any] = [tenant]
        for column, value in (("server_name", self.server), ("tool_name", self.tool),
                              ("completion_id", self.completion_id), ("correlation_id", self.correlation_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.is_error is not None:
            clauses.append("is_error = ?")
            params.append(self.is_error)
        if self.since is not None:
            clauses.append("started_at >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("started_at < ?")
            params.append(self.until)
        return clauses, params


@dataclass
class Verification:
    """The result of walking one tenant's chain; `broken` describes the first broken link."""

    tenant: str
    checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    anchor_seq: int = 0
    unfinished: int = 0  # calls whose intent is committed and outcome is not (running, or their hub is gone)
    broken: dict[str, Any] | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.broken is None

    def view(self) -> dict[str, Any]:
        return {"object": "audit.verification", "tenant": self.tenant, "ok": self.ok, "records_checked": self.checked,
                "head": {"seq": self.head_seq, "hash": self.head_hash}, "anchor_seq": self.anchor_seq,
                "unfinished": self.unfinished, "first_broken_link": self.broken}


class AuditStore:
    """Appends, queries, verifies and prunes audit records; owns no connection of its own."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def migrate(self) -> None:
        await self.database.migrate("audit", MIGRATIONS)

    async def _lock_head(self, tx: Transaction, tenant: str) -> tuple[int, str]:
        row = await tx.fetch_one(_LOCK_HEAD, (tenant, GENESIS))
        assert row is not None
        return int(row["seq"]), str(row["hash"])

    async def append(self, records: Sequence[AuditRecord]) -> None:
        """Chain `records` onto their tenants' chains and commit them in one transaction."""
        await self.database.run(self.chain_and_insert(records))

    @staticmethod
    def chain_and_insert(records: Sequence[AuditRecord], intents: Sequence[Sequence[Any]] = (),
                         done: Sequence[str] = ()) -> Steps[None]:
        """The transaction of `append`: the records chained onto their tenants' heads, inserted; `intents`
        (rows, see intents.py) inserted, and the intents `done` (which these records complete) deleted."""
        if intents:
            yield ("execute_many", _intents.INSERT, list(intents))
        by_tenant: dict[str, list[AuditRecord]] = {}
        for record in records:
            by_tenant.setdefault(record.tenant, []).append(record)
        for tenant in sorted(by_tenant):  # one lock order: no deadlock between writers
            head = yield ("fetch_one", _LOCK_HEAD, (tenant, GENESIS))
            seq, prev = int(head["seq"]), str(head["hash"])
            for record in by_tenant[tenant]:
                seq += 1
                record.seq, record.prev_hash = seq, prev
                record.hash = prev = chain_hash(prev, record.content())
            yield ("execute_many", _INSERT, [[getattr(r, c) for c in COLUMNS] for r in by_tenant[tenant]])
            yield ("send", "UPDATE audit_heads SET seq = ?, hash = ? WHERE tenant = ?", (seq, prev, tenant))
        if done:  # the outcomes of calls whose intents were committed before they were sent
            yield ("send", f"DELETE FROM audit_intents WHERE id IN ({', '.join('?' for _ in done)})", list(done))

    async def get(self, tenant: str | None, record_id: str) -> AuditRecord | None:
        """The record `record_id` of `tenant` (None: of any tenant, for operators)."""
        if tenant is None:
            row = await self.database.fetch_one(f"{_SELECT} WHERE id = ?", (record_id,))
        else:
            row = await self.database.fetch_one(f"{_SELECT} WHERE tenant = ? AND id = ?", (tenant, record_id))
        return AuditRecord.from_row(row) if row else None

    async def page(self, tenant: str, filters: Filters = Filters(), *, limit: int = 50,
                   before: int | None = None) -> tuple[list[AuditRecord], int | None]:
        """Newest first; `before` is a cursor (a seq). Returns the page and the next cursor (None: last page)."""
        clauses, params = filters.where(tenant)
        if before is not None:
            clauses.append("seq < ?")
            params.append(before)
        rows = await self.database.fetch_all(f"{_SELECT} WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT ?",
                                             (*params, limit + 1))
        page = [AuditRecord.from_row(row) for row in rows[:limit]]
        return page, (page[-1].seq if len(rows) > limit else None)

    async def export(self, tenant: str, filters: Filters = Filters()) -> AsyncIterator[AuditRecord]:
        """Every matching record in chain order (oldest first), a page at a time."""
        after = 0
        while True:
            clauses, params = filters.where(tenant)
            rows = await self.database.fetch_all(
                f"{_SELECT} WHERE {' AND '.join(clauses)} AND seq > ? ORDER BY seq LIMIT ?", (*params, after, PAGE))
            for row in rows:
                yield AuditRecord.from_row(row)
            if len(rows) < PAGE:
                return
            after = int(rows[-1]["seq"])

    async def tenants(self) -> list[str]:
        rows = await self.database.fetch_all(
            "SELECT tenant FROM audit_heads UNION SELECT DISTINCT tenant FROM audit_records ORDER BY tenant")
        return [str(row["tenant"]) for row in rows]

    async def verify(self, tenant: str) -> Verification:
        """Walk the tenant's chain from its anchor (or the start) and report the first broken link."""
        head = await self.database.fetch_one("SELECT seq, hash FROM audit_heads WHERE tenant = ?", (tenant,))
        anchor = await self.database.fetch_one("SELECT seq, hash FROM audit_anchors WHERE tenant = ?", (tenant,))
        unfinished = await self.database.fetch_one("SELECT COUNT(*) AS n FROM audit_intents WHERE tenant = ?", (tenant,))
        report = Verification(tenant, head_seq=int(head["seq"]) if head else 0, head_hash=head["hash"] if head else GENESIS,
                              anchor_seq=int(anchor["seq"]) if anchor else 0,
                              unfinished=int(unfinished["n"]) if unfinished else 0)
        expected, prev = report.anchor_seq + 1, anchor["hash"] if anchor else GENESIS

        def broken(seq: int, record_id: str | None, problem: str) -> Verification:
            report.broken = {"seq": seq, "record_id": record_id, "problem": problem}
            return report

        vouched: tuple[int, str] | None = None  # what the chain's latest retention record pruned through

        after = -1
        while True:
            rows = await self.database.fetch_all(f"{_SELECT} WHERE tenant = ? AND seq > ? ORDER BY seq LIMIT ?",
                                                 (tenant, after, PAGE))
            for row in rows:
                record = AuditRecord.from_row(row)
                if record.seq < expected:
                    return broken(record.seq, record.id, "record at or before the retention anchor (inserted)")
                if record.seq > expected:
                    return broken(expected, None, f"record {expected} is missing (deleted); the next is {record.seq}")
                if record.prev_hash != prev:
                    return broken(record.seq, record.id, "prev_hash does not match the previous record's hash")
                if chain_hash(prev, record.content()) != record.hash:
                    return broken(record.seq, record.id, "content does not match its hash (edited)")
                report.checked += 1
                prev, expected = record.hash, expected + 1
                vouched = record.pruned_through() or vouched
            if len(rows) < PAGE:
                break
            after = int(rows[-1]["seq"])
        if anchor is not None and vouched != (report.anchor_seq, anchor["hash"]):
            return broken(report.anchor_seq, None, "the retention anchor is not the one the chain's latest retention "
                          "record names (records deleted and the anchor moved)")
        last = expected - 1
        if last < report.head_seq:
            return broken(expected, None, f"records {expected}..{report.head_seq} are missing (deleted at the end)")
        if last > report.head_seq:  # written while we walked, or inserted: ask the head again
            head = await self.database.fetch_one("SELECT seq, hash FROM audit_heads WHERE tenant = ?", (tenant,))
            if head is None or int(head["seq"]) < last:
                return broken(report.head_seq + 1, None, "records after the chain head (inserted)")
            if int(head["seq"]) == last:
                report.head_hash = head["hash"]
            else:  # the chain grew past what we walked: the walked part is verified
                report.head_hash = prev
            report.head_seq = last
        if prev != report.head_hash:
            return broken(last, None, "the last record's hash does not match the chain head")
        return report

    async def prune(self, older_than: float, *, now: float | None = None) -> dict[str, int]:
        """Delete each tenant's records that ended more than `older_than` seconds ago, oldest first.

        Only a prefix of a chain goes: from its first record still young, everything stays.
        The last removed record's seq and hash become the tenant's anchor, and a retention record
        naming them joins the chain in the same transaction. Returns removed counts.
        """
        cutoff = micros((time.time() if now is None else now) - older_than)
        removed: dict[str, int] = {}
        for tenant in await self.tenants():
            async with self.database.transaction() as tx:
                head_seq, _ = await self._lock_head(tx, tenant)
                young = await tx.fetch_one("SELECT MIN(seq) AS seq FROM audit_records WHERE tenant = ? AND ended_at >= ?",
                                           (tenant, cutoff))
                last = int(young["seq"]) - 1 if young and young["seq"] is not None else head_seq
                anchor = await tx.fetch_one("SELECT seq FROM audit_anchors WHERE tenant = ?", (tenant,))
                row = await tx.fetch_one("SELECT hash FROM audit_records WHERE tenant = ? AND seq = ?", (tenant, last))
                if last <= (int(anchor["seq"]) if anchor else 0) or row is None:
                    continue
                count = await tx.execute("DELETE FROM audit_records WHERE tenant = ? AND seq <= ?", (tenant, last))
                await drive_in(tx, self.chain_and_insert([retention_record(tenant, last, row["hash"], count, cutoff)]))
                await tx.execute("INSERT INTO audit_anchors (tenant, seq, hash, pruned_at) VALUES (?, ?, ?, ?) "
                                 "ON CONFLICT (tenant) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
                                 "pruned_at = excluded.pruned_at", (tenant, last, row["hash"], micros(time.time())))
                removed[tenant] = count
        return removed
