"""Which servers a plaintext credential may reach, when connection names collide.

A plaintext credential names a connection (`{"connection_name": "notes", ...}`), and binds to
every server of the request that declares that connection, or whose SDK name (`org-name` for
`org/name`, with one connection) it is. Publishers choose their connection names, so a
published server could declare `notes` and receive a credential meant for the registry file's
`hub/notes` when both are in one request. Two rules stop that:

- **Connection names are claimed per owner.** The owner of a registry file entry is the
  operator (the file); the owner of a published server is its org. At registration a server
  may not declare a connection name (nor have an SDK name) that a server of another owner
  already claims: 409 `connection_name_taken`.
- **At bind time**, a credential that matches servers of more than one owner in one request
  binds to none of them (names collide across owners when a file entry is added after a
  publication, or between orgs published at the same time), unless it says which server it is
  for: `"server": "<slug or instance name>"` in the credential object. Each server left
  without its required connection is `missing_credentials`, and the message says why.

Credentials sealed inside a server's own spec (encrypted envelopes) belong to that server
and are not affected.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .credentials import Credential
from .errors import Conflict, CredentialError
from .registry import Entry, Registry
from .resolution import Target

FILE_OWNER = "the registry file"


def owner(registry: Registry, slug: str) -> str:
    """Who owns `slug`'s connection names: the registry file, or the org of a published server."""
    return f"org {slug.split('/', 1)[0]}" if registry.is_registered(slug) else FILE_OWNER


def sdk_name(slug: str) -> str:
    """The SDK's connection name convention for server `org/name`: `org-name`."""
    return slug.replace("/", "-")


def claimed(entry: Entry) -> set[str]:
    """The connection names a credential can bind to `entry` by (`credentials.find`)."""
    names = set(entry.connections)
    if len(entry.connections) == 1:
        names.add(sdk_name(entry.slug))
    return names


def check_new_connections(registry: Registry, entry: Entry) -> None:
    """Refuse a server to publish whose connection names another owner's server already claims."""
    mine = owner(registry, entry.slug) if entry.slug in registry else f"org {entry.slug.split('/', 1)[0]}"
    wanted = claimed(entry)
    for other in registry.entries():
        if other.slug == entry.slug or owner(registry, other.slug) == mine:
            continue
        for name in sorted(wanted & claimed(other)):
            declared = name in entry.connections
            raise Conflict(
                f"connection name {name!r} is claimed by {other.slug} ({owner(registry, other.slug)}): credentials "
                f"sent for it must not reach {entry.slug}; "
                + ("declare another connection name" if declared else "declare more than one connection or rename it")
                + f", e.g. {sdk_name(entry.slug)}-{name}",
                code="connection_name_taken", param=f"connections.{name}" if declared else "connections")


@dataclass
class Scoped:
    """The request's plaintext credentials, per server instance name; and, per server, the
    connection names whose credentials were withheld because they matched several owners."""

    credentials: dict[str, list[Credential]] = field(default_factory=dict)
    withheld: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # server -> connection -> slugs

    def explain(self, exc: CredentialError) -> CredentialError:
        """`exc` (a missing credential) with the reason, when this scoping withheld one."""
        withheld = self.withheld.get(exc.server)
        if not withheld:
            return exc
        names = ", ".join(repr(name) for name in sorted(withheld))
        slugs = sorted({slug for matched in withheld.values() for slug in matched})
        return CredentialError(
            f"{exc.message}; a credential named {names} was sent, but servers of different owners in this request "
            f"declare that name ({', '.join(slugs)}), so it reaches none of them", server=exc.server,
            recommendation=f"Say which server the credential is for: add \"server\": \"{exc.server}\" to it "
                           "(a slug or an instance name).")


def scope(targets: Sequence[Target], credentials: Iterable[Credential], registry: Registry) -> Scoped:
    """Which of `credentials` each of `targets` may receive (see the module docstring)."""
    scoped = Scoped({target.name: [] for target in targets})
    for cred in credentials:
        if cred.server is not None:
            for target in targets:
                if cred.server in (target.name, target.slug):
                    scoped.credentials[target.name].append(cred)
            continue
        matching = [t for t in targets if t.entry is not None and cred.connection_name in claimed(t.entry)]
        if len({owner(registry, t.entry.slug) for t in matching if t.entry is not None}) > 1:
            slugs = sorted({t.entry.slug for t in matching if t.entry is not None})
            for target in matching:
                scoped.withheld.setdefault(target.name, {})[cred.connection_name] = slugs
            for target in targets:
                if target not in matching:
                    scoped.credentials[target.name].append(cred)
            continue
        for target in targets:
            scoped.credentials[target.name].append(cred)
    return scoped
