"""Tool results rendered for the model: compact text, capped in size."""

from __future__ import annotations

import json
from typing import Any

from .executor import ToolResult


def _block_text(block: Any) -> str:
    if not isinstance(block, dict):
        return json.dumps(block, separators=(",", ":"), ensure_ascii=False)
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind in ("image", "audio"):
        size = len(block.get("data", "")) * 3 // 4
        return f"[{kind}: {block.get('mimeType', 'unknown type')}, {size} bytes]"
    if kind == "resource_link":
        return f"[resource link: {block.get('uri', '')}{' ' + block['name'] if block.get('name') else ''}]"
    if kind == "resource":
        resource = block.get("resource", {})
        if "text" in resource:
            return f"[resource {resource.get('uri', '')}]\n{resource['text']}"
        return f"[resource {resource.get('uri', '')}: {resource.get('mimeType', 'binary')}]"
    return json.dumps(block, separators=(",", ":"), ensure_ascii=False)


def render_for_model(result: ToolResult, cap: int) -> str:
    """The tool message content for one result: structured JSON compactly, text blocks as text."""
    value = result.result
    if isinstance(value, list):
        text = "\n".join(_block_text(block) for block in value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if result.is_error:
        text = f"Error: {text}"
    if len(text) > cap:
        omitted = len(text) - cap
        text = f"{text[:cap]}\n[truncated: {omitted} more characters]"
    return text
