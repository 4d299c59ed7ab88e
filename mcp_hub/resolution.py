"""Resolution of a request's `mcp_servers` into targets the session pool can open.

Accepted forms (PROTOCOL.md section 2): a bare item or a list of items, each one of
`"org/name"`, `"org/name@1.2"`, `{"slug", "version"?}`, `"https://host/mcp"`,
`{"url"}`, and any of the objects with `name` and `credentials`. A URL object with
`"oauth": true` names an OAuth-protected server: the hub runs the authorization-code
flow for it (discovery, client registration, PKCE). Items that cannot be resolved
become `ServerError`s keyed by their instance name; the rest resolve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import RequestError, ResolutionError, ServerError
from .registry import SLUG_RE, Entry, Limits, OAuth, Registry, Version, guess_transport


class ServerSpec(BaseModel):
    """One `mcp_servers` item in object form (unknown keys are ignored, as SDKs add fields)."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(default=None, min_length=1)
    slug: str | None = None
    url: str | None = None
    version: str | None = None
    credentials: dict[str, Any] | None = None
    transport: str | None = None
    oauth: bool = False


@dataclass(frozen=True)
class Target:
    """A resolved server: everything needed to open (or reuse) a session to it."""

    name: str
    ident: str
    version: Version
    entry: Entry | None = None
    version_key: str | None = None
    spec_credentials: dict[str, Any] | None = None

    @property
    def limits(self) -> Limits:
        return self.entry.limits if self.entry else Limits()

    @property
    def slug(self) -> str | None:
        return self.entry.slug if self.entry else None


def _as_spec(item: Any) -> ServerSpec:
    if isinstance(item, str):
        text = item.strip()
        if text.startswith(("http://", "https://")):
            return ServerSpec(url=text)
        slug, _, version = text.rpartition("@") if "@" in text else (text, "", "")
        return ServerSpec(slug=slug, version=version or None)
    if isinstance(item, dict):
        return ServerSpec.model_validate(item)
    raise ValueError(f"expected a string or an object, got {type(item).__name__}")


def _label(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in ("name", "slug", "url"):
            if isinstance(item.get(key), str):
                return item[key]
    return repr(item)[:60]


def resolve_one(spec: ServerSpec, registry: Registry) -> Target:
    """Resolve one spec; raise ResolutionError with a recommendation."""
    if spec.url and spec.slug:
        raise ResolutionError("give either `slug` or `url`, not both", server=spec.name or spec.slug, code="invalid_spec",
                              recommendation="Name a registry slug or a URL.")
    if spec.url:
        name = spec.name or spec.url
        if not spec.url.startswith(("http://", "https://")):
            raise ResolutionError(f"URL {spec.url!r} must start with http:// or https://", server=name, code="invalid_spec",
                                  recommendation="Use an http(s) URL of a streamable HTTP or SSE MCP endpoint.")
        transport = spec.transport or guess_transport(spec.url)
        if transport not in ("streamable-http", "sse"):
            raise ResolutionError(f"unknown transport {transport!r}", server=name, code="invalid_spec",
                                  recommendation="Use transport streamable-http or sse.")
        version = Version(url=spec.url, transport=transport, oauth=OAuth() if spec.oauth else None)  # type: ignore[arg-type]
        # An OAuth session to a URL is a different session (and token store) from a plain one.
        ident = f"{spec.url} [oauth]" if spec.oauth else spec.url
        return Target(name=name, ident=ident, version=version, spec_credentials=spec.credentials)
    slug = (spec.slug or "").strip()
    if "@" in slug and spec.version is None:
        slug, _, version_text = slug.rpartition("@")
        spec = spec.model_copy(update={"slug": slug, "version": version_text or None})
    name = spec.name or slug
    if not slug:
        raise ResolutionError("a server spec needs `slug` or `url`", server=name or "?", code="invalid_spec",
                              recommendation="Give a registry slug like \"org/name\" or an MCP server URL.")
    if not SLUG_RE.fullmatch(slug):
        raise ResolutionError(f"{slug!r} is neither a slug (org/name) nor an http(s) URL", server=name, code="invalid_spec",
                              recommendation=_did_you_mean(registry, slug) or "Use org/name, org/name@version, or a URL.")
    entry = registry.get(slug)
    if entry is None:
        raise ResolutionError(f"no server {slug!r} in the registry", server=name, code="server_not_found",
                              recommendation=_did_you_mean(registry, slug) or "GET /v1/servers lists the registered servers.")
    key = entry.match(spec.version)
    if key is None:
        available = ", ".join(sorted(entry.versions))
        raise ResolutionError(f"{slug} has no version matching {spec.version!r}", server=name, code="version_not_found",
                              recommendation=f"Available versions: {available}; omit the version for the latest "
                                             f"({entry.latest}).")
    return Target(name=name, ident=f"{slug}@{key}", version=entry.versions[key], entry=entry, version_key=key,
                  spec_credentials=spec.credentials)


def _did_you_mean(registry: Registry, slug: str) -> str:
    close = registry.suggest(slug)
    return f"Did you mean {' or '.join(repr(s) for s in close)}?" if close else ""


def resolve(value: Any, registry: Registry) -> tuple[list[Target], dict[str, ServerError]]:
    """Resolve every item of `mcp_servers`; return the targets and the per-server errors."""
    if value is None:
        return [], {}
    items = value if isinstance(value, list) else [value]
    targets: dict[str, Target] = {}
    errors: dict[str, ServerError] = {}
    for index, item in enumerate(items):
        try:
            target = resolve_one(_as_spec(item), registry)
        except ResolutionError as exc:
            errors[exc.server] = exc
            continue
        except (ValidationError, ValueError) as exc:
            label = _label(item)
            detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            errors[label] = ResolutionError(f"mcp_servers[{index}] is not a server spec: {detail}", server=label,
                                            code="invalid_spec",
                                            recommendation="Use a slug, slug@version, URL, or {slug|url, name?, version?}.")
            continue
        seen = targets.get(target.name)
        if seen is not None and seen.ident != target.ident:
            raise RequestError(f"mcp_servers names two different servers {target.name!r}; give them distinct `name`s",
                               param=f"mcp_servers[{index}]")
        targets[target.name] = target
    return list(targets.values()), errors
