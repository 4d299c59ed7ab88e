"""The canonical hash of a tool's definition as a server lists it (audit trail, tool pinning)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the audit writer process imports this module's neighbours without the MCP SDK
    import mcp.types as types


def tool_hash(tool: types.Tool) -> str:
    """SHA-256 (hex) of the canonical JSON of the tool's name, description and input schema.

    Canonical: keys sorted, compact separators, UTF-8 (non-ASCII kept as is). Annotations,
    titles and output schemas are left out: the hash pins what the model is told and sends.
    """
    definition = {"name": tool.name, "description": tool.description, "inputSchema": tool.input_schema}
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
