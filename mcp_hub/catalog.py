"""The tool catalog of one request: MCP tools and client tools under provider-safe names.

Naming scheme (deterministic, collision-free, valid for every major provider,
`^[a-zA-Z0-9_-]{1,64}$`):

* A client tool (the request's own `tools`) keeps its name exactly: the caller
  executes it and must recognise it.
* An MCP tool is presented as `<server>__<tool>`, where `<server>` is the server's
  instance name (`hub/time` -> `hub-time`; a URL loses its scheme: `host-mcp`) and
  both parts have every character outside `[a-zA-Z0-9_-]` replaced by `-`.
* A name longer than 64 characters, or equal to another presented name or to a
  client tool's name, becomes its first 55 characters, `_`, and 8 hex digits of
  SHA-256 over `server\\0tool`: every member of a clash is renamed this way, so the
  result does not depend on the order of servers or tools.

Names map back through the catalog (never by parsing), so any MCP tool name works.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import mcp.types as types

MAX_NAME = 64
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]+")


@dataclass(frozen=True)
class McpTool:
    """An MCP tool as presented: which server and tool a presented name stands for."""

    presented: str
    server: str
    tool: types.Tool


def _label(server: str) -> str:
    label = re.sub(r"^[a-z]+://", "", server)
    return _UNSAFE.sub("-", label).strip("-") or "server"


def _hashed(base: str, server: str, tool: str) -> str:
    digest = hashlib.sha256(f"{server}\0{tool}".encode()).hexdigest()[:8]
    return f"{base[:MAX_NAME - 9]}_{digest}"


class ToolCatalog:
    """Presented names for a request's MCP tools and client tools, and the way back."""

    def __init__(self, mcp_tools: dict[str, list[types.Tool]], client_tools: Iterable[dict[str, Any]] = ()) -> None:
        self.client_tools = list(client_tools)
        client_names = {tool["function"]["name"] for tool in self.client_tools}
        bases = [(server, tool, f"{_label(server)}__{_UNSAFE.sub('-', tool.name)}")
                 for server, tools in sorted(mcp_tools.items()) for tool in tools]
        counts = Counter(base for _, _, base in bases)
        self._mcp: dict[str, McpTool] = {}
        for server, tool, base in bases:
            name = base
            if len(base) > MAX_NAME or counts[base] > 1 or base in client_names:
                name = _hashed(base, server, tool.name)
            self._mcp[name] = McpTool(presented=name, server=server, tool=tool)
        self._client_names = client_names
        self._provider_tools: list[dict[str, Any]] | None = None

    def mcp(self, presented: str) -> McpTool | None:
        """The MCP tool a presented name stands for (None: a client tool or unknown)."""
        return self._mcp.get(presented)

    def is_client(self, name: str) -> bool:
        return name in self._client_names

    def presented_name(self, server: str, tool: str) -> str | None:
        return next((m.presented for m in self._mcp.values() if m.server == server and m.tool.name == tool), None)

    def __len__(self) -> int:
        return len(self._mcp) + len(self._client_names)

    def provider_tools(self) -> list[dict[str, Any]]:
        """Every tool in the OpenAI function format, MCP tools first (sorted), then client tools as given.

        Built once per catalog (a catalog may serve many requests: `CatalogCache`); callers must not modify it.
        """
        if self._provider_tools is None:
            self._provider_tools = self._build_provider_tools()
        return self._provider_tools

    def _build_provider_tools(self) -> list[dict[str, Any]]:
        presented = [
            {"type": "function", "function": {
                "name": m.presented,
                "description": _describe(m),
                "parameters": _parameters(m.tool.input_schema),
            }}
            for m in sorted(self._mcp.values(), key=lambda m: m.presented)
        ]
        return presented + self.client_tools


class CatalogCache:
    """Catalogs of MCP tools alone, reused while each server's tool list is the same object.

    A session keeps its reviewed tool list until it lists again, so the list objects identify
    a listing. The cache keeps them referenced, so their ids cannot be reused while cached,
    and forgets the oldest entry past `size`. A request with client tools gets a fresh catalog.
    """

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._entries: dict[tuple[tuple[str, int], ...], tuple[list[list[types.Tool]], ToolCatalog]] = {}

    def catalog(self, mcp_tools: dict[str, list[types.Tool]], client_tools: list[dict[str, Any]]) -> ToolCatalog:
        if client_tools:
            return ToolCatalog(mcp_tools, client_tools)
        key = tuple(sorted((name, id(tools)) for name, tools in mcp_tools.items()))
        hit = self._entries.get(key)
        if hit is not None:
            return hit[1]
        catalog = ToolCatalog(mcp_tools)
        if len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (list(mcp_tools.values()), catalog)
        return catalog


def _describe(tool: McpTool) -> str:
    text = tool.tool.description or tool.tool.title or tool.tool.name
    return f"{text.strip()} (MCP tool {tool.tool.name!r} of server {tool.server!r})"


def _parameters(schema: dict[str, Any] | None) -> dict[str, Any]:
    """The tool's input schema as a function's parameters (providers require an object schema)."""
    schema = dict(schema or {})
    schema.setdefault("type", "object")
    if schema["type"] == "object":
        schema.setdefault("properties", {})
    return schema
