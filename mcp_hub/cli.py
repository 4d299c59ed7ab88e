"""The `mcp-hub` command line: serve the API, or list and call servers from a terminal.

The CLI maps flags to `Settings` and drives the same `Hub` the HTTP API uses; the
terminal commands start the hub in-process, so no running service is needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from . import __version__, audit_cli, marketplace_cli, notes_cli
from .apikeys import ROLES, open_key_store
from .authentication import is_loopback
from .credentials import Credential
from .database import records_database
from .errors import HubError, ServerError
from .executor import CallContext
from .hub import Hub
from .registrations import Registrations, RegistrationStore
from .settings import Settings
from .views import entry_summary, tool_view, with_source


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", type=Path, help="registry file (default: registry.yaml here)")
    parser.add_argument("--data-dir", type=Path, help="where the hub writes (default: .mcp-hub)")
    parser.add_argument("--config", type=Path, help="settings file (YAML or TOML)")
    parser.add_argument("--log-level", help="critical, error, warning, info or debug")
    parser.add_argument("--database-url", help="records database (API keys, audit, registrations): postgresql://...; "
                        "unset: MCP_HUB_DATABASE_URL, else SQLite in the data folder. Prefer the variable for a password")


def _creds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cred", action="append", default=[], metavar="CONNECTION:FIELD=VALUE",
                        help="a credential value, e.g. notes:token=abc (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-hub", description="Host and route MCP servers.")
    parser.add_argument("--version", action="version", version=f"mcp-hub {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API")
    _common(serve)
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--prewarm", action="store_true", default=None, help="start hosted servers at start-up")

    serve.add_argument("--allow-unauthenticated", action="store_true", default=None,
                       help="bind a non-loopback address although no API key exists")
    serve.add_argument("--log-format", choices=["text", "json"], help="json: JSON lines with request ids")
    serve.add_argument("--anonymous-admin", action="store_true", default=None,
                       help="DANGEROUS: while no API key exists, anonymous callers are admins (may register raw "
                       "commands that run on this machine)")

    keys = commands.add_parser("keys", help="manage hub API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key (printed once)")
    _common(create)
    create.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--role", default="member", choices=ROLES)
    listing = key_commands.add_parser("list", help="list keys (never the keys themselves)")
    _common(listing)
    listing.add_argument("--json", action="store_true")
    revoke = key_commands.add_parser("revoke", help="revoke a key by id")
    _common(revoke)
    revoke.add_argument("key_id")

    servers = commands.add_parser("servers", help="list the registry file's servers and the published ones")
    _common(servers)
    servers.add_argument("--json", action="store_true", help="print JSON instead of a table")
    servers.add_argument("--all", action="store_true", help="unlisted published servers too")

    tools = commands.add_parser("tools", help="list a server's live tools")
    _common(tools)
    tools.add_argument("slug", help="org/name, org/name@version or a URL")
    _creds(tools)

    call = commands.add_parser("call", help="call one tool")
    _common(call)
    call.add_argument("slug", help="org/name, org/name@version or a URL")
    call.add_argument("tool")
    call.add_argument("--args", default="{}", help="arguments as a JSON object")
    _creds(call)

    rotate = commands.add_parser("rotate-encryption-key",
                                 help="publish a new credential-encryption key (the old one decrypts for the grace period)")
    _common(rotate)
    audit_cli.add_parser(commands, _common)
    marketplace_cli.add_parser(commands, _common)
    notes_cli.add_parser(commands, _common)
    return parser


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return Settings.load(args.config, registry=args.registry, data_dir=args.data_dir, log_level=args.log_level,
                         database_url=getattr(args, "database_url", None), **extra)


def parse_cred_flags(values: Sequence[str]) -> list[Credential]:
    """`conn:field=value` flags grouped into one credential per connection."""
    grouped: dict[str, dict[str, str]] = {}
    for value in values:
        connection, sep, rest = value.partition(":")
        field, eq, secret = rest.partition("=")
        if not (sep and eq and connection and field):
            raise HubError(f"--cred must look like CONNECTION:FIELD=VALUE (got a value for {connection or '?'!r})",
                           code="invalid_cred")
        grouped.setdefault(connection, {})[field] = secret
    return [Credential(connection_name=name, values=fields) for name, fields in grouped.items()]  # type: ignore[arg-type]


def table(rows: list[list[str]], headers: list[str]) -> str:
    """A plain aligned table."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [headers, ["-" * w for w in widths], *rows]]
    return "\n".join(lines)


def _short(text: str | None, width: int = 60) -> str:
    return textwrap.shorten(" ".join((text or "").split()), width=width, placeholder="…")


async def _servers(args: argparse.Namespace) -> int:
    """The registry file's servers and those published through the API (the records database)."""
    settings = _settings(args)
    hub = Hub(settings)
    async with records_database(settings) as database:
        await Registrations(hub, await RegistrationStore(database).open()).refresh()
    summaries = [with_source(hub.registry, entry_summary(entry)) for entry in hub.registry.entries()
                 if args.all or entry.slug not in hub.registry.unlisted]
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    rows = [[s["slug"], s["latest"], s["kind"], "registered" if s["source"] == "registered" else "file",
             ",".join(s["connections"]) or "-", _short(s["description"], 50)] for s in summaries]
    print(table(rows, ["SLUG", "LATEST", "KIND", "SOURCE", "CONNECTIONS", "DESCRIPTION"]))
    return 0


async def _tools(args: argparse.Namespace) -> int:
    async with Hub(_settings(args)) as hub:
        servers = hub.open_servers(args.slug, parse_cred_flags(args.cred))
        tools = await hub.list_tools(servers)
        if servers.errors:
            for name, error in servers.errors.items():
                print(f"error: {name}: {error.message} ({error.code}). {error.recommendation}", file=sys.stderr)
            return 1
        listed = [tool_view(tool) for tools_of in tools.values() for tool in tools_of]
        if args.json:
            print(json.dumps(listed, indent=2))
            return 0
        rows = [[t["name"], ", ".join(t.get("inputSchema", {}).get("properties", {})) or "-", _short(t.get("description"))]
                for t in listed]
        print(table(rows, ["TOOL", "ARGUMENTS", "DESCRIPTION"]))
    return 0


async def _call(args: argparse.Namespace) -> int:
    try:
        arguments = json.loads(args.args)
    except ValueError:
        raise HubError("--args is not valid JSON", code="invalid_json") from None
    if not isinstance(arguments, dict):
        raise HubError("--args must be a JSON object", code="invalid_json")
    async with Hub(_settings(args)) as hub:
        context = CallContext(request_id=f"cli-{uuid.uuid4().hex[:24]}", source="direct")
        result, servers = await hub.call_tool(args.slug, args.tool, arguments, parse_cred_flags(args.cred),
                                              context=context)
    for name, error in servers.errors.items():
        print(f"error: {name}: {error.message} ({error.code}). {error.recommendation}", file=sys.stderr)
    if servers.errors and not servers.sessions:
        return 1
    if args.json:
        print(json.dumps(result.model_dump(exclude={"call_id"}), indent=2))
    else:
        print(_render_text(result.result))
        print(f"-- {result.server_name} {result.tool_name}: {'ERROR' if result.is_error else 'ok'} in {result.duration_ms} ms",
              file=sys.stderr)
    return 1 if result.is_error else 0


def _render_text(result: Any) -> str:
    """Text blocks as text; everything else as indented JSON."""
    if isinstance(result, list) and result and all(isinstance(b, dict) and b.get("type") == "text" for b in result):
        return "\n".join(block["text"] for block in result)
    return json.dumps(result, indent=2)


def cmd_keys(args: argparse.Namespace) -> int:
    """`keys create|list|revoke` on the records database of the settings (no MCP server is started)."""
    return anyio.run(_keys, args, _settings(args))


async def _keys(args: argparse.Namespace, settings: Settings) -> int:
    async with open_key_store(settings) as store:
        if args.keys_command == "create":
            key, record = await store.create(args.tenant, args.name, args.role)
            print(key)
            print(f"created key {record.id} for tenant {record.tenant!r} ({record.role}); it is shown only once",
                  file=sys.stderr)
            return 0
        if args.keys_command == "revoke":
            record = await store.revoke(args.key_id)
            print(f"revoked key {record.id} of tenant {record.tenant!r}", file=sys.stderr)
            return 0
        records = await store.list()
    if args.json:
        print(json.dumps([r.__dict__ for r in records], indent=2))
        return 0
    rows = [[r.id, r.tenant, r.name or "-", r.role, _when(r.created_at), _when(r.revoked_at) if r.revoked_at else "-"]
            for r in records]
    print(table(rows, ["ID", "TENANT", "NAME", "ROLE", "CREATED", "REVOKED"]))
    return 0


async def _key_count(settings: Settings) -> int:
    async with open_key_store(settings) as store:
        return await store.key_count()


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp)) if timestamp else "-"


def cmd_rotate_encryption_key(args: argparse.Namespace) -> int:
    """Rotate the generated key in the data folder; a running hub picks it up at its next use."""
    from .keyring import Keyring

    settings = _settings(args)
    key = Keyring.from_settings(settings).open().rotate()
    print(key.kid)
    print(f"published key {key.kid}; retired keys decrypt for {settings.encryption_key_grace:g} more seconds",
          file=sys.stderr)
    return 0


def serve_settings(args: argparse.Namespace) -> Settings:
    """The settings of `mcp-hub serve`: the common ones and the serve flags."""
    return _settings(args, host=args.host, port=args.port, prewarm=args.prewarm, log_format=args.log_format,
                     allow_unauthenticated=args.allow_unauthenticated, anonymous_admin=args.anonymous_admin)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .httpguard import server_config

    settings = serve_settings(args)
    if not is_loopback(settings.host) and not settings.allow_unauthenticated \
            and anyio.run(_key_count, settings) == 0:
        raise HubError(f"refusing to serve on {settings.host} with no API key: anyone could use the hub. "
                       "Create one with `mcp-hub keys create --tenant NAME`, bind to 127.0.0.1, "
                       "or pass --allow-unauthenticated.", code="unauthenticated_bind")
    app = create_app(settings)
    print(f"mcp-hub {__version__}: {settings.registry} on http://{settings.host}:{settings.port}", file=sys.stderr)
    options: dict[str, Any] = {"host": settings.host, "port": settings.port, "log_level": settings.log_level,
                               "lifespan": "on"}
    if settings.log_format == "json":  # our own access lines (with the request id) replace uvicorn's
        from .observability import logging_config

        options.update(log_config=logging_config(settings.log_level, "json"), access_log=False)
    startup = StartupErrors(app)
    server = uvicorn.Server(server_config(startup, settings, **options))
    try:
        server.run()
    except SystemExit:  # uvicorn's way out of a failed start-up (the lifespan, or a port in use: logged)
        if startup.error is not None:
            raise startup.error from None
        raise HubError(f"could not serve on {settings.host}:{settings.port} (see above)", code="startup_failed") from None
    return 0


class StartupErrors:
    """ASGI wrapper: a `HubError` that fails the app's start-up (an unreachable database, ...) is kept for
    the CLI to print as one line, instead of the traceback uvicorn logs for a failed lifespan."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.error: HubError | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[dict[str, Any]] = []

        async def holding_send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.failed":  # its "message" is a traceback: hold it
                held.append(message)
                return
            await send(message)

        try:
            await self.app(scope, receive, holding_send)
        except BaseException as exc:
            error = _hub_error(exc)
            if held and error is not None:
                self.error = error
                await send({**held[0], "message": ""})
                return
            if held:
                await send(held[0])
            raise


def _hub_error(exc: BaseException) -> HubError | None:
    """`exc`, or the one exception of a group of one (task groups wrap), when it is a `HubError`."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, HubError) else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "servers":
            return anyio.run(_servers, args)
        if args.command == "rotate-encryption-key":
            return cmd_rotate_encryption_key(args)
        if args.command == "keys":
            return cmd_keys(args)
        if args.command == "audit":
            return anyio.run(audit_cli.run, args, _settings(args), table)
        if args.command == "pins":
            return anyio.run(marketplace_cli.run, args, _settings(args), table)
        if args.command == "registry":
            return anyio.run(marketplace_cli.run_registry, args, _settings(args), parse_cred_flags)
        if args.command == "notes":
            return notes_cli.run(args, _settings(args), parse_cred_flags)
        return anyio.run(_tools if args.command == "tools" else _call, args)
    except ServerError as exc:
        print(f"error: {exc.message} ({exc.code}). {exc.recommendation}", file=sys.stderr)
    except HubError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
