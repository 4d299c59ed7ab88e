"""A published npm or PyPI package, as a hosted server version names it.

The identifier and version are the only publisher text that becomes a path (the package's
install folder, `packages/<registry>/<name>@<version>`), so both are held to the registries'
own rules for names and exact versions (ASCII only, no `/` beyond an npm scope, no `.`/`..`
component, no ranges or tags) and checked with full matches. `arguments` are data for the
server: the hub runs the installed entry point directly (`node <bin> args…` or the console
script `args…`), where every later argv item belongs to the server, never to a runner such
as `npx` or `uvx` (`mcp_hub.installer`).
"""

from __future__ import annotations

import re
from typing import Literal

import semantic_version
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from .envpolicy import argument_problem

_NPM_NAME = re.compile(r"(?:@[a-z0-9][a-z0-9._~-]{0,100}/)?[A-Za-z0-9][A-Za-z0-9._~-]{0,100}", re.ASCII)
_PYPI_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?", re.ASCII)
_PYPI_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+)*(?:(?:a|b|rc)[0-9]+)?(?:\.post[0-9]+)?(?:\.dev[0-9]+)?", re.ASCII)


class Package(BaseModel):
    """`{registry, identifier, version, arguments}`: one exact version of an npm or PyPI package."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry: Literal["npm", "pypi"]
    identifier: str
    version: str
    arguments: tuple[str, ...] = ()

    @field_validator("arguments")
    @classmethod
    def _plain_arguments(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problem = argument_problem(value)
        if problem is not None:
            raise ValueError(f"package arguments: {problem}")
        return value

    @model_validator(mode="after")
    def _registry_rules(self) -> Package:
        if self.registry == "npm":
            if not _NPM_NAME.fullmatch(self.identifier):
                raise ValueError("an npm package name is `name` or `@scope/name` (letters, digits, '.', '_', '-', '~')")
            if len(self.version) > 64 or not re.fullmatch(r"[0-9A-Za-z.+-]+", self.version, re.ASCII):
                raise ValueError("an npm package version is an exact semantic version like 1.2.3")
            try:
                semantic_version.Version(self.version)
            except ValueError:
                raise ValueError("an npm package version is an exact semantic version like 1.2.3 (no range or tag)") from None
        else:
            if not _PYPI_NAME.fullmatch(self.identifier):
                raise ValueError("a PyPI project name is letters, digits, '.', '_' and '-', starting and ending with "
                                 "a letter or digit")
            if not _PYPI_VERSION.fullmatch(self.version):
                raise ValueError("a PyPI package version is an exact release like 1.2.3 (or 1.2.3rc1, .post1, .dev1)")
        return self

    @property
    def name(self) -> str:
        """The project name a registry compares (PyPI: PEP 503-normalized; npm: as given)."""
        if self.registry == "pypi":
            return re.sub(r"[-_.]+", "-", self.identifier).lower()
        return self.identifier

    @property
    def folder(self) -> str:
        """This version's install folder name: `name@version`, an npm scope's `/` as `+`."""
        return f"{self.name.replace('/', '+')}@{self.version}"

    @property
    def spec(self) -> str:
        """`name@version` (npm) or `name==version` (pip)."""
        return f"{self.identifier}@{self.version}" if self.registry == "npm" else f"{self.identifier}=={self.version}"

    @property
    def command_name(self) -> str:
        """The entry point named like the package: the npm name without its scope, the PyPI name."""
        return self.identifier.rsplit("/", 1)[-1]


def from_runner_command(command: list[str] | tuple[str, ...]) -> Package | None:
    """The package an earlier hub's stored `npx -y X@V args…` or `uvx X==V args…` command runs, else None.

    Registrations stored before packages were installed by the hub kept the runner's
    command line; reading them as packages runs them the safe way, with the same arguments.
    """
    try:
        if len(command) >= 3 and command[0] == "npx" and command[1] == "-y":
            name, _, version = command[2].rpartition("@")
            return Package(registry="npm", identifier=name, version=version, arguments=tuple(command[3:]))
        if len(command) >= 2 and command[0] == "uvx" and "==" in command[1]:
            name, _, version = command[1].partition("==")
            return Package(registry="pypi", identifier=name, version=version, arguments=tuple(command[2:]))
    except ValueError:
        return None
    return None
