"""JSON on the hot paths (request bodies, model calls, responses, stream chunks): orjson.

`loads` is strict JSON: `NaN`, `Infinity` and lone surrogate escapes, which Python's
`json` accepts, are refused. `dumps` writes compact UTF-8; NaN and the infinities,
which are not JSON, become `null`; an integer beyond 64 bits, which orjson refuses,
takes the standard library's path.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

loads = orjson.loads  # raises a ValueError on bad input


def dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # an integer beyond 64 bits; anything else fails here too, as it would have
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
