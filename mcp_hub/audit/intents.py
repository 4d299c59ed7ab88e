"""Intents: a tool call's record is durable before the call is sent, so a hub killed mid-call leaves one.

Before a call goes to its server, its *intent* is committed: a row of `audit_intents` holding
the record the call gets if it never finishes (`interrupted`). The call's outcome record is
chained under the same id, and the intent is deleted in that transaction. Intents are not
part of the chain (they are transient); what they become is.

Each hub instance registers in `audit_instances` and refreshes its `seen_at` (a heartbeat).
An instance silent for `audit_instance_timeout` seconds is gone (killed, crashed, cut off):
any hub on the database then chains its intents as `interrupted` records and deletes the
intents and the instance, in one transaction, so that two hubs sweeping at once record each
call once. A hub that stops cleanly sweeps its own intents (calls cancelled by the shutdown).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import jsoncodec
from ..database import Migration, Transaction, drive_in
from .record import INTERRUPTED, TOOL_CALL, AuditRecord, ToolHashes, _new_id, capped, micros, server_ref

if TYPE_CHECKING:
    from ..executor import CallContext, ToolCall
    from ..sessions import ManagedSession

MIGRATION = Migration(3, (
    """CREATE TABLE audit_intents (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, instance TEXT NOT NULL,
        started_at BIGINT NOT NULL, record TEXT NOT NULL)""",
    "CREATE INDEX audit_intents_instance ON audit_intents (instance)",
    "CREATE TABLE audit_instances (instance TEXT PRIMARY KEY, seen_at BIGINT NOT NULL)",
))
INSERT = "INSERT INTO audit_intents (id, tenant, instance, started_at, record) VALUES (?, ?, ?, ?, ?)"
FIELDS = ("id", "tenant", "source", "completion_id", "correlation_id", "key_id", "server_name", "server_ref",
          "tool_name", "tool_hash", "arguments", "started_at", "model", "turn")
MESSAGE = "the hub stopped while this call ran: it may or may not have taken effect"


def _arguments(arguments: dict[str, Any] | str | None) -> Any:
    """The call's arguments as the executor will send them (a string it cannot parse is kept as is)."""
    if isinstance(arguments, str):
        try:
            return jsoncodec.loads_within(arguments) if arguments else {}
        except ValueError:  # unparsable or too deep (jsoncodec.TooDeep): the executor refuses it as a tool error
            return arguments
    return arguments or {}


def intent(call: ToolCall, session: ManagedSession, context: CallContext, limit: int,
           hashes: ToolHashes | None = None) -> AuditRecord:
    """The record `call` gets if it never finishes; its id is also the id of its outcome record."""
    arguments, _ = capped(session.scrubber.value(_arguments(call.arguments)), limit)
    data = json.dumps({"error": {"code": INTERRUPTED, "message": MESSAGE}}, separators=(",", ":"))
    now = micros(time.time())
    return AuditRecord(
        id=_new_id(), tenant=context.tenant, kind=TOOL_CALL, source=context.source, completion_id=context.request_id,
        correlation_id=context.correlation_id, key_id=context.key_id, server_name=call.server,
        server_ref=server_ref(session), tool_name=call.tool, tool_hash=(hashes or ToolHashes()).of(session, call.tool),
        arguments=arguments, result=data, result_bytes=0, result_sha256="", result_truncated=False, is_error=True,
        error_code=INTERRUPTED, duration_ms=0, started_at=now, ended_at=now, model=context.model, turn=context.turn)


def rows(intents: Sequence[AuditRecord], instance: str) -> list[list[Any]]:
    """`audit_intents` rows (the writer process inserts them)."""
    return [[r.id, r.tenant, instance, r.started_at, jsoncodec.dumps({name: getattr(r, name) for name in FIELDS}).decode()]
            for r in intents]


def interrupted(row: dict[str, Any], now: int) -> AuditRecord:
    """The chained record of an intent whose hub is gone: a fresh id (a late outcome keeps the intent's)."""
    fields = json.loads(row["record"])
    data = json.dumps({"error": {"code": INTERRUPTED, "message": MESSAGE}, "call_record_id": fields["id"]},
                      separators=(",", ":"))
    return AuditRecord(**{**fields, "id": _new_id()}, kind=TOOL_CALL, result=data, result_bytes=len(data),
                       result_sha256=hashlib.sha256(data.encode()).hexdigest(), result_truncated=False, is_error=True,
                       error_code=INTERRUPTED, duration_ms=max(0, (now - int(fields["started_at"])) // 1000),
                       ended_at=now)


async def heartbeat(tx: Transaction, instance: str) -> None:
    now = micros(time.time())
    await tx.execute("INSERT INTO audit_instances (instance, seen_at) VALUES (?, ?) "
                     "ON CONFLICT (instance) DO UPDATE SET seen_at = excluded.seen_at", (instance, now))


async def sweep(tx: Transaction, timeout: float, *, instance: str | None = None) -> int:
    """Chain the intents of instances gone for `timeout` seconds (or of `instance`, stopping) as interrupted."""
    from .store import AuditStore

    now = micros(time.time())
    if instance is not None:
        gone = [instance]
    else:
        stale = await tx.fetch_all("SELECT instance FROM audit_instances WHERE seen_at < ?", (now - micros(timeout),))
        gone = [str(row["instance"]) for row in stale]
    claimed = [name for name in gone if await tx.execute("DELETE FROM audit_instances WHERE instance = ?", (name,))]
    if instance is not None:
        claimed = [instance]
    found = []
    for name in claimed:
        found += await tx.fetch_all("SELECT id, record FROM audit_intents WHERE instance = ?", (name,))
    # Intents whose instance row is gone (removed by hand): nobody will finish them either.
    found += await tx.fetch_all("SELECT id, record FROM audit_intents WHERE NOT EXISTS "
                                "(SELECT 1 FROM audit_instances WHERE audit_instances.instance = audit_intents.instance)")
    records, seen = [], set()
    for row in found:
        if row["id"] in seen or not await tx.execute("DELETE FROM audit_intents WHERE id = ?", (row["id"],)):
            continue  # another hub's sweep got it first
        seen.add(row["id"])
        records.append(interrupted(row, now))
    if records:
        await drive_in(tx, AuditStore.chain_and_insert(records))
    return len(records)
