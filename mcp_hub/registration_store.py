"""The records of servers published through the API: the `registrations` and `registration_versions` tables.

A version's `spec` column holds the registry `Version` fields it stands for. Rows written by
earlier hubs are read forward here: a hosted package stored as its runner's command line
(`npx -y X@V args…`, `uvx X==V args…`) becomes the `package` it names, run the safe way with
the same arguments; a stored version whose environment `envpolicy` now refuses is not loaded
(a warning names the server, version and variable), and neither is a runner command naming
a package that is not valid.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pydantic import ValidationError

from .database import Database, Migration
from .envpolicy import env_problems
from .errors import Conflict, RequestError
from .packages import from_runner_command
from .registry import Entry

log = logging.getLogger(__name__)

STEPS = [Migration(1, (
    """CREATE TABLE registrations (
        slug TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        description TEXT NOT NULL,
        tags TEXT NOT NULL,
        connections TEXT NOT NULL,
        limits TEXT NOT NULL,
        unlisted BOOLEAN NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        created_by TEXT,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE registration_versions (
        slug TEXT NOT NULL,
        version TEXT NOT NULL,
        spec TEXT NOT NULL,
        deprecated BOOLEAN NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        created_by TEXT,
        PRIMARY KEY (slug, version)
    )""",
))]


def build_entry(slug: str, description: str, tags: list[str], connections: dict[str, Any], limits: dict[str, Any],
                versions: dict[str, dict[str, Any]]) -> Entry:
    """An `Entry`, or a 400 naming the field (the same rules as registry.yaml)."""
    try:
        return Entry.model_validate({"slug": slug, "description": description, "tags": tags, "connections": connections,
                                     "limits": limits, "versions": versions, "published": True})
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise RequestError(f"{param}: {message}" if param else message, param=param, code="invalid_registration") from None


class RegistrationStore:
    """The `registrations` and `registration_versions` tables."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def open(self) -> RegistrationStore:
        await self._db.migrate("registrations", STEPS)
        return self

    async def stamp(self) -> tuple[Any, ...]:
        row = await self._db.fetch_one("SELECT COUNT(*) AS n, MAX(updated_at) AS t FROM registrations")
        return (row or {}).get("n"), (row or {}).get("t")

    async def load(self) -> tuple[dict[str, Entry], frozenset[str], dict[str, str]]:
        """Every registered entry, the unlisted slugs, and each slug's owner (org tenant)."""
        servers = await self._db.fetch_all("SELECT slug, owner, description, tags, connections, limits, unlisted "
                                           "FROM registrations")
        versions = await self._db.fetch_all("SELECT slug, version, spec, deprecated FROM registration_versions")
        by_slug: dict[str, dict[str, dict[str, Any]]] = {}
        for row in versions:
            spec = _forward(row["slug"], row["version"], json.loads(row["spec"]))
            if spec is not None:
                by_slug.setdefault(row["slug"], {})[row["version"]] = {**spec, "deprecated": bool(row["deprecated"])}
        entries: dict[str, Entry] = {}
        for row in servers:
            if row["slug"] not in by_slug:
                continue
            connections = json.loads(row["connections"])
            refused = [(name, variable) for name, connection in connections.items()
                       for variable, _ in env_problems(connection.get("env") or {}, name)]
            if refused:
                log.warning("registered server %s: connection %r sets environment variable %r, which is not "
                            "allowed; not loaded", row["slug"], refused[0][0], refused[0][1][:128])
                continue
            try:
                entries[row["slug"]] = build_entry(row["slug"], row["description"], json.loads(row["tags"]), connections,
                                                   json.loads(row["limits"]), by_slug[row["slug"]])
            except RequestError as exc:  # stored by an earlier hub under rules since tightened
                log.warning("registered server %s is not valid any more (%s); not loaded", row["slug"], exc.message)
        unlisted = frozenset(row["slug"] for row in servers if row["unlisted"])
        return entries, unlisted, {row["slug"]: row["owner"] for row in servers}

    async def insert(self, entry: Entry, key: str, *, owner: str, by: str | None, new_server: bool) -> None:
        now = time.time()
        spec = entry.versions[key].model_dump(mode="json", exclude={"deprecated"}, exclude_defaults=True)
        try:
            async with self._db.transaction() as tx:
                if new_server:
                    await tx.execute(
                        "INSERT INTO registrations (slug, owner, description, tags, connections, limits, unlisted, "
                        "created_at, created_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (entry.slug, owner, entry.description, json.dumps(list(entry.tags)),
                         json.dumps({k: v.model_dump(mode="json") for k, v in entry.connections.items()}),
                         json.dumps(entry.limits.model_dump(mode="json", exclude_none=True)), False, now, by, now))
                else:
                    await tx.execute("UPDATE registrations SET updated_at = ? WHERE slug = ?", (now, entry.slug))
                await tx.execute("INSERT INTO registration_versions (slug, version, spec, deprecated, created_at, "
                                 "created_by) VALUES (?, ?, ?, ?, ?, ?)",
                                 (entry.slug, key, json.dumps(spec), entry.versions[key].deprecated, now, by))
        except Exception as exc:  # the unique key: another request registered it first
            if "unique" in str(exc).lower() or "duplicate" in str(exc).lower():
                raise Conflict(f"{entry.slug}@{key} is already registered", param="slug") from None
            raise

    async def update_server(self, slug: str, **fields: Any) -> None:
        sets = ", ".join(f"{name} = ?" for name in fields)
        async with self._db.transaction() as tx:
            await tx.execute(f"UPDATE registrations SET {sets}, updated_at = ? WHERE slug = ?",  # noqa: S608 - names are ours
                             (*fields.values(), time.time(), slug))

    async def set_deprecated(self, slug: str, version: str, deprecated: bool) -> None:
        async with self._db.transaction() as tx:
            await tx.execute("UPDATE registration_versions SET deprecated = ? WHERE slug = ? AND version = ?",
                             (deprecated, slug, version))
            await tx.execute("UPDATE registrations SET updated_at = ? WHERE slug = ?", (time.time(), slug))


def _forward(slug: str, key: str, spec: dict[str, Any]) -> dict[str, Any] | None:
    """A stored version spec as this hub runs it, or None when it must not be loaded."""
    command = spec.get("command")
    if isinstance(command, list) and _runner_package_command(command):
        package = from_runner_command(command)
        if package is None:
            log.warning("registered server %s@%s: its stored package command names no valid package; not loaded",
                        slug, key)
            return None
        spec = {k: v for k, v in spec.items() if k != "command"} | {"package": package.model_dump(mode="json")}
    for name, _ in env_problems(spec.get("env") or {}, f"version {key}"):
        log.warning("registered server %s@%s: environment variable %r is not allowed; not loaded", slug, key, name[:128])
        return None
    return spec


def _runner_package_command(command: list[Any]) -> bool:
    """Whether `command` is what earlier hubs stored for a package (not an admin's own npx/uvx command line)."""
    if len(command) >= 3 and command[:2] == ["npx", "-y"]:  # name@version, as `Package.command()` wrote it
        return isinstance(command[2], str) and not command[2].startswith("-") and "@" in command[2][1:]
    return len(command) >= 2 and command[0] == "uvx" and isinstance(command[1], str) and "==" in command[1] \
        and not command[1].startswith("-")
