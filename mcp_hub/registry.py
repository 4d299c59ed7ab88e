"""The server registry: `registry.yaml` parsed into typed, immutable entries.

A registry maps slugs (`org/name`) to entries; each entry has one or more
immutable versions, each either *hosted* (a command the hub launches over stdio)
or *remote* (a URL spoken to over streamable HTTP or SSE). See the README for the
file format.
"""

from __future__ import annotations

import difflib
import re
import shlex
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import semantic_version
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .envpolicy import env_problems
from .errors import ConfigError
from .packages import Package

# The one slug pattern: `SLUG_RE.fullmatch` in Python (`$` would let a trailing newline through);
# anchored `^...$` in the OpenAPI document's JSON Schemas, where `$` is the end of the text.
SLUG_PATTERN = r"[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*"
SLUG_RE = re.compile(SLUG_PATTERN)
Transport = Literal["stdio", "streamable-http", "sse"]
Protocol = Literal["legacy", "auto", "2025-11-25", "2026-07-28"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Model):
    """Per-server limits; unset fields fall back to the hub's settings (`sandbox_*` for the sandbox's).

    A published server's sandbox limits can only lower the operator's defaults (`SandboxLimits.within`).
    """

    call_timeout: Annotated[float, Field(gt=0)] | None = None
    concurrency: Annotated[int, Field(ge=1)] | None = None
    memory_mb: Annotated[int, Field(ge=16)] | None = None
    cpu_seconds: Annotated[int, Field(ge=1)] | None = None
    processes: Annotated[int, Field(ge=8)] | None = None
    open_files: Annotated[int, Field(ge=32)] | None = None
    file_size_mb: Annotated[int, Field(ge=1)] | None = None
    disk_mb: Annotated[int, Field(ge=1)] | None = None
    stderr_kb: Annotated[int, Field(ge=16)] | None = None

    def sandbox(self) -> dict[str, int | None]:
        """The sandbox limits this entry sets (None: the hub's default)."""
        return self.model_dump(exclude={"call_timeout", "concurrency"})


class Connection(_Model):
    """A credential connection a server declares: its fields and how they are delivered.

    `env` (hosted stdio servers) and `headers` (HTTP servers) are templates whose
    `{field}` placeholders are filled with the credential's values.
    """

    description: str = ""
    fields: tuple[str, ...] = ("token",)
    required: bool = True
    env: dict[str, str] = {}
    headers: dict[str, str] = {}

    @model_validator(mode="after")
    def _templates_use_known_fields(self) -> Connection:
        for template in [*self.env.values(), *self.headers.values()]:
            for name in re.findall(r"{(\w+)}", template):
                if name not in self.fields:
                    raise ValueError(f"template {template!r} uses {{{name}}}, which is not one of fields {list(self.fields)}")
        return self


class OAuth(_Model):
    """How the hub obtains OAuth 2.1 access tokens for a remote server (see `mcp_hub.oauth`).

    `authorization_code` (the default) discovers the authorization server from the MCP
    server's 401 challenge, registers the hub (pre-registered client, CIMD or dynamic
    registration) and needs a user to approve; `client_credentials` is machine-to-machine
    and needs a pre-registered client. A pre-registered client's `client_id` (and
    `client_secret`) are fields of the request credential for `connection`, a connection
    the entry declares; `issuer` names the authorization server that client belongs to
    (required for client_credentials, so its secret is only ever sent there). Scopes are
    not configured: the flows request what the server's challenge and metadata name.
    """

    grant: Literal["authorization_code", "client_credentials"] = "authorization_code"
    connection: str | None = None
    issuer: str | None = None
    client_name: str | None = None

    @model_validator(mode="after")
    def _client_credentials_needs_a_client(self) -> OAuth:
        if self.grant == "client_credentials" and (self.connection is None or self.issuer is None):
            raise ValueError("the client_credentials grant needs `connection` (client_id, client_secret) and `issuer`")
        if self.issuer is not None and not re.match(r"^https?://", self.issuer):
            raise ValueError("`issuer` must be the authorization server's http(s) issuer URL")
        return self


class Version(_Model):
    """One immutable version of a server: hosted (`command`, or an npm/PyPI `package`) or remote (`url`)."""

    command: tuple[str, ...] | None = None
    package: Package | None = None
    env: dict[str, str] = {}
    cwd: str | None = None
    url: str | None = None
    transport: Transport | None = None
    headers: dict[str, str] = {}
    protocol: Protocol = "legacy"
    oauth: OAuth | None = None
    deprecated: bool = False
    network: Literal["none", "egress"] = "none"  # hosted: egress = the outside through the hub's egress proxy

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(shlex.split(value))
        return value

    @model_validator(mode="after")
    def _hosted_xor_remote(self) -> Version:
        if [self.command, self.package, self.url].count(None) != 2:
            raise ValueError("give exactly one of `command` or `package` (hosted) or `url` (remote)")
        if self.command is not None and not self.command:
            raise ValueError("`command` is empty")
        if self.hosted and self.transport not in (None, "stdio"):
            raise ValueError("a hosted `command` or `package` speaks stdio; `transport` must be stdio or absent")
        if self.url is not None:
            if not re.match(r"^https?://", self.url):
                raise ValueError("`url` must start with http:// or https://")
            if self.transport == "stdio":
                raise ValueError("a remote `url` speaks streamable-http or sse")
        elif self.oauth is not None:
            raise ValueError("`oauth` applies to remote (`url`) servers only")
        if self.url is not None and self.network != "none":
            raise ValueError("`network` applies to hosted (`command`, `package`) servers only")
        return self

    @property
    def hosted(self) -> bool:
        return self.command is not None or self.package is not None

    @property
    def kind(self) -> Transport:
        """The transport this version is spoken to over."""
        if self.hosted:
            return "stdio"
        return self.transport or guess_transport(self.url or "")


def guess_transport(url: str) -> Transport:
    """Legacy SSE endpoints conventionally end in `/sse`; everything else is streamable HTTP."""
    return "sse" if url.split("?", 1)[0].rstrip("/").endswith("/sse") else "streamable-http"


def parse_version(text: str) -> semantic_version.Version:
    """Parse `1.2.3` or `v1.2.3`; raise ValueError otherwise."""
    if text != text.strip():  # semantic_version's pattern ends in `$`, which lets "1.2.3\n" through
        raise ValueError(f"{text!r} is not a version: surrounding whitespace")
    return semantic_version.Version(text[1:] if text[:1] in ("v", "V") else text)


class Entry(_Model):
    """A registry entry: one server, all of its versions."""

    slug: str
    description: str = ""
    tags: tuple[str, ...] = ()
    connections: dict[str, Connection] = {}
    limits: Limits = Limits()
    versions: dict[str, Version]
    # Hosted versions run sandboxed; only the operator's registry file may say false (registrations never set it).
    sandbox: bool = True
    published: bool = Field(False, exclude=True)  # set by registrations: its limits only lower the defaults

    @field_validator("slug")
    @classmethod
    def _valid_slug(cls, value: str) -> str:
        if not SLUG_RE.fullmatch(value):
            raise ValueError("slug must look like org/name (lowercase letters, digits, '.', '_', '-')")
        return value

    @field_validator("versions")
    @classmethod
    def _semver_keys(cls, value: dict[str, Version]) -> dict[str, Version]:
        if not value:
            raise ValueError("at least one version is required")
        for key in value:
            try:
                parse_version(key)
            except ValueError:
                raise ValueError(f"version {key!r} is not a semantic version like 1.2.0") from None
        return value

    @model_validator(mode="after")
    def _oauth_connections_declared(self) -> Entry:
        for key, version in self.versions.items():
            name = version.oauth.connection if version.oauth else None
            if name is None:
                continue
            connection = self.connections.get(name)
            if connection is None:
                raise ValueError(f"versions[{key!r}].oauth.connection {name!r} is not one of the declared connections")
            if "client_id" not in connection.fields:
                raise ValueError(f"connection {name!r} carries an OAuth client; its fields must include client_id")
        return self

    @cached_property  # an entry is immutable (registrations replace entries, never edit them)
    def latest(self) -> str:
        """Highest non-deprecated, non-prerelease version (falling back to any)."""
        ranked = sorted(self.versions, key=parse_version, reverse=True)
        for key in ranked:
            if not self.versions[key].deprecated and not parse_version(key).prerelease:
                return key
        return ranked[0]

    def match(self, spec: str | None) -> str | None:
        """The version key that `spec` selects: exact, absent = latest, or a semver range."""
        if spec is None or spec in ("", "latest", "*"):
            return self.latest
        if spec in self.versions:
            return spec
        try:
            wanted = parse_version(spec)
        except ValueError:
            pass
        else:
            return next((key for key in self.versions if parse_version(key) == wanted), None)
        try:
            selector: semantic_version.BaseSpec = (
                semantic_version.SimpleSpec(spec) if "," in spec else semantic_version.NpmSpec(spec)
            )
        except ValueError:
            try:
                selector = semantic_version.SimpleSpec(spec)
            except ValueError:
                return None
        candidates = {parse_version(key): key for key, v in self.versions.items() if not v.deprecated}
        best = selector.select(candidates)
        return candidates[best] if best is not None else None

    def env_problems(self, versions: list[str] | None = None) -> list[tuple[str, str]]:
        """(field, message) for each environment variable of `versions` (default: all) or of a
        connection template that `envpolicy` refuses; fields read like `versions.1.0.0.env.PATH`."""
        found = []
        for key in self.versions if versions is None else versions:
            found += [(f"versions.{key}.env.{name}", message)
                      for name, message in env_problems(self.versions[key].env, f"version {key}")]
        for name, connection in self.connections.items():
            found += [(f"connections.{name}.env.{variable}", message)
                      for variable, message in env_problems(connection.env, f"connection {name!r}")]
        return found

    def connection_names(self) -> list[str]:
        """Connection names this server accepts credentials under, including the SDK's `org-name`."""
        return [*self.connections, self.slug.replace("/", "-")]


class Registry:
    """An immutable set of entries, looked up by slug."""

    def __init__(self, entries: dict[str, Entry], *, root: Path | None = None) -> None:
        self._entries = dict(entries)
        self.root = root or Path.cwd()
        # Servers published through the API (`registrations.py`): looked up after the file's.
        self._registered: dict[str, Entry] = {}
        self.unlisted: frozenset[str] = frozenset()

    def set_registered(self, entries: dict[str, Entry], unlisted: frozenset[str] = frozenset()) -> None:
        """Replace the published entries (the file's own entries keep their slugs)."""
        self._registered = {slug: entry for slug, entry in entries.items() if slug not in self._entries}
        self.unlisted = unlisted

    def is_registered(self, slug: str) -> bool:
        """Whether `slug` was published through the API (else it is the file's, or unknown)."""
        return slug in self._registered and slug not in self._entries

    @classmethod
    def from_file(cls, path: Path) -> Registry:
        """Load and validate a registry file; errors name the entry and the field."""
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read registry {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_data(raw, source=str(path), root=path.resolve().parent)

    @classmethod
    def from_data(cls, raw: Any, *, source: str = "registry", root: Path | None = None) -> Registry:
        if raw is None:
            raw = {"servers": {}}
        if not isinstance(raw, dict) or not isinstance(raw.get("servers", {}), dict):
            raise ConfigError(f"{source}: expected a mapping with a `servers:` mapping of slug -> entry")
        unknown = set(raw) - {"servers"}
        if unknown:
            raise ConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)}; only `servers` is allowed")
        entries: dict[str, Entry] = {}
        for slug, body in (raw.get("servers") or {}).items():
            if not isinstance(body, dict):
                raise ConfigError(f"{source}: servers[{slug!r}]: expected a mapping")
            try:
                entries[slug] = Entry.model_validate({**body, "slug": slug})
            except ValidationError as exc:
                raise ConfigError(f"{source}: {_describe(slug, exc)}") from None
            # The operator's own entries obey the same rule; one that truly needs such a variable
            # runs outside the sandbox (`sandbox: false`), a choice only this file can make.
            problems = entries[slug].env_problems() if entries[slug].sandbox else []
            if problems:
                field, message = problems[0]
                raise ConfigError(f"{source}: servers[{slug!r}].{field}: {message} (an entry that truly needs it "
                                  "runs unsandboxed: `sandbox: false`)")
        return cls(entries, root=root)

    def __contains__(self, slug: str) -> bool:
        return slug in self._entries or slug in self._registered

    def __len__(self) -> int:
        return len(self._entries.keys() | self._registered.keys())

    def get(self, slug: str) -> Entry | None:
        return self._entries.get(slug) or self._registered.get(slug)

    def entries(self) -> list[Entry]:
        return sorted({**self._registered, **self._entries}.values(), key=lambda entry: entry.slug)

    def suggest(self, slug: str, limit: int = 3) -> list[str]:
        """Registered slugs closest to `slug` (whole slug, then name part alone)."""
        slugs = [*self._entries, *(slug for slug in self._registered if slug not in self._entries)]
        close = difflib.get_close_matches(slug, slugs, n=limit, cutoff=0.5)
        name = slug.rsplit("/", 1)[-1]
        by_name = {s.rsplit("/", 1)[-1]: s for s in slugs}
        for match in difflib.get_close_matches(name, list(by_name), n=limit, cutoff=0.6):
            if by_name[match] not in close:
                close.append(by_name[match])
        return close[:limit]


def _describe(slug: str, exc: ValidationError) -> str:
    """`servers['org/name'].versions['1.0.0'].command: message` for the first error."""
    parts = []
    for err in exc.errors()[:3]:
        where = f"servers[{slug!r}]"
        for loc in err["loc"]:
            if isinstance(loc, int):
                where += f"[{loc}]"
            else:
                where += f".{loc}" if loc.isidentifier() else f"[{loc!r}]"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)
