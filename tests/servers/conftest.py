"""Helpers for the hosted-server tests: in-memory clients and a real stdio launch."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, Tool, ToolAnnotations

StdioCall = Callable[..., Awaitable[tuple[CallToolResult, list[str]]]]


def hints(tool: Tool) -> ToolAnnotations:
    """The tool's annotations, which every hosted server's tool declares."""
    assert tool.annotations is not None, f"{tool.name} has no annotations"
    return tool.annotations


def error_text(result: CallToolResult) -> str:
    """The text of a failed tool call (asserting that it did fail)."""
    assert result.is_error, f"expected an error, got {result.structured_content!r}"
    return " ".join(getattr(block, "text", "") for block in result.content)


def data(result: CallToolResult) -> Any:
    """The structured content of a successful tool call (asserting that it succeeded)."""
    assert not result.is_error, " ".join(getattr(block, "text", "") for block in result.content)
    return result.structured_content


def everything_said(result: CallToolResult) -> str:
    """All text a client could see in a result: content blocks plus structured content."""
    texts = [getattr(block, "text", "") for block in result.content]
    return "\n".join(texts) + "\n" + json.dumps(result.structured_content, ensure_ascii=False)


@pytest.fixture
def call_over_stdio(tmp_path: Path) -> StdioCall:
    """Launch ``python -m mcp_hub_servers.<name>`` as a real subprocess, call one tool.

    Returns the tool result and the names of the tools the server listed. The
    child's stderr goes to ``<tmp_path>/<name>.stderr.log``.
    """

    async def call(
        name: str, tool: str, arguments: dict[str, Any], env: dict[str, str] | None = None
    ) -> tuple[CallToolResult, list[str]]:
        params = StdioServerParameters(
            command=sys.executable, args=["-m", f"mcp_hub_servers.{name}"], env=env or {}, cwd=tmp_path
        )
        with open(tmp_path / f"{name}.stderr.log", "w") as errlog:
            with anyio.fail_after(60):
                async with Client(
                    stdio_client(params, errlog=errlog), mode="legacy", read_timeout_seconds=30
                ) as client:
                    listed = await client.list_tools()
                    result = await client.call_tool(tool, arguments)
        return result, [t.name for t in listed.tools]

    return call
