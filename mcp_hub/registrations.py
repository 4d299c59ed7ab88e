"""Servers published through the API: validated, stored in the records database, resolvable by slug.

A registration is an entry like a `registry.yaml` one (slug, description, tags,
connections, limits) whose versions arrive one at a time and are immutable once stored;
a version can be deprecated (still resolvable when pinned exactly, never picked as
latest) and a server unlisted (resolvable, not in `GET /v1/servers`). The file's
entries stay read-only: their slugs cannot be registered.

Who may write: a key with the `admin` role, for any org; a key with the `publisher` role,
for the org equal to its tenant (`acme/…` for a key of tenant `acme`). A hosted version
from the API is a `package` (npm or pypi, installed once by the hub and run from its own
entry point: `mcp_hub.installer`); a raw `command` runs anything on the hub's machine, so
only admins may register one. Every route that sets environment variables (versions,
server.json import, connection templates) is held to `envpolicy`: a refused name is a 422
`env_not_allowed` naming the variable.

Registering a version lists its tools at once and pins them (`pinning.py`); a server that
needs a credential the request does not bring is pinned on first use instead, and one
that cannot be reached is refused (422), nothing stored. Every hub sharing the database
sees new registrations within `REFRESH_SECONDS`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import anyio
import mcp.types as types
from pydantic import BaseModel, ConfigDict

from .apikeys import Principal
from .connection_claims import check_new_connections
from .credentials import Credential, bind
from .envpolicy import env_problems
from .errors import (
    Conflict,
    CredentialError,
    EnvNotAllowed,
    Forbidden,
    NotFound,
    PackageInstallFailed,
    RequestError,
    ServerError,
    Unprocessable,
)
from .packages import Package
from .registration_store import RegistrationStore, build_entry
from .registry import SLUG_RE, Entry, parse_version
from .resolution import Target

__all__ = ["NewVersionBody", "Package", "RegistrationBody", "RegistrationStore", "Registrations"]
REFRESH_SECONDS = 5.0


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VersionBody(_Body):
    """One version: a remote `url`, a hosted `package`, or (admins only) a raw hosted `command`."""

    version: str
    url: str | None = None
    transport: Literal["streamable-http", "sse"] | None = None
    headers: dict[str, str] = {}
    package: Package | None = None
    command: list[str] | None = None
    env: dict[str, str] = {}
    protocol: Literal["legacy", "auto", "2025-11-25", "2026-07-28"] = "legacy"
    deprecated: bool = False
    network: Literal["none", "egress"] = "none"  # hosted: egress reaches public hosts through the hub's proxy

    def spec(self) -> dict[str, Any]:
        """The registry `Version` fields this body stands for."""
        given = [name for name in ("url", "package", "command") if getattr(self, name) is not None]
        if len(given) != 1:
            raise RequestError("a version gives exactly one of `url` (remote), `package` (hosted npm/pypi) or "
                               "`command` (hosted, admins only)", param="version")
        spec: dict[str, Any] = {"protocol": self.protocol, "deprecated": self.deprecated}
        if self.url is not None:
            spec |= {"url": self.url, "headers": self.headers} | ({"transport": self.transport} if self.transport else {})
        else:
            hosted = {"package": self.package.model_dump(mode="json")} if self.package else {"command": self.command}
            spec |= hosted | {"env": self.env, "network": self.network}
        return spec


class RegistrationBody(_Body):
    """`POST /v1/servers`: a new server and its first version."""

    slug: str
    description: str = ""
    tags: list[str] = []
    connections: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    version: VersionBody
    credentials: Any = None  # used to list the tools once, never stored


class NewVersionBody(VersionBody):
    """`POST /v1/servers/{org}/{name}/versions`: one more version."""

    credentials: Any = None


def _check_env(entry: Entry, key: str, *, connections: bool) -> None:
    """A 422 `env_not_allowed` naming the first variable `envpolicy` refuses in the new version (and the connections)."""
    found = [(f"version.env.{name}", message) for name, message in env_problems(entry.versions[key].env, "version")]
    if connections:
        found += [(f"connections.{conn}.env.{name}", message) for conn, connection in entry.connections.items()
                  for name, message in env_problems(connection.env, f"connection {conn!r}")]
    if found:
        param, message = found[0]
        raise EnvNotAllowed(message, param=param[:200])


def _check_version(text: str) -> str:
    try:
        parse_version(text)
    except ValueError:
        raise RequestError(f"version {text!r} is not a semantic version like 1.2.0", param="version.version") from None
    return text.removeprefix("v").removeprefix("V")


class Registrations:
    """Publishing: the service behind the registration API and `mcp-hub registry import`."""

    def __init__(self, hub: Any, store: RegistrationStore) -> None:
        self._hub = hub
        self.store = store
        self._stamp: tuple[Any, ...] | None = None
        self.owners: dict[str, str] = {}
        self._lock = anyio.Lock()

    async def refresh(self, *, force: bool = False) -> None:
        """Load the registrations into the registry when they changed (here or on another hub)."""
        async with self._lock:
            stamp = await self.store.stamp()
            if stamp == self._stamp and not force:
                return
            entries, unlisted, owners = await self.store.load()
            self._hub.registry.set_registered(entries, unlisted)
            self.owners, self._stamp = owners, stamp

    async def refresh_forever(self) -> None:
        while True:
            await anyio.sleep(REFRESH_SECONDS)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a database hiccup must not stop refreshing
                continue

    # -- authorization -------------------------------------------------------------------------

    @staticmethod
    def authorize(principal: Principal, slug: str, *, raw_command: bool = False) -> None:
        org = slug.split("/", 1)[0]
        if principal.role == "admin":
            return
        if principal.role != "publisher":
            raise Forbidden(f"publishing needs an API key with the publisher or admin role (this key's role: "
                            f"{principal.role})")
        if principal.tenant != org:
            raise Forbidden(f"a publisher key of tenant {principal.tenant!r} publishes only under {principal.tenant}/…, "
                            f"not {org}/…")
        if raw_command:
            raise Forbidden("a raw `command` runs on the hub's machine: only admins may register one; publish a "
                            "`package` (npm or pypi) or a remote `url`")

    def _registered(self, slug: str) -> Entry:
        registry = self._hub.registry
        if not registry.is_registered(slug):
            if slug in registry:
                raise Conflict(f"{slug} is defined in the registry file, which the API does not change", param="slug")
            raise NotFound(f"no registered server {slug!r}", code="server_not_found", param="slug")
        entry: Entry = registry.get(slug)
        return entry

    # -- writes --------------------------------------------------------------------------------

    async def register(self, body: RegistrationBody, principal: Principal) -> dict[str, Any]:
        slug = body.slug
        if not SLUG_RE.fullmatch(slug):
            raise RequestError("slug must look like org/name (lowercase letters, digits, '.', '_', '-')", param="slug")
        self.authorize(principal, slug, raw_command=body.version.command is not None)
        await self.refresh()
        if slug in self._hub.registry:
            where = "registered" if self._hub.registry.is_registered(slug) else "defined in the registry file"
            raise Conflict(f"{slug} is already {where}; add versions with POST /v1/servers/{slug}/versions", param="slug")
        key = _check_version(body.version.version)
        entry = build_entry(slug, body.description, body.tags, body.connections, body.limits, {key: body.version.spec()})
        _check_env(entry, key, connections=True)
        check_new_connections(self._hub.registry, entry)
        pinned = await self._list_and_pin(entry, key, body.credentials, principal, new_server=True)
        return {"slug": slug, "version": key, **pinned}

    async def add_version(self, slug: str, body: NewVersionBody, principal: Principal) -> dict[str, Any]:
        self.authorize(principal, slug, raw_command=body.command is not None)
        await self.refresh()
        current = self._registered(slug)
        key = _check_version(body.version)
        if any(parse_version(existing) == parse_version(key) for existing in current.versions):
            raise Conflict(f"{slug}@{key} exists; versions are immutable: publish a new version", param="version")
        versions = {k: v.model_dump(mode="json", exclude_defaults=True) | {"deprecated": v.deprecated}
                    for k, v in current.versions.items()}
        entry = build_entry(slug, current.description, list(current.tags),
                       {k: v.model_dump(mode="json") for k, v in current.connections.items()},
                       current.limits.model_dump(mode="json", exclude_none=True), {**versions, key: body.spec()})
        _check_env(entry, key, connections=False)
        pinned = await self._list_and_pin(entry, key, body.credentials, principal, new_server=False)
        return {"slug": slug, "version": key, **pinned}

    async def deprecate(self, slug: str, version: str, deprecated: bool, principal: Principal) -> None:
        self.authorize(principal, slug)
        current = self._registered(slug)
        if version not in current.versions:
            raise NotFound(f"{slug} has no version {version!r}", code="version_not_found", param="version")
        await self.store.set_deprecated(slug, version, deprecated)
        await self.refresh(force=True)

    async def update(self, slug: str, changes: dict[str, Any], principal: Principal) -> None:
        self.authorize(principal, slug)
        self._registered(slug)
        fields: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "unlisted" and isinstance(value, bool):
                fields["unlisted"] = value
            elif name == "description" and isinstance(value, str):
                fields["description"] = value
            elif name == "tags" and isinstance(value, list) and all(isinstance(t, str) for t in value):
                fields["tags"] = json.dumps(value)
            else:
                raise RequestError(f"`{name}` cannot be changed this way (unlisted: bool, description: str, "
                                   "tags: [str]); versions are immutable", param=name)
        if fields:
            await self.store.update_server(slug, **fields)
            await self.refresh(force=True)

    async def _list_and_pin(self, entry: Entry, key: str, credentials: Any, principal: Principal, *,
                            new_server: bool) -> dict[str, Any]:
        """List the new version's tools (refusing an unreachable server), store it, pin the tools."""
        from .hub import parse_credentials

        tools, note = await self._list_tools(entry, key, parse_credentials(credentials), principal.tenant)
        await self.store.insert(entry, key, owner=entry.slug.split("/", 1)[0], by=principal.key_id, new_server=new_server)
        if tools is not None:
            await self._hub.pins.record(entry.slug, key, tools, approved_by=f"registration:{principal.key_id or 'open'}")
        await self.refresh(force=True)
        if tools is None:
            return {"pinned": False, "note": note}
        return {"pinned": True, "tools": [tool.name for tool in tools]}

    async def _list_tools(self, entry: Entry, key: str, credentials: list[Credential],
                          tenant: str) -> tuple[list[types.Tool] | None, str]:
        target = Target(name=entry.slug, ident=f"{entry.slug}@{key}", version=entry.versions[key], entry=entry,
                        version_key=key)
        try:
            binding = bind(entry, entry.slug, credentials)
        except CredentialError as exc:
            return None, f"{exc.message}; its tools are pinned when it is first listed with credentials"
        if entry.versions[key].oauth is not None:
            return None, "an OAuth server: its tools are pinned when it is first listed"
        try:
            if target.version.package is not None:  # installed first: the listing below has a connect deadline
                await self._hub.packages.install(target.version.package, server=entry.slug)
            session = self._hub.pool.get(target, binding, tenant)
            with anyio.fail_after(self._hub.settings.connect_timeout + 5):
                await session.client(self._hub.settings.connect_timeout)
                raw = await session.raw_tools()
        except PackageInstallFailed as exc:
            raise Unprocessable(exc.message, param="version.package", code=exc.code) from None
        except ServerError as exc:
            raise Unprocessable(f"cannot list the tools of {entry.slug}@{key}: {exc.message}", param="version",
                                code="server_unreachable") from None
        except TimeoutError:
            raise Unprocessable(f"cannot list the tools of {entry.slug}@{key}: timed out", param="version",
                                code="server_unreachable") from None
        return raw, ""
