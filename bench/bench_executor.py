"""Benchmark: the hub's executor against a bare MCP SDK session to the same server.

One run measures, against `tests/fixtures/probe_server.py`:

1. warm per-call latency over stdio and streamable HTTP: `hub.execute` of one
   `ToolCall` versus the same call on a bare `mcp.Client` (`mode="legacy"`,
   connected the way the hub connects), interleaved in rotating blocks so drift
   hits every variant alike;
2. parallel batches: N calls of `sleep(ms=200)` in one `hub.execute` batch (and
   N concurrent calls on a bare session) for N in 1, 2, 4, 8, 16;
3. cold start: a fresh hub's `open_servers` to the first tool result, versus a
   bare `Client` spawn + initialize + first call (and the same for a remote URL).

The hub runs with its audit trail off: this measures the executor. One more warm
variant, `hub.execute` on a second hub with the default settings (audit trail on,
SQLite), shows what the durable record of each call adds (the result is returned
once its record is committed).

Usage: `.venv/bin/python bench/bench_executor.py [--calls N] [--json out.json]`.
See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.types as types
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcp_hub.executor import ToolCall  # noqa: E402
from mcp_hub.hub import Hub, Servers  # noqa: E402
from mcp_hub.registry import Registry  # noqa: E402
from mcp_hub.settings import Settings  # noqa: E402

PROBE = ROOT / "tests" / "fixtures" / "probe_server.py"
SLUG = "bench/probe"
PARALLEL_NS = (1, 2, 4, 8, 16)
SLEEP_MS = 200
WARM_OVERHEAD_TARGET = 1.10   # hub / bare median
PARALLEL_TARGET_MS = 250.0

# The tools timed warm: `sleep(ms=0)` is an async tool (runs on the server's event loop);
# `echo` is a sync tool, which SDK 2.x runs in a worker thread (one thread hop per call).
WARM_TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "sleep0": ("sleep", {"ms": 0}),
    "echo": ("echo", {"text": "x" * 16}),
}


# -- statistics -------------------------------------------------------------------------------

from stats import run_main, summary  # noqa: E402  (bench/ is on sys.path when run as a script)

# -- servers and clients ----------------------------------------------------------------------

def registry() -> Registry:
    return Registry.from_data({"servers": {SLUG: {"versions": {"1.0.0": {
        "command": ["{python}", str(PROBE)]}}}}}, root=ROOT)


def stdio_params() -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=[str(PROBE)], cwd=str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_http_server(log: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    """Spawn the probe server over streamable HTTP; return it, its URL and its start-up time (s)."""
    port = free_port()
    started = time.perf_counter()
    with open(log, "ab") as errlog:
        proc = subprocess.Popen([sys.executable, str(PROBE), "--http", str(port)], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog)
    deadline = started + 30
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the probe HTTP server exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"http://127.0.0.1:{port}/mcp", time.perf_counter() - started
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("the probe HTTP server did not start listening within 30 s")


def bare_client(transport: str, *, errlog: Any = None, http: httpx2.AsyncClient | None = None,
                url: str = "") -> Client:
    """A bare SDK client connected as the hub connects (legacy handshake, no response cache)."""
    if transport == "stdio":
        return Client(stdio_client(stdio_params(), errlog=errlog), mode="legacy", cache=None)
    assert http is not None
    return Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None)


def check(result: types.CallToolResult) -> None:
    if result.is_error:
        raise RuntimeError(f"tool call failed: {result.content}")


def executor_settings(data_dir: Path) -> Settings:
    """The hub as the executor benchmark measures it: its audit trail off, the probe's loopback URL allowed."""
    return Settings.load(data_dir=data_dir, egress_allow=["127.0.0.1"], audit_enabled=False)


async def hub_call(hub: Hub, servers: Servers, server: str, tool: str, args: dict[str, Any]) -> None:
    batch = await hub.execute([ToolCall(server, tool, args)], servers)
    if batch.results[0].is_error:
        raise RuntimeError(f"hub call failed: {batch.results[0].result}")


# -- 1/2. warm per-call latency -----------------------------------------------------------------

async def warm(variants: dict[str, Callable[[], Awaitable[None]]], calls: int, block: int,
               warmup: int) -> dict[str, dict[str, Any]]:
    """Time `calls` calls of each variant, in blocks whose order rotates every round.

    Besides wall-clock latency, this process's CPU time per call is recorded: it is
    where the hub's own work shows, and other load on the machine barely moves it.
    """
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            await variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    blocks: dict[str, list[float]] = {name: [] for name in names}
    cpu_ns = dict.fromkeys(names, 0)
    gc.collect()
    rounds = -(-calls // block)
    clock, cpu = time.perf_counter_ns, time.process_time_ns
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            fn, out = variants[name], samples[name]
            c0, start = cpu(), len(out)
            for _ in range(min(block, calls - len(out))):
                t0 = clock()
                await fn()
                out.append((clock() - t0) / 1e6)
            cpu_ns[name] += cpu() - c0
            blocks[name].append(statistics.median(out[start:]))
    return {name: summary(samples[name]) | {"cpu_us": cpu_ns[name] / 1e3 / len(samples[name]),
                                            "block_medians": blocks[name]} for name in names}


def paired_ratio(row: dict[str, Any], num: str, den: str) -> float:
    """Median over rounds of the ratio of block medians: blocks of one round ran back to back,
    so load that comes and goes on the machine cancels out of each ratio."""
    return statistics.median(a / b for a, b in zip(row[num]["block_medians"], row[den]["block_medians"], strict=True))


def warm_variants(bare: Client, hub: Hub, servers: Servers, audited: tuple[Hub, Servers], server: str, tool: str,
                  args: dict[str, Any]) -> dict[str, Callable[[], Awaitable[None]]]:
    request = types.CallToolRequest(params=types.CallToolRequestParams(name=tool, arguments=args))

    async def sdk_call_tool() -> None:
        check(await bare.call_tool(tool, args))

    async def sdk_send_request() -> None:
        # The exact request the hub's session makes (it skips the output-schema check).
        check(await bare.session.send_request(request, types.CallToolResult))

    async def hub_execute() -> None:
        await hub_call(hub, servers, server, tool, args)

    async def hub_execute_audited() -> None:
        await hub_call(*audited, server, tool, args)

    return {"sdk_call_tool": sdk_call_tool, "sdk_send_request": sdk_send_request, "hub_execute": hub_execute,
            "hub_execute_audited": hub_execute_audited}


# -- 3. parallel batches ------------------------------------------------------------------------

async def parallel(bare: Client, hub: Hub, servers: Servers, server: str, reps: int) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    args = {"ms": SLEEP_MS}
    for n in PARALLEL_NS:
        hub_ms: list[float] = []
        bare_ms: list[float] = []
        for rep in range(reps):
            for which in (("hub", "bare") if rep % 2 == 0 else ("bare", "hub")):
                t0 = time.perf_counter()
                if which == "hub":
                    batch = await hub.execute([ToolCall(server, "sleep", args) for _ in range(n)], servers)
                    bad = [r.result for r in batch.results if r.is_error]
                    if bad:
                        raise RuntimeError(f"hub batch failed: {bad[0]}")
                    hub_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    async with anyio.create_task_group() as tg:
                        for _ in range(n):
                            tg.start_soon(_bare_sleep, bare, args)
                    bare_ms.append((time.perf_counter() - t0) * 1000)
        out[n] = {"hub": summary(hub_ms), "bare": summary(bare_ms)}
    return out


async def _bare_sleep(bare: Client, args: dict[str, Any]) -> None:
    check(await bare.call_tool("sleep", args))


# -- 4. cold start ------------------------------------------------------------------------------

async def cold_stdio(tmp: Path, reps: int) -> dict[str, Any]:
    """Fresh hub: open_servers -> first result; bare: spawn + initialize + first call (alternating)."""
    reg = registry()
    hub_first, hub_enter, hub_exit, bare_first, bare_init, bare_exit = [], [], [], [], [], []
    for rep in range(reps):
        for which in (("hub", "bare") if rep % 2 == 0 else ("bare", "hub")):
            gc.collect()
            if which == "hub":
                t0 = time.perf_counter()
                async with Hub(executor_settings(tmp / f"cold-{rep}"), reg) as hub:
                    t1 = time.perf_counter()
                    servers = hub.open_servers(SLUG)
                    await hub_call(hub, servers, SLUG, "echo", {"text": "x"})
                    t2 = time.perf_counter()
                t3 = time.perf_counter()
                hub_enter.append((t1 - t0) * 1000)
                hub_first.append((t2 - t1) * 1000)
                hub_exit.append((t3 - t2) * 1000)
            else:
                with open(tmp / "bare-cold.log", "a", encoding="utf-8") as errlog:
                    t0 = time.perf_counter()
                    async with bare_client("stdio", errlog=errlog) as client:
                        t1 = time.perf_counter()
                        check(await client.call_tool("echo", {"text": "x"}))
                        t2 = time.perf_counter()
                    t3 = time.perf_counter()
                bare_init.append((t1 - t0) * 1000)
                bare_first.append((t2 - t0) * 1000)
                bare_exit.append((t3 - t2) * 1000)
    return {"hub_first_result": summary(hub_first), "hub_enter": summary(hub_enter), "hub_exit": summary(hub_exit),
            "bare_first_result": summary(bare_first), "bare_initialize": summary(bare_init),
            "bare_exit": summary(bare_exit)}


async def cold_http(tmp: Path, url: str, reps: int) -> dict[str, Any]:
    """Fresh hub: open_servers(url) -> first result; bare: connect on a fresh shared client + first call."""
    reg = registry()
    hub_first, bare_first = [], []
    for rep in range(reps):
        for which in (("hub", "bare") if rep % 2 == 0 else ("bare", "hub")):
            if which == "hub":
                async with Hub(executor_settings(tmp / f"cold-http-{rep}"), reg) as hub:
                    t0 = time.perf_counter()
                    servers = hub.open_servers(url)
                    await hub_call(hub, servers, url, "echo", {"text": "x"})
                    hub_first.append((time.perf_counter() - t0) * 1000)
            else:
                async with httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=300)) as http:
                    t0 = time.perf_counter()
                    async with bare_client("http", http=http, url=url) as client:
                        check(await client.call_tool("echo", {"text": "x"}))
                        bare_first.append((time.perf_counter() - t0) * 1000)
    return {"hub_first_result": summary(hub_first), "bare_first_result": summary(bare_first)}


# -- the run ----------------------------------------------------------------------------------

async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mcp-hub-bench-"))
    report: dict[str, Any] = {"meta": meta(args), "warm": {}, "parallel": {}, "cold": {}}
    phase = time.perf_counter()
    proc, url, http_startup = start_http_server(tmp / "probe-http.log")
    report["meta"]["http_server_startup_ms"] = http_startup * 1000
    try:
        with open(tmp / "bare-stdio.log", "a", encoding="utf-8") as errlog, anyio.fail_after(args.budget):
            async with Hub(executor_settings(tmp / "hub"), registry()) as hub, \
                    Hub(Settings.load(data_dir=tmp / "hub-audited", egress_allow=["127.0.0.1"]), registry()) as audited, \
                    httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=300)) as http, \
                    bare_client("stdio", errlog=errlog) as bare_stdio, \
                    bare_client("http", http=http, url=url) as bare_http:
                servers = hub.open_servers([SLUG, url])
                audited_servers = audited.open_servers([SLUG, url])
                for some_hub, opened in ((hub, servers), (audited, audited_servers)):
                    await some_hub.list_tools(opened)
                    if opened.errors:
                        raise RuntimeError(f"hub could not open the probe: {opened.error_entries()}")
                transports = {"stdio": (bare_stdio, SLUG), "http": (bare_http, url)}
                for transport, (bare, server) in transports.items():
                    for label, (tool, tool_args) in WARM_TOOLS.items():
                        report["warm"][f"{transport}/{label}"] = await warm(
                            warm_variants(bare, hub, servers, (audited, audited_servers), server, tool, tool_args),
                            args.calls, args.block, args.warmup)
                        log(f"warm {transport}/{label} done", phase)
                for transport, (bare, server) in transports.items():
                    if transport == "http" and args.no_http_parallel:
                        continue
                    report["parallel"][transport] = await parallel(bare, hub, servers, server, args.reps)
                    log(f"parallel {transport} done", phase)
            report["cold"]["stdio"] = await cold_stdio(tmp, args.cold_reps)
            log("cold stdio done", phase)
            report["cold"]["http"] = await cold_http(tmp, url, args.cold_reps)
            log("cold http done", phase)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
    report["meta"]["http_connections_per_post"] = connections_per_post(tmp / "probe-http.log")
    report["meta"]["total_s"] = time.perf_counter() - phase
    report["meta"]["loadavg_at_end"] = os.getloadavg()
    if args.keep_logs:
        report["meta"]["logs"] = str(tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    report["verdict"] = verdict(report)
    return report


def connections_per_post(log: Path) -> float | None:
    """Distinct client ports over POSTs in the server's access log: 1.0 means no keep-alive reuse at all."""
    ports = [line.split()[1] for line in log.read_text(errors="replace").splitlines() if '"POST /mcp' in line]
    return len(set(ports)) / len(ports) if ports else None


def log(message: str, since: float) -> None:
    print(f"[{time.perf_counter() - since:6.1f}s] {message}", file=sys.stderr, flush=True)


def meta(args: argparse.Namespace) -> dict[str, Any]:
    return {"python": platform.python_version(), "mcp": package_version("mcp"), "anyio": package_version("anyio"),
            "cpus": os.cpu_count(), "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "calls": args.calls, "block": args.block, "warmup": args.warmup, "reps": args.reps,
            "cold_reps": args.cold_reps, "loadavg_at_start": os.getloadavg()}


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    warm_ratios = {key: paired_ratio(row, "hub_execute", "sdk_send_request") for key, row in report["warm"].items()}
    worst_parallel = max((row["hub"]["median"], transport, n) for transport, table in report["parallel"].items()
                         for n, row in table.items())
    return {"warm_paired_ratio_vs_send_request": warm_ratios,
            "warm_ok": all(r <= WARM_OVERHEAD_TARGET for r in warm_ratios.values()),
            "parallel_worst_ms": worst_parallel[0], "parallel_worst_at": f"{worst_parallel[1]} N={worst_parallel[2]}",
            "parallel_ok": worst_parallel[0] <= PARALLEL_TARGET_MS}


# -- output -----------------------------------------------------------------------------------

def markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = [f"mcp-hub executor benchmark: Python {m['python']}, mcp {m['mcp']}, {m['cpus']} CPUs, {m['date']}, "
             f"{m['calls']} timed calls per variant, total {m['total_s']:.0f} s, "
             f"load average {m['loadavg_at_start'][0]:.1f} → {m['loadavg_at_end'][0]:.1f}", "",
             "### Warm per-call latency (ms; ratios of medians)", "",
             "`sleep0` = `sleep(ms=0)`, an async tool; `echo` = a sync tool, run by the server in a worker thread. "
             "Bare `send_request` is the exact request the hub sends; bare `call_tool` adds the SDK's "
             "output-schema check. Hub `execute` is the executor (the hub's audit trail off); *audited* is "
             "a hub with the default settings, which returns a result once its audit record is committed "
             "(SQLite). CPU is this process's CPU time per call.", "",
             "| transport / tool | bare `call_tool` med / p95 / p99 | bare `send_request` med / p95 / p99 "
             "| hub `execute` med / p95 / p99 | hub − send_request | hub / send_request: medians, paired "
             "| hub / call_tool: medians, paired | audited med / p95 / p99 | audited − hub "
             "| CPU µs/call: call_tool / send_request / hub / audited |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in report["warm"].items():
        ct, sr, hub, audited = row["sdk_call_tool"], row["sdk_send_request"], row["hub_execute"], row["hub_execute_audited"]
        lines.append(f"| {key} | {fmt3(ct)} | {fmt3(sr)} | {fmt3(hub)} | {(hub['median'] - sr['median']) * 1000:+.0f} µs "
                     f"| {hub['median'] / sr['median']:.3f}, **{paired_ratio(row, 'hub_execute', 'sdk_send_request'):.3f}** "
                     f"| {hub['median'] / ct['median']:.3f}, {paired_ratio(row, 'hub_execute', 'sdk_call_tool'):.3f} "
                     f"| {fmt3(audited)} | {(audited['median'] - hub['median']) * 1000:+.0f} µs "
                     f"| {ct['cpu_us']:.0f} / {sr['cpu_us']:.0f} / {hub['cpu_us']:.0f} / {audited['cpu_us']:.0f} |")
    lines += ["", f"### Parallel batches of `sleep(ms={SLEEP_MS})` (wall ms, median / max of {m['reps']})", "",
              "| transport | N | bare concurrent | hub `execute` batch | hub / bare | hub ≤ 250 ms |",
              "|---|---|---|---|---|---|"]
    for transport, table in report["parallel"].items():
        for n, row in table.items():
            hub, bare = row["hub"], row["bare"]
            ok = "yes" if hub["median"] <= PARALLEL_TARGET_MS else "**NO**"
            lines.append(f"| {transport} | {n} | {bare['median']:.1f} / {bare['max']:.1f} | {hub['median']:.1f} / "
                         f"{hub['max']:.1f} | {hub['median'] / bare['median']:.3f} | {ok} |")
    cs, ch = report["cold"]["stdio"], report["cold"]["http"]
    lines += ["", f"### Cold start (ms, median of {m['cold_reps']})", "",
              "| what | bare SDK | hub | hub / bare |", "|---|---|---|---|",
              f"| hosted stdio server: spawn → first tool result | {cs['bare_first_result']['median']:.0f} "
              f"| {cs['hub_first_result']['median']:.0f} | **{ratio(cs, 'first_result'):.3f}** |",
              f"| remote HTTP server: connect → first tool result | {ch['bare_first_result']['median']:.1f} "
              f"| {ch['hub_first_result']['median']:.1f} | {ratio(ch, 'first_result'):.3f} |",
              f"| (bare stdio spawn + initialize only; hub `__aenter__`; close: bare / hub) "
              f"| {cs['bare_initialize']['median']:.0f} | {cs['hub_enter']['median']:.1f} "
              f"| close {cs['bare_exit']['median']:.0f} / {cs['hub_exit']['median']:.0f} |",
              "", f"HTTP: {fmt_share(m.get('http_connections_per_post'))} of POSTs opened a new TCP connection "
              "(SDK 2.3.0 closes each POST's SSE response before the end of its body; the hub drains it, "
              "the bare client cannot reuse the connection).",
              "", "### Targets", ""]
    v = report["verdict"]
    worst = max(v["warm_paired_ratio_vs_send_request"].items(), key=lambda kv: kv[1])
    lines.append(f"* warm overhead ≤ 10%: {'PASS' if v['warm_ok'] else 'FAIL'} "
                 f"(worst paired hub / send_request = {worst[1]:.3f} on {worst[0]})")
    lines.append(f"* parallel N ≤ 16 within {PARALLEL_TARGET_MS:.0f} ms: {'PASS' if v['parallel_ok'] else 'FAIL'} "
                 f"(worst median {v['parallel_worst_ms']:.1f} ms at {v['parallel_worst_at']})")
    added = [(row["hub_execute_audited"]["median"] - row["hub_execute"]["median"]) * 1000 for row in report["warm"].values()]
    lines += ["", f"With the audit trail on (the default), the durable record of each call added {min(added):.0f}-"
                  f"{max(added):.0f} µs to a warm call (median, audited hub − executor)."]
    return "\n".join(lines)


def fmt_share(value: float | None) -> str:
    return "?" if value is None else f"{value:.0%}"


def fmt3(s: dict[str, float]) -> str:
    return f"{s['median']:.3f} / {s['p95']:.3f} / {s['p99']:.3f}"


def ratio(row: dict[str, Any], what: str) -> float:
    return row[f"hub_{what}"]["median"] / row[f"bare_{what}"]["median"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="timed warm calls per variant (default 500)")
    parser.add_argument("--block", type=int, default=10, help="calls per interleaved block (default 10)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed warm-up calls per variant (default 50)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per parallel batch size (default 5)")
    parser.add_argument("--cold-reps", type=int, default=5, help="cold starts per side (default 5)")
    parser.add_argument("--no-http-parallel", action="store_true", help="skip the parallel batches over HTTP")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (the path is in the JSON)")
    run_main(parser, run, markdown, budget=300.0)


if __name__ == "__main__":
    main()
