"""`mcp-hub pins list|approve`: tool pins from a terminal (the records database, no running hub needed).

A running hub re-reads the pins of a session with withheld tools within a few seconds
(`PIN_RECHECK_SECONDS`), so an approval made here takes effect there too.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from .database import open_database
from .errors import HubError
from .pinning import DatabasePins
from .settings import Settings


def add_parser(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    pins = commands.add_parser("pins", help="tool pins: what changed, and approving it")
    sub = pins.add_subparsers(dest="pins_command", required=True)
    listing = sub.add_parser("list", help="the pins of a server (every version, or one)")
    approve = sub.add_parser("approve", help="approve the changed tools of a server version")
    for parser in (listing, approve):
        common(parser)
        parser.add_argument("server", help="org/name or org/name@1.0.0")
    listing.add_argument("--json", action="store_true", help="print JSON, pending definitions included")
    approve.add_argument("--tool", action="append", dest="tools", help="only this tool (repeatable)")


@asynccontextmanager
async def _pins(settings: Settings) -> AsyncIterator[DatabasePins]:
    url = settings.database_url.get_secret_value() if settings.database_url else None
    async with open_database(url, settings.records_path) as database:
        yield await DatabasePins(database).open()


async def run(args: argparse.Namespace, settings: Settings, table: Callable[[list[list[str]], list[str]], str]) -> int:
    slug, _, version = args.server.partition("@")
    async with _pins(settings) as pins:
        if args.pins_command == "list":
            rows = await pins.listing(slug, version or None)
            if args.json:
                print(json.dumps(rows, indent=2, ensure_ascii=False))
            else:
                print(table([[r["version"], r["tool"], r["status"], (r["approved_hash"] or "-")[:16],
                              (r["pending_hash"] or "-")[:16], r["approved_by"] or "-"] for r in rows],
                            ["VERSION", "TOOL", "STATUS", "APPROVED", "PENDING", "BY"]))
            return 0
        if not version:
            raise HubError("name the exact version to approve: org/name@1.0.0", code="invalid_request")
        approved = await pins.approve(slug, version, args.tools, approved_by="cli")
        print(f"approved {len(approved)} tool(s) of {slug}@{version}: {', '.join(approved) or '-'}")
        return 0
