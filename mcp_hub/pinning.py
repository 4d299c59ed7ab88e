"""Tool pinning: a server may not change its tools behind the hub's back.

Each registry server version (`org/name@1.2.0`) has one pin per tool: the `tool_hash`
(SHA-256 of name, description and input schema, the hash the audit trail records) of the
definition an admin approved. Pins are set when a version is registered through the API,
or, for `registry.yaml` entries (read-only), on the first listing of that version (trust
on first use). From then on, every listing is reviewed: a tool whose definition differs
from its pin, or that has no pin, is withheld (never shown to a model, never callable)
and a `ToolsChanged` error (`tool_definitions_changed`) names it, until an admin
approves the new definition (`approve`). Servers reached by a bare URL have no registry
entry and so no pins.

Every tool that is shown has its descriptions (the tool's, and the `description` and
`title` strings of its input schema) cleaned of hidden text: format characters
(zero-width spaces and joiners, bidirectional overrides, tag characters), control
characters other than tab and newline, and private-use and unassigned code points.
Hashes are of the definition as the server sent it, so hidden text is a change too.

Pins live in the hub's database (table `tool_pins`), so every hub sharing it agrees.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import mcp.types as types

from .database import Database, Migration
from .errors import ToolsChanged
from .tool_hash import tool_hash

STEPS = [Migration(1, (
    """CREATE TABLE tool_pins (
        server TEXT NOT NULL,
        version TEXT NOT NULL,
        tool TEXT NOT NULL,
        approved_hash TEXT,
        pending_hash TEXT,
        pending_definition TEXT,
        approved_at DOUBLE PRECISION,
        approved_by TEXT,
        changed_at DOUBLE PRECISION,
        PRIMARY KEY (server, version, tool)
    )""",
))]
_KEPT_CONTROLS = frozenset("\t\n")
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cn", "Cs"})


def clean_text(text: str) -> str:
    """`text` without characters a person would not see (format, control, private-use, unassigned)."""
    if text.isascii() and text.isprintable():
        return text  # the common case, without a per-character walk
    return "".join(ch for ch in text if ch in _KEPT_CONTROLS or unicodedata.category(ch) not in _HIDDEN_CATEGORIES)


def _clean_schema(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: clean_text(item) if key in ("description", "title") and isinstance(item, str) else _clean_schema(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_clean_schema(item) for item in value]
    return value


def clean_tool(tool: types.Tool) -> types.Tool:
    """The tool as a model may see it: descriptions and titles without hidden text."""
    update: dict[str, Any] = {"input_schema": _clean_schema(tool.input_schema)}
    if tool.description is not None:
        update["description"] = clean_text(tool.description)
    if tool.title is not None:
        update["title"] = clean_text(tool.title)
    return tool.model_copy(update=update)


@dataclass(frozen=True)
class Review:
    """A listing after review: the tools to show (cleaned) and the names withheld."""

    tools: list[types.Tool]
    withheld: list[str] = field(default_factory=list)


class PinStore(Protocol):
    """Where pins live (the hub's database; anything with these methods in tests)."""

    async def pins(self, server: str, version: str) -> dict[str, str | None]: ...

    async def record(self, server: str, version: str, tools: Sequence[types.Tool], *, approved_by: str) -> None: ...

    async def hold(self, server: str, version: str, tools: Sequence[types.Tool]) -> None: ...


class DatabasePins:
    """Pins in the `tool_pins` table of the hub's database."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def open(self) -> DatabasePins:
        await self._db.migrate("pins", STEPS)
        return self

    async def pins(self, server: str, version: str) -> dict[str, str | None]:
        """`{tool: approved hash or None}` of one server version."""
        rows = await self._db.fetch_all("SELECT tool, approved_hash FROM tool_pins WHERE server = ? AND version = ?",
                                        (server, version))
        return {row["tool"]: row["approved_hash"] for row in rows}

    async def record(self, server: str, version: str, tools: Sequence[types.Tool], *, approved_by: str) -> None:
        """Pin `tools` as approved (registration, first use, or an admin's approval)."""
        now = time.time()
        async with self._db.transaction() as tx:
            for tool in tools:
                await tx.execute("DELETE FROM tool_pins WHERE server = ? AND version = ? AND tool = ?",
                                 (server, version, tool.name))
                await tx.execute("INSERT INTO tool_pins (server, version, tool, approved_hash, approved_at, approved_by) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", (server, version, tool.name, tool_hash(tool), now, approved_by))

    async def hold(self, server: str, version: str, tools: Sequence[types.Tool]) -> None:
        """Keep the new definitions of withheld tools for an admin to look at and approve."""
        now = time.time()
        async with self._db.transaction() as tx:
            for tool in tools:
                definition = json.dumps(tool.model_dump(mode="json", by_alias=True, exclude_none=True))
                changed = await tx.execute("UPDATE tool_pins SET pending_hash = ?, pending_definition = ?, changed_at = ? "
                                           "WHERE server = ? AND version = ? AND tool = ?",
                                           (tool_hash(tool), definition, now, server, version, tool.name))
                if not changed:
                    await tx.execute("INSERT INTO tool_pins (server, version, tool, pending_hash, pending_definition, "
                                     "changed_at) VALUES (?, ?, ?, ?, ?, ?)",
                                     (server, version, tool.name, tool_hash(tool), definition, now))

    async def approve(self, server: str, version: str, tools: Sequence[str] | None, *, approved_by: str) -> list[str]:
        """Make the pending definitions (of `tools`, default all) the approved ones; the names approved."""
        rows = await self._db.fetch_all("SELECT tool FROM tool_pins WHERE server = ? AND version = ? "
                                        "AND pending_hash IS NOT NULL ORDER BY tool", (server, version))
        names = [row["tool"] for row in rows if tools is None or row["tool"] in tools]
        now = time.time()
        async with self._db.transaction() as tx:
            for name in names:
                await tx.execute("UPDATE tool_pins SET approved_hash = pending_hash, pending_hash = NULL, "
                                 "pending_definition = NULL, approved_at = ?, approved_by = ?, changed_at = NULL "
                                 "WHERE server = ? AND version = ? AND tool = ?", (now, approved_by, server, version, name))
        return names

    async def listing(self, server: str, version: str | None = None) -> list[dict[str, Any]]:
        """Pins for the API: tool, status (approved | changed | new), hashes, the pending definition."""
        sql = ("SELECT server, version, tool, approved_hash, pending_hash, pending_definition, approved_at, approved_by, "
               "changed_at FROM tool_pins WHERE server = ?")
        params: tuple[Any, ...] = (server,)
        if version is not None:
            sql, params = sql + " AND version = ?", (server, version)
        rows = await self._db.fetch_all(sql + " ORDER BY version, tool", params)
        views = []
        for row in rows:
            status = "approved" if row["pending_hash"] is None else "changed" if row["approved_hash"] else "new"
            pending = json.loads(row["pending_definition"]) if row["pending_definition"] else None
            views.append({**{k: row[k] for k in ("server", "version", "tool", "approved_hash", "pending_hash",
                                                 "approved_at", "approved_by", "changed_at")},
                          "status": status, "pending_definition": pending})
        return views


class ToolGate:
    """Reviews each listing of a server's tools against its pins (see the module docstring)."""

    def __init__(self, store: PinStore) -> None:
        self.store = store

    async def review(self, server: str, name: str, version: str | None, tools: list[types.Tool]) -> Review:
        """`server` is the slug (None-version: a URL server, not pinned); `name` the instance name for errors."""
        if version is None:
            return Review([clean_tool(tool) for tool in tools])
        pins = await self.store.pins(server, version)
        if not any(approved is not None for approved in pins.values()):  # first use: trust and pin
            await self.store.record(server, version, tools, approved_by="first-use")
            return Review([clean_tool(tool) for tool in tools])
        shown: list[types.Tool] = []
        held: list[types.Tool] = []
        for tool in tools:
            (shown if pins.get(tool.name) == tool_hash(tool) else held).append(tool)
        if held:
            await self.store.hold(server, version, held)
        return Review([clean_tool(tool) for tool in shown], [tool.name for tool in held])

    @staticmethod
    def error(name: str, ref: str, withheld: list[str]) -> ToolsChanged:
        return ToolsChanged(name, ref, withheld)
