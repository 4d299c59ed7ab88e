"""Credentials: secret values bound to a server's declared connections.

A credential names a connection; it reaches a server only when that server's
registry entry declares the connection (or the SDK convention `org-name` for
server `org/name`). Values are `SecretStr`, which prints as `**********`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from .errors import CredentialError, CredentialsInvalid
from .registry import Connection, Entry

# What an HTTP header value cannot carry (RFC 9110: no CR, LF, NUL or other controls; tab is
# allowed), and what an environment variable cannot (NUL). Refused before anything is sent, so
# that the value never reaches a transport's error message.
_HEADER_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NUL = re.compile(r"\x00")
_PLACEHOLDER = re.compile(r"{(\w+)}")


class Credential(BaseModel):
    """`{connection_name, values, server?}` as a request sends it; `server` (a slug or an instance
    name, optional) says which server it is for when servers of different owners in one request
    declare the same connection name (`mcp_hub.connection_claims`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection_name: str
    values: dict[str, SecretStr]
    server: str | None = None

    @field_validator("values", mode="before")
    @classmethod
    def _stringify(cls, value: object) -> object:
        if isinstance(value, Mapping):
            return {str(key): _as_text(item) for key, item in value.items()}
        return value


def _as_text(value: object) -> object:
    """Credential values may be str, int or bool on the wire; they are delivered as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


@dataclass(frozen=True)
class Binding:
    """The credentials bound to one server, rendered for delivery."""

    env: dict[str, str] = field(default_factory=dict, repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    fingerprint: str = ""
    raw: tuple[str, ...] = field(default=(), repr=False)  # the credential values as given

    def secrets(self) -> list[str]:
        """Every secret value this binding delivers, raw and rendered (for scrubbing)."""
        return [v for v in [*self.raw, *self.env.values(), *self.headers.values()] if v]


def _render(template: str, values: Mapping[str, SecretStr]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)].get_secret_value(), template)


def _check_deliverable(server_name: str, name: str, connection: Connection, cred: Credential) -> None:
    """Raise `CredentialsInvalid` (naming the server, connection and field, never the value) when a
    value holds a character its destination cannot carry: a control character in a header, NUL in env."""
    for templates, bad, what in ((connection.headers, _HEADER_CONTROLS, "a control character (CR, LF, NUL, ...), "
                                  "which an HTTP header cannot carry"),
                                 (connection.env, _NUL, "a NUL character, which an environment "
                                  "variable cannot carry")):
        for template in templates.values():
            for field_name in _PLACEHOLDER.findall(template):
                value = cred.values.get(field_name)
                if value is not None and bad.search(value.get_secret_value()):
                    raise CredentialsInvalid(
                        f"credential {name!r} for server {server_name!r}: field {field_name!r} holds {what}",
                        server=server_name, connection=name,
                        recommendation=f"Send the {field_name!r} value of connection {name!r} without control characters.")


def bind(entry: Entry | None, server_name: str, credentials: Iterable[Credential]) -> Binding:
    """Bind the matching credentials to one server; raise CredentialError when a required one is missing."""
    credentials = list(credentials)
    env: dict[str, str] = {}
    headers: dict[str, str] = {}
    raw: list[str] = []
    digest = hashlib.sha256()
    if entry is None:
        return Binding()
    for name, connection in sorted(entry.connections.items()):
        cred = find(entry, name, credentials)
        if cred is None or not _complete(connection, cred):
            if connection.required:
                example = json.dumps({"connection_name": name, "values": {f: "..." for f in connection.fields}})
                raise CredentialError(
                    f"server {server_name!r} needs the credential connection {name!r} (fields: {', '.join(connection.fields)})",
                    server=server_name,
                    recommendation=f"Send credentials {example}.",
                )
            continue
        _check_deliverable(server_name, name, connection, cred)
        env |= {key: _render(tpl, cred.values) for key, tpl in connection.env.items()}
        headers |= {key: _render(tpl, cred.values) for key, tpl in connection.headers.items()}
        for key in sorted(cred.values):
            raw.append(cred.values[key].get_secret_value())
            digest.update(f"{name}\0{key}\0{raw[-1]}\0".encode())
    return Binding(env=env, headers=headers, fingerprint=digest.hexdigest()[:32] if env or headers else "",
                   raw=tuple(raw))


def find(entry: Entry, connection: str, credentials: Iterable[Credential]) -> Credential | None:
    """The credential for one of `entry`'s connections: by its name, or by the SDK convention
    `org-name` for server `org/name` when the entry declares exactly one connection."""
    by_name = {cred.connection_name: cred for cred in credentials}
    sdk_name = entry.slug.replace("/", "-")
    return by_name.get(connection) or (by_name.get(sdk_name) if len(entry.connections) == 1 else None)


def _complete(connection: Connection, cred: Credential) -> bool:
    return all(name in cred.values for name in connection.fields)
