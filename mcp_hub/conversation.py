"""The OpenAI-format messages the completion loop builds: assistant turns, tool answers, and
the assistant messages that orphaned tool results need."""

from __future__ import annotations

from typing import Any

from . import jsoncodec
from .providers.base import ToolCallOut


def arguments_or_text(raw: str) -> Any:
    """A tool call's JSON arguments as a value; the raw text when it is not JSON."""
    try:
        return jsoncodec.loads_within(raw) if raw else {}
    except ValueError:
        return raw


def wire_call(call: ToolCallOut) -> dict[str, Any]:
    """A tool call as an OpenAI assistant message carries it."""
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def attach_orphan_tool_results(messages: list[dict[str, Any]], client_tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every `tool` message an assistant message that asked for it (PROTOCOL.md 3, item 4).

    The streaming Dedalus runner sends its local tools' results without the assistant
    message that called them; providers reject such orphans (OpenAI: 400; Anthropic: a
    `tool_result` without its `tool_use`). Saved handoff state re-attaches them first
    (`Completion._resume`); this is the fallback for what no state explains: the call is
    synthesised: named after the request's only client tool when there is
    exactly one, else a neutral placeholder, with empty arguments. Consecutive orphans
    share one synthesised message, as parallel calls would.
    """
    names = [tool["function"]["name"] for tool in client_tools]
    name = names[0] if len(names) == 1 else "client_tool"
    asked: set[str] = set()
    out: list[dict[str, Any]] = []
    synthesised: dict[str, Any] | None = None
    for message in messages:
        role = message.get("role")
        if role == "assistant":
            asked |= {str(call.get("id")) for call in message.get("tool_calls") or [] if isinstance(call, dict)}
        if role == "tool" and message["tool_call_id"] not in asked:
            if synthesised is None:
                synthesised = {"role": "assistant", "content": None, "tool_calls": []}
                out.append(synthesised)
            synthesised["tool_calls"].append(wire_call(ToolCallOut(id=message["tool_call_id"], name=name, arguments="{}")))
            asked.add(message["tool_call_id"])
        else:
            synthesised = None  # only a run of orphans shares one synthesised message
        out.append(message)
    return out


def tool_answer(rendered: dict[str, str], call: ToolCallOut) -> str:
    """The tool message content for `call`: its rendered result, or why there is none."""
    return rendered.get(call.id) or f"Error: there is no tool named {call.name!r}; use one of the tools offered."


def assistant_message(content: str | None, calls: list[ToolCallOut]) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": [wire_call(call) for call in calls]}
