"""`mcp-hub pins list|approve` and `mcp-hub registry import`: the marketplace from a terminal.

Both work on the records database of the settings, with no running hub needed. A running
hub re-reads the pins of a session with withheld tools within a few seconds
(`PIN_RECHECK_SECONDS`) and new registrations within `REFRESH_SECONDS`, so what is done
here takes effect there too. `registry import` starts the hub in-process to list and pin
the imported server's tools, acting as an admin (whoever can run it owns the data folder).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from .database import records_database
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

    registry = commands.add_parser("registry", help="publish servers into the marketplace")
    registry_commands = registry.add_subparsers(dest="registry_command", required=True)
    imported = registry_commands.add_parser("import", help="register a server.json of the official MCP Registry")
    common(imported)
    imported.add_argument("file", help="the server.json file")
    imported.add_argument("--slug", help="register under this slug (default: the server.json name, lowercased)")
    imported.add_argument("--prefer", choices=["remote", "package"], default="remote",
                          help="which to use when both remotes and packages are given (default: remote)")
    imported.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                          help="a value for a {variable} of the URL or an argument (repeatable)")
    imported.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    imported.add_argument("--network", choices=["none", "egress"], default="none",
                          help="a hosted package's network: egress reaches public hosts through the hub's proxy "
                               "(server.json cannot say so; default: none)")
    imported.add_argument("--cred", action="append", default=[], metavar="CONNECTION:FIELD=VALUE",
                          help="a credential to list the tools with (not stored)")
    imported.add_argument("--dry-run", action="store_true", help="print the registration, register nothing")


@asynccontextmanager
async def _pins(settings: Settings) -> AsyncIterator[DatabasePins]:
    async with records_database(settings) as database:
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


async def run_registry(args: argparse.Namespace, settings: Settings, parse_creds: Callable[[list[str]], Any]) -> int:
    from .apikeys import Principal
    from .bodies import validated
    from .hub import Hub
    from .registrations import RegistrationBody
    from .server_json import import_server_json

    try:
        with open(args.file, encoding="utf-8") as handle:
            document = json.load(handle)
    except OSError as exc:
        raise HubError(f"cannot read {args.file}: {exc.strerror}", code="invalid_file") from None
    except ValueError as exc:
        raise HubError(f"{args.file} is not JSON: {exc}", code="invalid_file") from None
    variables = {}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise HubError(f"--var must look like NAME=VALUE (got {name!r})", code="invalid_var")
        variables[name] = value
    imported = import_server_json(document, slug=args.slug, prefer=args.prefer, variables=variables, tags=args.tag,
                                  network=args.network)
    for note in imported.notes:
        print(f"note: {note}")
    if args.dry_run:
        print(json.dumps(imported.body, indent=2))
        return 0
    credentials = [c.model_dump(mode="json") | {"values": {k: v.get_secret_value() for k, v in c.values.items()}}
                   for c in parse_creds(args.cred)]
    body = validated(RegistrationBody, {**imported.body, "credentials": credentials or None})
    refused: HubError | None = None
    async with Hub(settings) as hub:
        try:
            result = await hub.registrations.register(body, Principal(tenant="default", key_id="cli", role="admin"))
        except HubError as exc:  # raised after the hub closed: not wrapped in its task groups' exception group
            refused = exc
    if refused is not None:
        raise refused
    pinned = f"pinned {len(result['tools'])} tool(s): {', '.join(result['tools'])}" if result["pinned"] else result["note"]
    print(f"registered {result['slug']}@{result['version']}; {pinned}")
    return 0
