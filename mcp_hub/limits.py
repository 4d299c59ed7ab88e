"""Per-request limits, each refused with an error that names the limit and the setting.

* `check_servers`: at most `max_servers_per_request` items in `mcp_servers` (400 `too_many_servers`).
* `check_client_tools` / `check_tool_count`: at most `max_tools_per_request` tools presented to
  the model, MCP tools and the request's own `tools` together (400 `too_many_tools`). Client
  tools are counted at parse time; MCP tools only once their servers are listed, and then the
  error gives the count per server. Dropping tools silently would leave the model unable to do
  what the caller asked without saying why, so an over-full catalog is an error, not a cut.

The time budget of a whole request (`request_timeout`) is kept by `chat_api.within_budget`
(streaming) and `chat_api.final_event`.
This module imports nothing of the loop, so that the loop can import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import mcp.types as types

from .errors import RequestError


def server_count(mcp_servers: Any) -> int:
    """How many servers an `mcp_servers` value names (a bare string or object is one)."""
    if mcp_servers is None:
        return 0
    return len(mcp_servers) if isinstance(mcp_servers, list) else 1


def check_servers(mcp_servers: Any, limit: int, param: str = "mcp_servers") -> None:
    count = server_count(mcp_servers)
    if count > limit:
        raise RequestError(f"{param} names {count} servers; at most {limit} are allowed per request "
                           "(max_servers_per_request)", code="too_many_servers", param=param)


def check_client_tools(tools: Sequence[Any] | None, limit: int) -> None:
    if tools and len(tools) > limit:
        raise RequestError(f"tools has {len(tools)} entries; at most {limit} tools are allowed per request "
                           "(max_tools_per_request)", code="too_many_tools", param="tools")


def check_tool_count(mcp_tools: Mapping[str, Sequence[types.Tool]], client_tools: Sequence[Any], limit: int) -> None:
    """Refuse a catalog of more than `limit` tools, saying how many each server brought."""
    total = sum(len(tools) for tools in mcp_tools.values()) + len(client_tools)
    if total <= limit:
        return
    counts = ", ".join(f"{name}: {len(tools)}" for name, tools in sorted(mcp_tools.items()))
    if client_tools:
        counts += f", request tools: {len(client_tools)}"
    raise RequestError(f"the request offers {total} tools to the model ({counts}); at most {limit} are allowed "
                       "(max_tools_per_request): use fewer servers", code="too_many_tools", param="mcp_servers")
