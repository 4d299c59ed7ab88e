"""Import from the official MCP Registry's `server.json` format into a registration.

A `server.json` (schemas 2025-09-29 and later in camelCase; the older snake_case
spellings are read too) describes one version of a server: `packages` the client runs
locally, and/or `remotes` it connects to. The import maps it onto the hub's own model:

- `remotes[]` of type `streamable-http` or `sse` become a remote version (`url`); URL
  `{variables}` are filled from the import's `variables`, else their `default`;
- `packages[]` of `registryType` `npm` or `pypi` with `stdio` transport become a hosted
  `package` version, installed by the hub and run from its own entry point with its
  `packageArguments` (fixed `value`, else `default`, else the import's `variables`) as the
  server's argv; a package with another `runtimeHint` or with `runtimeArguments` becomes a
  raw `command` (runner, runtime arguments, package, package arguments), which only
  admins may register;
- declared inputs with no fixed value (secret or required headers and environment
  variables) become fields of one connection named after the server (`weather` for
  `io.github.user/weather`), delivered as the entry's `headers` / `env` templates; inputs
  with a fixed value or a default become the version's own `headers` / `env`. Environment
  variable names are held to `envpolicy` when the result is registered (422 `env_not_allowed`).

A remote is preferred over a package unless `prefer="package"`. Other package types
(oci, nuget, mcpb) and package transports other than stdio are skipped, with a note.

server.json has no field saying a package needs the network, so the import takes the hub's
own `network` option (`none`, the default, or `egress`) for a hosted version; a remote is
reached by the hub, not run, so `egress` with a remote is refused rather than ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import RequestError

_PLACEHOLDER = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")
_RUNNERS = {"npm": "npx", "pypi": "uvx"}


@dataclass
class Imported:
    """A server.json mapped onto a registration body (`registrations.RegistrationBody` input) and notes."""

    body: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _get(obj: dict[str, Any], camel: str, snake: str | None = None, default: Any = None) -> Any:
    if camel in obj:
        return obj[camel]
    snake = snake or re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower()
    return obj.get(snake, default)


def _field_name(name: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", name.lower()).strip("_") or "value"


class _Inputs:
    """Collects the connection fields an import needs (inputs without a fixed value)."""

    def __init__(self, variables: dict[str, str]) -> None:
        self.variables = variables
        self.fields: list[str] = []
        self.required = False
        self.descriptions: list[str] = []

    def fill(self, template: str, declared: dict[str, Any], where: str) -> str:
        """`template` with `{var}` placeholders filled from the import's values or their defaults."""
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in self.variables:
                return self.variables[name]
            spec = declared.get(name) or {}
            value = _get(spec, "value") or _get(spec, "default")
            if value is None:
                raise RequestError(f"{where} needs a value for {{{name}}}: give it in `variables`", param="variables")
            return str(value)

        return _PLACEHOLDER.sub(one, template)

    def credential(self, name: str, spec: dict[str, Any]) -> str:
        """A template for an input the caller supplies as a credential field."""
        value = _get(spec, "value")
        variables = _get(spec, "variables") or {}
        if isinstance(value, str) and _PLACEHOLDER.search(value):
            fields = [_field_name(v) for v in _PLACEHOLDER.findall(value)]
            template = _PLACEHOLDER.sub(lambda m: "{" + _field_name(m.group(1)) + "}", value)
            for var in _PLACEHOLDER.findall(value):
                if var not in variables and var in self.variables:  # a fixed value given at import
                    template = template.replace("{" + _field_name(var) + "}", self.variables[var])
                    fields.remove(_field_name(var))
        else:
            fields, template = [_field_name(name)], "{" + _field_name(name) + "}"
        for item in fields:
            if item not in self.fields:
                self.fields.append(item)
        self.required = self.required or bool(_get(spec, "isRequired", "is_required", False))
        if description := _get(spec, "description"):
            self.descriptions.append(f"{name}: {description}")
        return template


def _is_input(spec: dict[str, Any]) -> bool:
    """An input the user supplies: secret, or without a fixed value or default."""
    secret = bool(_get(spec, "isSecret", "is_secret", False))
    return secret or (_get(spec, "value") is None and _get(spec, "default") is None)


def _arguments(args: list[dict[str, Any]], inputs: _Inputs, where: str) -> list[str]:
    out: list[str] = []
    for index, arg in enumerate(args or []):
        kind = arg.get("type")
        value = _get(arg, "value")
        if value is None:
            value = _get(arg, "default")
        if value is None and kind == "positional":
            hint = _get(arg, "valueHint", "value_hint") or f"argument {index}"
            if hint in inputs.variables:
                value = inputs.variables[hint]
            else:
                raise RequestError(f"{where}: positional argument {hint!r} has no value: give it in `variables`",
                                   param="variables")
        declared = _get(arg, "variables") or {}
        if kind == "named":
            name = arg.get("name")
            if not isinstance(name, str) or not name:
                raise RequestError(f"{where}: a named argument has no `name`", param="server_json")
            out += [name] if value is None else [name, inputs.fill(str(value), declared, where)]
        elif kind == "positional":
            out.append(inputs.fill(str(value), declared, where))
        else:
            raise RequestError(f"{where}: argument type {kind!r} is neither positional nor named", param="server_json")
    return out


def _remote(remote: dict[str, Any], inputs: _Inputs) -> tuple[dict[str, Any], dict[str, str]]:
    kind = _get(remote, "type") or _get(remote, "transportType", "transport_type")
    url = remote.get("url")
    if not isinstance(url, str):
        raise RequestError("a remote has no `url`", param="server_json")
    version: dict[str, Any] = {"url": inputs.fill(url, _get(remote, "variables") or {}, "remote url"),
                               "transport": kind}
    fixed, delivered = _named_values(_get(remote, "headers") or [], inputs, "header")
    if fixed:
        version["headers"] = fixed
    return version, delivered


def _named_values(items: list[dict[str, Any]], inputs: _Inputs, what: str) -> tuple[dict[str, str], dict[str, str]]:
    """Headers or environment variables: fixed values (filled in), and the names the caller supplies."""
    fixed: dict[str, str] = {}
    delivered: dict[str, str] = {}
    for item in items:
        name = item.get("name")
        if not isinstance(name, str):
            raise RequestError(f"{'an' if what[0] in 'aeiou' else 'a'} {what} has no `name`", param="server_json")
        if _is_input(item):
            delivered[name] = inputs.credential(name, item)
        else:
            value = _get(item, "value") or _get(item, "default")
            fixed[name] = inputs.fill(str(value), _get(item, "variables") or {}, f"{what} {name}")
    return fixed, delivered


def _package(package: dict[str, Any], inputs: _Inputs) -> tuple[dict[str, Any], dict[str, str]]:
    kind = _get(package, "registryType", "registry_type")
    identifier = package.get("identifier")
    version = package.get("version")
    if not isinstance(identifier, str) or not isinstance(version, str):
        raise RequestError("a package needs `identifier` and `version`", param="server_json")
    hint = _get(package, "runtimeHint", "runtime_hint")
    runtime_args = _get(package, "runtimeArguments", "runtime_arguments") or []
    where = f"package {identifier}"
    arguments = _arguments(_get(package, "packageArguments", "package_arguments") or [], inputs, where)
    result: dict[str, Any]
    if hint in (None, _RUNNERS[kind]) and not runtime_args:  # the hub's own way to run it: any publisher may
        result = {"package": {"registry": kind, "identifier": identifier, "version": version, "arguments": arguments}}
    else:  # a custom runner or runtime arguments: a raw command, which only admins may register
        runner = hint or _RUNNERS[kind]
        spec = f"{identifier}@{version}" if kind == "npm" else f"{identifier}=={version}"
        result = {"command": [runner, *(["-y"] if runner == "npx" else []), *_arguments(runtime_args, inputs, where),
                              spec, *arguments]}
    env, delivered = _named_values(_get(package, "environmentVariables", "environment_variables") or [], inputs,
                                   "environment variable")
    if env:
        result["env"] = env
    return result, delivered


def import_server_json(document: Any, *, slug: str | None = None, prefer: str = "remote",
                       variables: dict[str, str] | None = None, tags: list[str] | None = None,
                       network: str = "none") -> Imported:
    """Map one server.json document onto a registration body; RequestError names what is wrong."""
    if not isinstance(document, dict):
        raise RequestError("server.json must be a JSON object", param="server_json")
    if prefer not in ("remote", "package"):
        raise RequestError("`prefer` is remote or package", param="prefer")
    if network not in ("none", "egress"):
        raise RequestError("`network` is none or egress", param="network")
    name = document.get("name")
    version = document.get("version") or (_get(document, "versionDetail", "version_detail") or {}).get("version")
    if not isinstance(name, str) or "/" not in name:
        raise RequestError("server.json `name` must look like io.github.owner/server", param="server_json")
    if not isinstance(version, str):
        raise RequestError("server.json has no `version`", param="server_json")
    notes: list[str] = []
    inputs = _Inputs(dict(variables or {}))
    remotes = [r for r in document.get("remotes") or []
               if (_get(r, "type") or _get(r, "transportType", "transport_type")) in ("streamable-http", "sse")]
    packages = []
    for package in document.get("packages") or []:
        kind = _get(package, "registryType", "registry_type")
        transport = (package.get("transport") or {}).get("type", "stdio")
        if kind in _RUNNERS and transport == "stdio":
            packages.append(package)
        else:
            notes.append(f"skipped package {package.get('identifier')!r} ({kind}, {transport}): the hub hosts npm "
                         "and pypi packages over stdio")
    connection = _field_name(name.rsplit("/", 1)[-1]).replace("_", "-")
    if remotes and (prefer == "remote" or not packages):
        if network == "egress":
            raise RequestError("`network: egress` is for a hosted package, and the import chose the remote (the hub "
                               "connects to it; it runs nothing): use `prefer: package`, or leave `network` out",
                               param="network")
        mapped, delivered = _remote(remotes[0], inputs)
        delivery = "headers"
    elif packages:
        mapped, delivered = _package(packages[0], inputs)
        delivery = "env"
        if network == "egress":
            mapped["network"] = "egress"
    else:
        raise RequestError("server.json has no remote (streamable-http, sse) and no npm or pypi stdio package the hub "
                           "can run", param="server_json")
    body: dict[str, Any] = {
        "slug": slug or name.lower(),
        "description": document.get("description") or document.get("title") or "",
        "tags": list(tags or []),
        "version": {"version": version.removeprefix("v"), **mapped,
                    **({"deprecated": True} if document.get("status") == "deprecated" else {})},
    }
    if delivered:
        body["connections"] = {connection: {
            "description": "; ".join(inputs.descriptions) or f"Credentials for {name}",
            "fields": inputs.fields, "required": inputs.required, delivery: delivered}}
    return Imported(body=body, notes=notes)
