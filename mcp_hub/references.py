"""How one tool call of a model turn says it needs another call's output: `{"$ref": ...}`.

The rule (documented in README, "Client tools and handoffs"): anywhere in a call's
arguments, an object whose only keys are `"$ref"` and optionally `"path"` is a
reference. `"$ref"` names another call of the same turn, by its call id or by its tool
name (the name as presented to the model; a name means the first call of that name in
the turn). `"path"` (`"a.b.0"`: object keys, list indices) picks a part of the output.
A reference to nothing in the turn is no dependency and stays as it was written.

When the referenced output is known, the reference object is replaced by it: an MCP
call's `result` (structured content, else its content blocks), or a client tool's
result (its `tool` message content, parsed as JSON when it is JSON, else the text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import jsoncodec

REF = "$ref"


def is_reference(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get(REF), str) and set(value) <= {REF, "path"}
            and isinstance(value.get("path", ""), str))


def targets(arguments: Any) -> list[str]:
    """Every `$ref` target in `arguments` (nested), in order of appearance."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if is_reference(value):
            found.append(value[REF])
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(arguments)
    return found


def normalise(arguments: Any, ids_by_name: Mapping[str, str], ids: Sequence[str]) -> Any:
    """`arguments` with references by tool name rewritten to call ids (unknown targets kept)."""
    if is_reference(arguments):
        target = arguments[REF]
        if target not in ids and target in ids_by_name:
            return {**arguments, REF: ids_by_name[target]}
        return arguments
    if isinstance(arguments, dict):
        return {key: normalise(value, ids_by_name, ids) for key, value in arguments.items()}
    if isinstance(arguments, list):
        return [normalise(value, ids_by_name, ids) for value in arguments]
    return arguments


def substitute(arguments: Any, values: Mapping[str, Any]) -> Any:
    """`arguments` with each reference whose target is in `values` replaced by that output."""
    if is_reference(arguments):
        if arguments[REF] not in values:
            return arguments
        return _follow(values[arguments[REF]], arguments.get("path", ""))
    if isinstance(arguments, dict):
        return {key: substitute(value, values) for key, value in arguments.items()}
    if isinstance(arguments, list):
        return [substitute(value, values) for value in arguments]
    return arguments


def _follow(value: Any, path: str) -> Any:
    for part in (p for p in path.split(".") if p):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return None  # the path names nothing in the output
    return value


def client_value(content: Any) -> Any:
    """A client tool's result as a value: its text parsed as JSON when it is JSON, else the text."""
    if isinstance(content, list):  # content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        return content
    try:
        return jsoncodec.loads_within(content)
    except ValueError:
        return content


def arguments_object(raw: str) -> Any:
    """A tool call's JSON arguments as an object; the raw text when it is not JSON."""
    try:
        return jsoncodec.loads_within(raw) if raw else {}
    except ValueError:
        return raw


class TurnGraph:
    """The dependencies among the tool calls of one model turn."""

    def __init__(self, calls: Sequence[tuple[str, str, str]]) -> None:
        """`calls`: (id, presented name, raw JSON arguments), in the model's order."""
        ids = [call_id for call_id, _, _ in calls]
        by_name: dict[str, str] = {}
        for call_id, name, _ in calls:
            by_name.setdefault(name, call_id)
        self.arguments: dict[str, Any] = {}
        self.needs: dict[str, list[str]] = {}
        for call_id, _, raw in calls:
            arguments = normalise(arguments_object(raw), by_name, ids)
            self.arguments[call_id] = arguments
            self.needs[call_id] = list(dict.fromkeys(t for t in targets(arguments) if t in ids and t != call_id))

    def blocked(self, candidates: Sequence[str], blockers: set[str]) -> set[str]:
        """The candidates that need a blocker, directly or through other blocked candidates."""
        blocked: set[str] = set()
        changed = True
        while changed:
            changed = False
            for call_id in candidates:
                if call_id not in blocked and any(dep in blockers or dep in blocked for dep in self.needs[call_id]):
                    blocked.add(call_id)
                    changed = True
        return blocked



def waves(ready: Sequence[str], needs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """`ready` in execution order: each wave needs only earlier waves (a cycle runs as one wave)."""
    left: list[str] = list(ready)
    order: list[list[str]] = []
    while left:
        wave = [call_id for call_id in left if all(dep not in left for dep in needs.get(call_id, ()))]
        wave = wave or list(left)  # a cycle: run the rest with their references unresolved
        order.append(wave)
        left = [call_id for call_id in left if call_id not in wave]
    return order
