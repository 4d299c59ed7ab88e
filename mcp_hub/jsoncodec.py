"""JSON on the hot paths (request bodies, model calls, responses, stream chunks): orjson.

`loads` is strict JSON: `NaN`, `Infinity` and lone surrogate escapes, which Python's
`json` accepts, are refused. `dumps` writes compact UTF-8; NaN and the infinities,
which are not JSON, become `null`; an integer beyond 64 bits, which orjson refuses,
takes the standard library's path.

Depth: JSON from outside (request bodies, a model's tool arguments) goes through
`loads_within`, which refuses values nested deeper than `MAX_DEPTH` containers. Much of
Python (the standard `json`, `copy`, pydantic, our own walks) recurses once per level,
and a value 600-1000 levels deep exhausts the interpreter's stack in one of them; no
legitimate body, schema or argument comes near 64 levels.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

MAX_DEPTH = 64
loads = orjson.loads  # raises a ValueError on bad input


class TooDeep(ValueError):
    """A JSON value nests containers deeper than the limit; `where` is its top-level key (or None)."""

    def __init__(self, limit: int, where: str | int | None) -> None:
        super().__init__(f"JSON nested deeper than {limit} levels")
        self.limit = limit
        self.where = where


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` deep below (and counting) `value`."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        container, depth = pop()
        if depth > limit:
            return True
        for child in container.values() if type(container) is dict else container:
            if type(child) is dict or type(child) is list:
                push((child, depth + 1))
    return False


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Raise `TooDeep` when `value` nests objects and arrays more than `limit` deep.

    Iterative, so that the check itself cannot exhaust the stack; it stops at the first
    container over the limit, and scalars cost one type test each. Only on failure is the
    top-level key that holds the deep value looked for (`TooDeep.where`).
    """
    if not isinstance(value, dict | list) or not _deeper_than(value, limit):
        return
    entries = value.items() if isinstance(value, dict) else enumerate(value)
    where = next((key for key, child in entries if isinstance(child, dict | list) and _deeper_than(child, limit - 1)),
                 None)
    raise TooDeep(limit, where)


def loads_within(raw: bytes | str, limit: int = MAX_DEPTH) -> Any:
    """`loads`, refusing (with `TooDeep`) a value nested deeper than `limit`.

    A text holding at most `limit` brackets and braces cannot nest deeper than `limit`;
    counting them is a C-speed scan, so typical bodies skip the walk altogether.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # orjson's own limit (1024) is past ours
            raise TooDeep(limit, None) from None
        raise
    text = raw.encode() if isinstance(raw, str) else raw
    if text.count(b"[") + text.count(b"{") > limit:
        check_depth(value, limit)
    return value


def text_within(value: Any, limit: int = MAX_DEPTH) -> str:
    """`value` (a model's tool arguments as an object) as JSON text. One nested deeper than
    `limit`, which `json.dumps` may not survive, becomes a stand-in just past the limit: every
    parser of arguments (`loads_within`) refuses it as too deep, so the call fails as a tool
    error the model sees, as malformed arguments do."""
    try:
        check_depth(value, limit)
    except TooDeep:
        return "[" * (limit + 1) + "]" * (limit + 1)
    return json.dumps(value)


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # an integer beyond 64 bits; anything else fails here too, as it would have
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
