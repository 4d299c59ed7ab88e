"""What the JSON depth cap (`jsoncodec.loads_within`) adds to parsing request bodies.

Parses bodies of several shapes with plain `orjson.loads` and with `loads_within` (the same
parse, then the bracket count and, past it, the iterative depth walk) and prints the median
time per parse of each, in microseconds, as a markdown table.

    .venv/bin/python bench/bench_json_depth.py            # a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from mcp_hub import jsoncodec


def _chat(messages: int, tools: int = 0) -> bytes:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
              "required": ["city"]}
    body: dict[str, Any] = {"model": "openai/gpt-4o", "mcp_servers": ["hub/notes", "hub/files"],
                            "messages": [{"role": "user" if i % 2 else "assistant", "content": "hello there " * 20}
                                         for i in range(messages)]}
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": f"t{i}", "parameters": schema}} for i in range(tools)]
    return orjson.dumps(body)


BODIES: dict[str, bytes] = {
    "tool call (`/v1/tools/call`)": orjson.dumps({"server": "hub/notes", "tool": "add", "arguments": {"text": "x"}}),
    "chat, 1 message": _chat(1),
    "chat, 40 messages, 8 tools": _chat(40, 8),
    "chat, 2000 messages (~500 KB)": _chat(2000),
}


def _median_us(parse: Callable[[bytes], Any], body: bytes, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        parse(body)
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=2000, help="parses per body and variant (bodies over 100 KB: /20)")
    args = parser.parse_args()
    print("| body | bytes | orjson.loads (µs) | loads_within (µs) | added (µs) |")
    print("|---|---:|---:|---:|---:|")
    for name, body in BODIES.items():
        repeat = args.repeat if len(body) < 100_000 else max(10, args.repeat // 20)
        plain = _median_us(orjson.loads, body, repeat)
        capped = _median_us(jsoncodec.loads_within, body, repeat)
        print(f"| {name} | {len(body)} | {plain:.1f} | {capped:.1f} | {capped - plain:+.1f} |")


if __name__ == "__main__":
    main()
