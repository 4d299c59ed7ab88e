"""`mcp-hub audit list|show|verify|export|prune`: the audit trail from a terminal.

The commands open the records database of the settings (`database_url`, else the SQLite
file in the data folder) directly: no running hub is needed, and the operator sees every
tenant (`--tenant` narrows).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from .audit import AuditStore, Filters, Verification
from .audit.record import AuditRecord, micros
from .database import records_database
from .errors import HubError, NotFound
from .settings import Settings


def add_parser(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    audit = commands.add_parser("audit", help="the audit trail of tool executions")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    listing = sub.add_parser("list", help="records, newest first")
    show = sub.add_parser("show", help="one record in full")
    verify = sub.add_parser("verify", help="check the hash chains; exit 1 at a broken link")
    export = sub.add_parser("export", help="records as JSON lines, oldest first")
    prune = sub.add_parser("prune", help="delete records older than the retention age")
    for parser in (listing, show, verify, export, prune):
        common(parser)
    for parser in (listing, export):
        parser.add_argument("--tenant", default="default", help="the tenant (default: default)")
        parser.add_argument("--server", help="only this server (instance name)")
        parser.add_argument("--tool", help="only this tool")
        parser.add_argument("--errors", action="store_true", default=None, help="only failed calls")
        parser.add_argument("--since", help="started at or after (RFC 3339 or epoch seconds)")
        parser.add_argument("--until", help="started before (RFC 3339 or epoch seconds)")
        parser.add_argument("--completion-id")
        parser.add_argument("--correlation-id")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--cursor", type=int, help="the seq to list before (from the previous page)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.add_argument("record_id")
    show.add_argument("--tenant", help="only in this tenant")
    verify.add_argument("--tenant", help="only this tenant (default: every tenant)")
    verify.add_argument("--json", action="store_true")
    prune.add_argument("--older-than-days", type=float, help="default: audit_retention_days")


def _time(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return micros(float(value))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HubError(f"not a time: {value!r} (RFC 3339 or epoch seconds)", code="invalid_time") from None
    return micros(parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp())


def _filters(args: argparse.Namespace) -> Filters:
    return Filters(server=args.server, tool=args.tool, is_error=True if args.errors else None, since=_time(args.since),
                   until=_time(args.until), completion_id=args.completion_id, correlation_id=args.correlation_id)


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[AuditStore]:
    async with records_database(settings) as database:
        store = AuditStore(database)
        await store.migrate()
        yield store


def _when(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _rows(records: list[AuditRecord]) -> list[list[str]]:
    return [[str(r.seq), _when(r.ended_at), r.server_name, r.tool_name or f"({r.kind})",
             {"completed": "ok", "failed": r.error_code or "error"}.get(r.status, r.status),  # interrupted, pruned
             str(r.duration_ms), r.completion_id or "-", r.id]
            for r in records]


def _verification_line(report: Verification) -> str:
    if report.ok:
        unfinished = f", {report.unfinished} calls unfinished" if report.unfinished else ""
        return f"{report.tenant}: ok, {report.checked} records, head {report.head_seq} {report.head_hash[:16]}…{unfinished}"
    broken = report.broken or {}
    return f"{report.tenant}: BROKEN at record {broken.get('seq')}: {broken.get('problem')}" + (
        f" ({broken['record_id']})" if broken.get("record_id") else "")


async def run(args: argparse.Namespace, settings: Settings, table: Callable[[list[list[str]], list[str]], str]) -> int:
    async with _store(settings) as store:
        command = args.audit_command
        if command == "list":
            page, cursor = await store.page(args.tenant, _filters(args), limit=max(1, args.limit), before=args.cursor)
            if args.json:
                print(json.dumps({"data": [r.view() for r in page], "next_cursor": cursor}, indent=2))
                return 0
            print(table(_rows(page), ["SEQ", "ENDED (UTC)", "SERVER", "TOOL", "RESULT", "MS", "COMPLETION", "ID"]))
            if cursor is not None:
                print(f"more: --cursor {cursor}", file=sys.stderr)
            return 0
        if command == "show":
            record = await store.get(args.tenant, args.record_id)
            if record is None:
                raise NotFound(f"no audit record {args.record_id!r}")
            print(json.dumps(record.view(), indent=2, ensure_ascii=False))
            return 0
        if command == "export":
            async for record in store.export(args.tenant, _filters(args)):
                sys.stdout.write(json.dumps(record.view(), ensure_ascii=False) + "\n")
            return 0
        if command == "verify":
            tenants = [args.tenant] if args.tenant else await store.tenants()
            reports = [await store.verify(tenant) for tenant in tenants]
            if args.json:
                print(json.dumps([report.view() for report in reports], indent=2))
            else:
                for report in reports:
                    print(_verification_line(report))
                if not reports:
                    print("no audit records")
            return 0 if all(report.ok for report in reports) else 1
        days = args.older_than_days or settings.audit_retention_days
        if not days:
            raise HubError("give --older-than-days or set audit_retention_days", code="no_retention")
        removed = await store.prune(days * 86400)
        for tenant, count in sorted(removed.items()):
            print(f"{tenant}: pruned {count} records")
        print(f"pruned {sum(removed.values())} records older than {days:g} days", file=sys.stderr)
        return 0
