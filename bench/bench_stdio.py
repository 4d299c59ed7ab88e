"""Benchmark: the client-side CPU cost of reading one large stdio result, the hub's transport against the SDK's.

For each size, one call of `blob(megabytes)` on `tests/fixtures/heavy_server.py` (a single text
block: the JSON-RPC message is that big plus a few bytes) through `mcp.Client` over
`mcp_hub.stdio.stdio_client` and over the SDK's `mcp.client.stdio.stdio_client`. Reported: this
process's CPU seconds (`time.process_time`, every thread; the child's own CPU is not counted)
and wall seconds, median of `--reps`. The SDK's reader is quadratic, so sizes above `--sdk-max`
are not tried with it.

Usage: `.venv/bin/python bench/bench_stdio.py [--sizes 1,5,10,20,60] [--reps 3] [--sdk-max 20]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client as sdk_stdio_client

from mcp_hub.stdio import stdio_client as hub_stdio_client

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ROOT / "tests" / "fixtures" / "heavy_server.py"


async def measure(open_transport: Callable[[StdioServerParameters, Any], Any], megabytes: float,
                  reps: int) -> tuple[float, float]:
    """Median (CPU s, wall s) of `reps` calls of blob(megabytes) on one session."""
    params = StdioServerParameters(command=sys.executable, args=[str(HEAVY)])
    cpu: list[float] = []
    wall: list[float] = []
    with tempfile.TemporaryFile("w") as errlog:
        async with Client(open_transport(params, errlog), mode="legacy", cache=None) as client:
            request = types.CallToolRequest(params=types.CallToolRequestParams(name="blob",
                                                                               arguments={"megabytes": megabytes}))
            for _ in range(reps):
                started_cpu, started = time.process_time(), time.perf_counter()
                result = await client.session.send_request(request, types.CallToolResult,
                                                           request_read_timeout_seconds=600)
                cpu.append(time.process_time() - started_cpu)
                wall.append(time.perf_counter() - started)
                assert len(result.content[0].text) == int(megabytes * 1_000_000)  # type: ignore[union-attr]
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,5,10,20,60", help="result sizes in MB (10^6 bytes), comma-separated")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sdk-max", type=float, default=20, help="largest size tried with the SDK's reader")
    args = parser.parse_args()
    sizes = [float(part) for part in args.sizes.split(",")]
    limit = int(max(sizes) * 1_000_000) + (1 << 20)

    def hub(params: StdioServerParameters, errlog: Any) -> Any:
        return hub_stdio_client(params, errlog, max_message_bytes=limit)

    def sdk(params: StdioServerParameters, errlog: Any) -> Any:
        return sdk_stdio_client(params, errlog=errlog)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"commit {commit}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}")
    print("\n| result | hub transport CPU s | wall s | SDK transport CPU s | wall s |\n|---|---|---|---|---|")
    for size in sizes:
        hub_cpu, hub_wall = anyio.run(measure, hub, size, args.reps)
        if size <= args.sdk_max:
            sdk_cpu, sdk_wall = anyio.run(measure, sdk, size, args.reps)
            sdk_text = f"{sdk_cpu:.2f} | {sdk_wall:.2f}"
        else:
            sdk_text = "not tried | not tried"
        print(f"| {size:g} MB | {hub_cpu:.2f} | {hub_wall:.2f} | {sdk_text} |", flush=True)


if __name__ == "__main__":
    main()
