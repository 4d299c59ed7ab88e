"""Benchmark: what the sandbox costs a hosted server, against the same server unsandboxed.

One run measures, against `tests/fixtures/probe_server.py` (Python) and, when `npm ci` ran,
`@modelcontextprotocol/server-everything` (Node), on two hubs that differ only in `sandbox`:

1. cold start: `open_servers` of a new session (a new tenant each time) to its first tool
   result, interleaved sandboxed / unsandboxed so drift hits both alike; the session is stopped
   (child reaped) before the next sample;
2. warm calls: per-call latency of `hub.execute` on a ready session, in rotating blocks; the
   ratio of the medians (sandboxed / unsandboxed).

Targets (issue 13): cold start at most 50 ms slower; warm calls unchanged (ratio ~1.00).

Usage: `.venv/bin/python bench/bench_sandbox.py [--samples N] [--calls N] [--json out.json]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stats import run_main, summary  # noqa: E402  (bench/ is on sys.path when run as a script)

from mcp_hub.executor import ToolCall  # noqa: E402
from mcp_hub.hub import Hub  # noqa: E402
from mcp_hub.registry import Registry  # noqa: E402
from mcp_hub.settings import Settings  # noqa: E402

PROBE = ROOT / "tests" / "fixtures" / "probe_server.py"
EVERYTHING = ROOT / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
COLD_TARGET_MS = 50.0
SERVERS: dict[str, tuple[list[str], str, dict[str, Any]]] = {
    "bench/python": (["{python}", str(PROBE)], "echo", {"text": "x" * 16}),
    "bench/node": (["node", str(EVERYTHING), "stdio"], "echo", {"message": "x" * 16}),
}


def registry() -> Registry:
    servers = {slug: {"versions": {"1.0.0": {"command": command}}} for slug, (command, _, _) in SERVERS.items()
               if slug != "bench/node" or EVERYTHING.exists()}
    return Registry.from_data({"servers": servers}, root=ROOT)


async def first_call(hub: Hub, slug: str, tenant: str) -> float:
    """Milliseconds from `open_servers` of a new session to its first tool result; then stop it."""
    _, tool, args = SERVERS[slug]
    started = time.perf_counter()
    servers = hub.open_servers(slug, tenant=tenant)
    batch = await hub.execute([ToolCall(slug, tool, args)], servers)
    elapsed = (time.perf_counter() - started) * 1000
    if batch.results[0].is_error:
        raise RuntimeError(f"{slug}: {batch.results[0].result}")
    session = servers.sessions[slug]
    session.stop()
    await session.finished.wait()
    return elapsed


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
                              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                       capture_output=True, text=True).stdout.strip(),
                              "servers": {}}
    reg = registry()
    with tempfile.TemporaryDirectory() as tmp:
        hubs = {mode: Hub(Settings.load(data_dir=Path(tmp) / mode, audit_enabled=False, sandbox=mode == "sandboxed",
                                        max_children=4), reg) for mode in ("sandboxed", "plain")}
        async with hubs["sandboxed"] as sandboxed, hubs["plain"] as plain:
            running = {"sandboxed": sandboxed, "plain": plain}
            for slug in [entry.slug for entry in reg.entries()]:
                cold: dict[str, list[float]] = {mode: [] for mode in running}
                for index in range(args.samples + 1):
                    for mode, hub in (running.items() if index % 2 else reversed(running.items())):
                        elapsed = await first_call(hub, slug, f"cold-{index}")
                        if index:  # the first round warms the page cache
                            cold[mode].append(elapsed)
                warm: dict[str, list[float]] = {mode: [] for mode in running}
                _, tool, tool_args = SERVERS[slug]
                sessions = {mode: hub.open_servers(slug, tenant="warm") for mode, hub in running.items()}
                for block in range(args.calls // 50 + 1):
                    for mode, hub in (running.items() if block % 2 else reversed(running.items())):
                        for _call in range(50):
                            started = time.perf_counter()
                            await hub.execute([ToolCall(slug, tool, tool_args)], sessions[mode])
                            if block:
                                warm[mode].append((time.perf_counter() - started) * 1000)
                figures: dict[str, Any] = {"cold": {mode: summary(samples) for mode, samples in cold.items()},
                           "warm": {mode: summary(samples) for mode, samples in warm.items()}}
                figures["cold_extra_ms"] = figures["cold"]["sandboxed"]["median"] - figures["cold"]["plain"]["median"]
                figures["warm_ratio"] = figures["warm"]["sandboxed"]["median"] / figures["warm"]["plain"]["median"]
                report["servers"][slug] = figures
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Commit {report['commit']}, {report['machine']}", "",
             "| server | cold plain (median / p95 ms) | cold sandboxed | extra (target <= 50 ms) "
             "| warm plain (median ms) | warm sandboxed | ratio |", "|---|---|---|---|---|---|---|"]
    for slug, f in report["servers"].items():
        cold, warm = f["cold"], f["warm"]
        lines.append(f"| {slug} | {cold['plain']['median']:.1f} / {cold['plain']['p95']:.1f} | "
                     f"{cold['sandboxed']['median']:.1f} / {cold['sandboxed']['p95']:.1f} | {f['cold_extra_ms']:+.1f} | "
                     f"{warm['plain']['median']:.3f} | {warm['sandboxed']['median']:.3f} | {f['warm_ratio']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20, help="cold starts per variant (default 20)")
    parser.add_argument("--calls", type=int, default=1000, help="warm calls per variant (default 1000)")
    run_main(parser, run, markdown, budget=900)
