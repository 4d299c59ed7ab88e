"""The `Hub`: the one owner of the service's long-lived resources.

It holds the settings, the registry, the pooled HTTP clients, the OAuth broker
(and so every OAuth token), the session pool and the executor; the app lifespan (or
a CLI command) enters it and exits it. Handlers call its methods and never touch the
resources directly.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import httpx2
import mcp.types as types
from mcp.client.session import ElicitationFnT
from pydantic import TypeAdapter, ValidationError

from .apikeys import KeyStore
from .audit import AuditRecord, AuditTrail, Commits, server_error_record, tool_call_record
from .audit.record import ToolHashes
from .catalog import CatalogCache
from .connection_claims import scope
from .credentials import Credential, bind
from .database import Database, records_database
from .deferred import DeferredCompletions
from .egress import EgressGuard
from .egress_proxy import EgressProxy
from .envelopes import unseal
from .errors import CredentialError, NotFound, RequestError, ServerError
from .executor import Batch, CallContext, Executor, ToolCall, ToolResult
from .gateway import Gateway
from .handoff import HandoffStore
from .idempotency import IdempotencyStore
from .installer import PackageStore
from .keyring import Keyring
from .metrics import HubMetrics, call_labels
from .oauth import ClientIdentity, OAuthBroker, UserAgent
from .pinning import DatabasePins, ToolGate
from .pool import SessionPool
from .private_files import private_dir, tighten
from .providers import ProviderSet
from .providers.upstream import client_session
from .ratelimit import RateLimiter
from .registrations import Registrations, RegistrationStore
from .registry import Entry, Registry
from .resolution import resolve
from .sandbox import Sandbox
from .scrubbing import LiveSecretsFilter
from .sessions import ManagedSession
from .settings import Settings
from .state import StateStore, open_store
from .transports import Opener, decline_elicitation, sends_credentials

PIN_RECHECK_SECONDS = 5.0  # how soon a session with withheld tools looks at its pins again
_credentials_adapter = TypeAdapter(Credential | list[Credential])


def parse_credentials(value: Any, param: str = "credentials") -> list[Credential]:
    """Request `credentials`: one `{connection_name, values}` object or a list of them."""
    if value is None:
        return []
    try:
        parsed = _credentials_adapter.validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        # Name only list positions and the model's own fields: a key the caller wrote (a value's
        # name, a stray field) may itself be a secret pasted in the wrong place.
        known = {"connection_name", "values", "server"}
        where = ".".join(str(part) for part in first["loc"] if isinstance(part, int) or part in known)
        kind = "an unexpected field" if first["type"] == "extra_forbidden" else first["msg"].lower()
        raise RequestError(f"invalid credentials at {where or 'top level'}: {kind}; each credential is "
                           "{\"connection_name\": str, \"values\": {field: str | int | bool}, \"server\"?: str}",
                           param=param) from None
    return parsed if isinstance(parsed, list) else [parsed]


@dataclass
class Servers:
    """The servers of one request: live sessions by instance name, and those that failed."""

    sessions: dict[str, ManagedSession] = field(default_factory=dict)
    errors: dict[str, ServerError] = field(default_factory=dict)
    audited: set[str] = field(default_factory=set)  # failed servers already in the audit trail

    def error_entries(self) -> dict[str, dict[str, str]]:
        return {name: error.to_entry() for name, error in self.errors.items()}


class Hub:
    """The service object behind the HTTP API and the CLI."""

    def __init__(self, settings: Settings, registry: Registry | None = None, *,
                 oauth_identity: ClientIdentity | None = None, user_agent: UserAgent | None = None,
                 elicitation: ElicitationFnT = decline_elicitation) -> None:
        """`user_agent` performs the user step of OAuth authorization-code flows (none: they end
        in `AuthRequired`); `elicitation` answers servers' elicitation requests (default: decline)."""
        self.settings = settings
        self.registry = registry if registry is not None else Registry.from_file(settings.registry)
        self.executor = Executor(settings.call_timeout, settings.tool_output_max_bytes)
        self._oauth_identity = oauth_identity
        self._user_agent = user_agent
        self._elicitation = elicitation
        self._providers: ProviderSet | None = None
        self._oauth: OAuthBroker | None = None
        self._pool: SessionPool | None = None
        self._stack: AsyncExitStack | None = None
        self.egress = EgressGuard(settings.egress_allow)
        self._egress_http: httpx2.AsyncHTTPTransport | None = None  # MCP server URLs only: guarded
        self._keyring: Keyring | None = None
        self.limiter: RateLimiter | None = None  # per-key request rate; None: unlimited (or not running)
        self._state: StateStore | None = None
        self._idempotency: IdempotencyStore | None = None
        self._handoffs: HandoffStore | None = None
        self._deferred: DeferredCompletions | None = None
        self.instance = settings.instance_name or f"{socket.gethostname()}:{os.getpid()}"
        self._gateway: Gateway | None = None
        self._pins: DatabasePins | None = None
        self._registrations: Registrations | None = None
        self._database: Database | None = None
        self._keys: KeyStore | None = None
        self._audit: AuditTrail | None = None  # None: not running, or `audit_enabled` is off
        self.metrics = HubMetrics()
        self._tool_hashes = ToolHashes()
        self.catalogs = CatalogCache()  # requests naming the same servers share their tool catalog
        # Published npm/PyPI packages, installed once each into the data folder (see `installer.py`).
        self.packages = PackageStore(settings.data_dir.resolve() / "packages", timeout=settings.package_install_timeout)
        self.metrics.gauges(lambda: self.status() if self._pool is not None else {})

    @property
    def database(self) -> Database:
        """The durable-records database (`database_url`, else SQLite in the data folder)."""
        if self._database is None:
            raise RuntimeError("the hub is not running")
        return self._database

    @property
    def keys(self) -> KeyStore:
        """Hub API keys (see `apikeys.py`), in the durable-records database."""
        if self._keys is None:
            raise RuntimeError("the hub is not running")
        return self._keys

    @property
    def providers(self) -> ProviderSet:
        if self._providers is None:
            raise RuntimeError("the hub is not running")
        return self._providers

    @property
    def audit(self) -> AuditTrail:
        """The audit trail of tool executions."""
        if self._audit is None:
            raise RuntimeError("the hub is not running, or its audit trail is off (audit_enabled)")
        return self._audit

    @property
    def keyring(self) -> Keyring:
        """The RSA keys for encrypted credentials (published at /.well-known/jwks.json)."""
        if self._keyring is None:
            raise RuntimeError("the hub is not running")
        return self._keyring

    @property
    def state(self) -> StateStore:
        """The store of state shared with other hub instances (`state_url`)."""
        if self._state is None:
            raise RuntimeError("the hub is not running")
        return self._state

    @property
    def idempotency(self) -> IdempotencyStore:
        if self._idempotency is None:
            raise RuntimeError("the hub is not running")
        return self._idempotency

    @property
    def handoffs(self) -> HandoffStore:
        """Saved loop state of client-tool handoffs (in the state store)."""
        if self._handoffs is None:
            raise RuntimeError("the hub is not running")
        return self._handoffs

    @property
    def deferred(self) -> DeferredCompletions:
        """Deferred completions: background work on the hub's task group, records in the state store."""
        if self._deferred is None:
            raise RuntimeError("the hub is not running")
        return self._deferred

    @property
    def pins(self) -> DatabasePins:
        """Tool pins (see `pinning.py`), in the durable-records database."""
        if self._pins is None:
            raise RuntimeError("the hub is not running")
        return self._pins

    @property
    def registrations(self) -> Registrations:
        """Servers published through the API (see `registrations.py`)."""
        if self._registrations is None:
            raise RuntimeError("the hub is not running")
        return self._registrations

    @property
    def gateway(self) -> Gateway:
        """The MCP gateway (`/mcp/{org}/{name}`), its session manager running while the hub runs."""
        if self._gateway is None:
            raise RuntimeError("the hub is not running")
        return self._gateway

    @property
    def pool(self) -> SessionPool:
        if self._pool is None:
            raise RuntimeError("the hub is not running")
        return self._pool

    async def __aenter__(self) -> Hub:
        """Open every resource; a failure part-way closes what was already open."""
        data_dir = private_dir(self.settings.data_dir.resolve())
        tighten(data_dir)  # what an earlier version or a wide umask left readable
        limits = httpx2.Limits(max_connections=200, max_keepalive_connections=50)
        async with AsyncExitStack() as stack:
            self._keyring = Keyring.from_settings(self.settings, data_dir / "encryption-keys").open()
            state = open_store(self.settings.state_url.get_secret_value(), self.settings.state_prefix)
            self._state = await stack.enter_async_context(state)
            self._idempotency = IdempotencyStore(self._state, ttl=self.settings.idempotency_ttl)
            self._handoffs = HandoffStore(self._state, self.settings.handoff_ttl)
            self._database = await stack.enter_async_context(records_database(self.settings))
            self._keys = await KeyStore(self._database).open(legacy=self.settings.keys_path)
            if self.settings.audit_enabled:
                trail = AuditTrail(self._database, max_batch=self.settings.audit_batch_max,
                                   commit_delay=self.settings.audit_commit_delay,
                                   retention_days=self.settings.audit_retention_days, on_commit=self.metrics.audit_commit,
                                   instance_timeout=self.settings.audit_instance_timeout)
                self._audit = await stack.enter_async_context(trail)
            if self.settings.rate_limit_per_minute:
                self.limiter = self._state.limiter(self.settings.rate_limit_per_minute, self.settings.rate_limit_burst)
            # Model providers (operator-configured URLs) on aiohttp: their calls are the hottest path.
            self._providers = ProviderSet(self.settings, await stack.enter_async_context(client_session()))
            self._oauth = OAuthBroker(self._oauth_identity, user_agent=self._user_agent)
            self._egress_http = self.egress.transport(limits=limits)  # MCP server URLs: guarded
            stack.push_async_callback(self._egress_http.aclose)
            # Sandboxed children's only way out; closes whatever sockets are still served on exit.
            egress_proxy = await stack.enter_async_context(EgressProxy(self.egress))
            sandbox = self._sandbox(data_dir)
            self.packages.use(sandbox, egress_proxy, base_env=self.settings.sandbox_base_env)
            opener = Opener(logs_dir=data_dir / "logs", data_dir=data_dir, registry_root=self.registry.root,
                            http=self._egress_http, http_timeout=self.settings.connect_timeout, oauth=self._oauth,
                            elicitation=self._elicitation, egress=self.egress, egress_proxy=egress_proxy,
                            sandbox=sandbox, limits=self.settings.sandbox_limits,
                            base_env=self.settings.sandbox_base_env, packages=self.packages,
                            stdio_message_max_bytes=self.settings.stdio_message_max_bytes)
            self._pins = await DatabasePins(self._database).open()
            self._registrations = Registrations(self, await RegistrationStore(self._database).open())
            await self._registrations.refresh()
            refresher = await stack.enter_async_context(anyio.create_task_group())
            refresher.start_soon(self._registrations.refresh_forever)
            stack.callback(refresher.cancel_scope.cancel)
            self._pool = await stack.enter_async_context(SessionPool(self.settings, opener, gate=ToolGate(self._pins)))
            log_filter = LiveSecretsFilter(lambda: [s.scrubber for s in self.pool.sessions()])
            log_filter.install()
            stack.callback(log_filter.remove)
            self._gateway = Gateway(self)
            await stack.enter_async_context(self._gateway.run())
            # Background work (deferred completions) outlives requests, not the hub: cancelled first on exit.
            tasks = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tasks.cancel_scope.cancel)
            self._deferred = DeferredCompletions(self._state, tasks, ttl=self.settings.deferred_ttl,
                                                 lease=self.settings.deferred_lease, instance=self.instance)
            self._stack = stack.pop_all()
        if self.settings.prewarm:
            for entry in self.registry.entries():
                if entry.versions[entry.latest].hosted and not any(c.required for c in entry.connections.values()):
                    self.open_servers(entry.slug)
        return self

    def _sandbox(self, data_dir: Path) -> Sandbox | None:
        """The hosted servers' sandbox (None: turned off); it never shows them the hub's data folder or keys."""
        if not self.settings.sandbox:
            return None
        hidden = [data_dir, *([self.settings.encryption_key_file.resolve()] if self.settings.encryption_key_file else [])]
        return Sandbox(self.settings.sandbox_bwrap, uid=self.settings.sandbox_uid, hidden=hidden)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.__aexit__(exc_type, exc, tb)
        finally:
            # The tokens die with the hub; nothing below is usable after this.
            self._pool = self._providers = self._oauth = self._state = self._idempotency = self._database = self._audit = None
            self._gateway = self._pins = self._registrations = self._handoffs = self._deferred = None
            self._keys = None
            self._egress_http = None
            self.limiter = None

    # -- resolution -------------------------------------------------------------------------

    def open_servers(self, mcp_servers: Any, credentials: Sequence[Credential] = (), *, tenant: str = "default") -> Servers:
        """Resolve `mcp_servers`, bind credentials, and get (or start) a session for each."""
        targets, errors = resolve(mcp_servers, self.registry)
        servers = Servers(errors=dict(errors))
        scoped = scope(targets, credentials, self.registry)  # colliding connection names of different owners
        for target in targets:
            mine = scoped.credentials[target.name]
            try:
                unsealed = unseal(target, self.keyring)  # this server's own encrypted credentials
                try:
                    binding = unsealed.apply(bind(target.entry, target.name, [*mine, *unsealed.credentials]))
                except CredentialError as exc:
                    raise scoped.explain(exc) from None
                if self._oauth is not None:
                    binding = self._oauth.prepare(tenant, target, binding, mine)
                if target.version.url is not None:  # what needs no DNS fails here; the opener checks the rest
                    self.egress.precheck(target.name, target.version.url,
                                         credentials=sends_credentials(target, binding))
            except ServerError as exc:
                servers.errors[target.name] = exc
                continue
            try:
                servers.sessions[target.name] = self.pool.get(target, binding, tenant)
            except ServerError as exc:
                servers.errors[target.name] = exc
        return servers

    async def list_tools(self, servers: Servers) -> dict[str, list[types.Tool]]:
        """Tools of every live server, concurrently; servers that fail move to `servers.errors`."""
        cached = {name: session.ready_tools() for name, session in servers.sessions.items()}
        if all(listed is not None for listed in cached.values()):  # the hot path: no task group
            self._pin_errors(servers)
            return {name: listed for name, listed in cached.items() if listed is not None}
        tools: dict[str, list[types.Tool]] = {}

        async def one(name: str, session: ManagedSession) -> None:
            try:
                tools[name] = await session.list_tools()
            except ServerError as exc:
                servers.errors[name] = exc
            except TimeoutError:
                servers.errors[name] = ServerError(f"server {name!r} did not become ready in time", server=name,
                                                   code="timeout")

        async with anyio.create_task_group() as tg:
            for name, session in servers.sessions.items():
                tg.start_soon(one, name, session)
        for name in servers.errors:
            servers.sessions.pop(name, None)
        self._pin_errors(servers)
        return {name: tools[name] for name in servers.sessions if name in tools}

    @staticmethod
    def _pin_errors(servers: Servers) -> None:
        """Servers whose tools pinning withholds: their other tools are served, the error is reported."""
        for name, session in servers.sessions.items():
            if session.pin_error is not None:
                servers.errors.setdefault(name, session.pin_error)
                if time.monotonic() - session.reviewed_at > PIN_RECHECK_SECONDS:
                    session.invalidate_tools()  # approved elsewhere (CLI, another hub)? the next listing sees it

    async def approve_pins(self, server: str, version: str, tools: Sequence[str] | None = None, *,
                           approved_by: str) -> list[str]:
        """An admin approves the changed tools of `server@version`; live sessions re-list."""
        approved = await self.pins.approve(server, version, tools, approved_by=approved_by)
        for session in self.pool.sessions():
            if session.target.slug == server and session.target.version_key == version:
                session.invalidate_tools()
        return approved

    async def execute(self, calls: Sequence[ToolCall], servers: Servers, *, parallel: bool = True,
                      context: CallContext | None = None, commits: Commits | None = None) -> Batch:
        """Run `calls` on `servers`; `context` says for whom and within what (the audit trail's fields).

        Returns once the calls' audit records are committed or, with `commits`, handed to the
        writer: the caller then waits on `commits` before reporting the results to anyone.
        """
        ids = await self._begin(calls, servers, context)
        batch = await self.executor.run(calls, servers.sessions, parallel=parallel)
        for name, error in batch.server_errors.items():
            servers.errors.setdefault(name, error)
        await self._record(batch.results, servers, context, commits, ids)
        return batch

    async def _begin(self, calls: Sequence[ToolCall], servers: Servers, context: CallContext | None) -> list[str | None]:
        """Commit the intent of each call that will reach a server before any is sent; their record ids."""
        if self._audit is None:
            return [None] * len(calls)
        return await self._audit.begin(calls, servers.sessions, context or CallContext(),
                                       self.settings.audit_result_max_bytes, self._tool_hashes)

    async def record_server_errors(self, servers: Servers, context: CallContext | None = None) -> None:
        """Put the request's failed servers in the audit trail (each once per request)."""
        await self._record([], servers, context)

    async def _record(self, results: Sequence[ToolResult], servers: Servers, context: CallContext | None,
                      commits: Commits | None = None, ids: Sequence[str | None] = ()) -> None:
        """Metrics for `results`, and their audit records (with any new server failures), committed."""
        for result in results:
            server, tool = call_labels(servers.sessions.get(result.server_name), result.tool_name)
            self.metrics.tool_call(server, tool, result.duration_ms / 1000, result.error_code, result.is_error)
        failed = [name for name in servers.errors if name not in servers.audited]
        servers.audited.update(failed)
        self.metrics.server_errors(servers.errors[name].code for name in failed)
        if self._audit is None:
            return
        context = context or CallContext()
        limit = self.settings.audit_result_max_bytes
        records: list[AuditRecord] = [server_error_record(name, servers.errors[name], context, limit) for name in failed]
        records += [tool_call_record(result, servers.sessions.get(result.server_name), context, limit, self._tool_hashes,
                                     ids[index] if index < len(ids) else None) for index, result in enumerate(results)]
        await self._audit.record(records, commits, [ident for ident in ids if ident is not None])

    # -- one-shot operations (API and CLI) ----------------------------------------------------

    async def call_tool(self, server: Any, tool: str, arguments: dict[str, Any] | None,
                        credentials: Sequence[Credential] = (), *, tenant: str = "default",
                        context: CallContext | None = None) -> tuple[ToolResult, Servers]:
        """Resolve one server and run one tool on it."""
        if isinstance(server, list) and len(server) != 1:
            raise RequestError("`server` names exactly one server", param="server")
        servers = self.open_servers(server, credentials, tenant=tenant)
        name = next(iter(servers.sessions), None) or next(iter(servers.errors), str(server))
        context = context or CallContext(tenant=tenant, source="direct")
        call = ToolCall(server=name, tool=tool, arguments=arguments)
        ids = await self._begin([call], servers, context)
        result = await self.executor.call(call, servers.sessions.get(name), servers.errors)
        await self._record([result], servers, context, ids=ids)
        return result, servers

    def entry(self, slug: str) -> Entry:
        entry = self.registry.get(slug)
        if entry is None:
            close = self.registry.suggest(slug)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise NotFound(f"no server {slug!r} in the registry{hint}", code="server_not_found", param="slug")
        return entry

    def status(self) -> dict[str, Any]:
        sessions = self.pool.sessions()
        return {
            "servers": len(self.registry),
            "sessions": sum(1 for s in sessions if s.alive),
            "hosted_children": sum(1 for s in sessions if s.alive and s.hosted),
        }
