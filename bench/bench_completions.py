"""Benchmark: hub overhead per chat completion with one MCP tool call, and completions per second.

One run starts three processes: the scripted model (`tests/fixtures/scripted_model.py`,
zero latency, scripted to call `echo` once and then answer), one real hub
(`python -m mcp_hub serve`, its OpenAI provider pointed at the scripted model, the probe
server hosted over stdio), and a bare MCP SDK stdio session to its own probe child.
Then it measures, from this process:

1. sequential latency (httpx2, one pooled client): hub completions (turn 1 calls
   `bench-probe__echo`, the hub runs it, turn 2 answers) interleaved in rotating blocks
   with the three calls a client would make without the hub: the same two model requests
   sent straight to the scripted model, and the same tool call on the bare SDK session.
   Overhead per completion = its wall time − the medians of those three bare calls; the
   same subtraction is also made in CPU time of all processes, with aiohttp (the hub's
   own model client) as the client of the hub and of the model alike, and with the hub's
   own model time when the hub sends a `Server-Timing` header;
2. throughput: completions/s with `--clients` concurrent clients, each on its own
   keep-alive connection (a minimal HTTP/1.1 client, so the load generator leaves the two
   cores to the rest), non-streaming then streaming, with the CPU time of every process.

Usage: `.venv/bin/python bench/bench_completions.py [--completions N] [--json out.json]`.
See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import httpx2
import mcp.types as types
import psutil
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from rig import (  # bench/ is on sys.path when run as a script; importing rig puts the checkout there too
    API_KEY,
    MODEL_SERVER,
    PROBE,
    ROOT,
    TOOL,
    TOOL_ARGS,
    RawConnection,
    clean_env,
    completion_body,
    free_port,
    reset_model,
    script_model,
    spawn,
    stop,
    write_registry,
)
from stats import run_main, summary

from tests.fixtures.scripted_model import ScriptClient

OVERHEAD_P50_TARGET_MS = 3.0
OVERHEAD_P99_TARGET_MS = 15.0
THROUGHPUT_TARGET = 150.0


class Cpu:
    """CPU seconds (user + system) of the processes that take part, and of the whole machine."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in procs.items()}

    def sample(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            times = proc.cpu_times()
            out[name] = times.user + times.system
        machine = psutil.cpu_times()
        out["machine_busy"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        out["wall"] = time.perf_counter()
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: after[name] - before[name] for name in before}


# -- the calls --------------------------------------------------------------------------------

def parse_server_timing(value: str) -> dict[str, float]:
    """`model;dur=0.8, tools;dur=1.2, model;dur=0.7` -> milliseconds summed by name."""
    out: dict[str, float] = {}
    for metric in value.split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            if param.startswith("dur="):
                out[name] = out.get(name, 0.0) + float(param[4:])
    return out


class Calls:
    """The measured calls, all from this process."""

    def __init__(self, http: httpx2.AsyncClient, hub_url: str, model_url: str, bare: Client,
                 aio: aiohttp.ClientSession) -> None:
        self.http = http
        self.aio = aio  # the hub's own model client (providers use aiohttp), for the second baseline
        self.hub_url = f"{hub_url}/v1/chat/completions"
        self.model_url = f"{model_url}/v1/chat/completions"
        self.bare = bare
        self.body = json.dumps(completion_body()).encode()
        self.stream_body = json.dumps(completion_body(stream=True)).encode()
        self.json_headers = {"content-type": "application/json"}
        self.model_turns: list[bytes] = []
        self.model_headers = {"content-type": "application/json", "accept": "application/json",
                              "authorization": f"Bearer {API_KEY}"}
        self.tool_request = types.CallToolRequest(params=types.CallToolRequestParams(name=TOOL, arguments=TOOL_ARGS))
        self.server_timings: list[dict[str, float]] = []

    def raw_workers(self, clients: int, stream: bool) -> list[Callable[[], Awaitable[None]]]:
        """One completion call per client, each on its own keep-alive connection (see `RawConnection`)."""
        url = httpx2.URL(self.hub_url)
        payload = RawConnection.encode(url.path, f"{url.host}:{url.port}", self.stream_body if stream else self.body)
        workers: list[Callable[[], Awaitable[None]]] = []
        for _ in range(clients):
            connection = RawConnection(url.host, url.port or 80)

            async def call(connection: RawConnection = connection) -> None:
                status, body = await connection.request(payload)
                ok = status == 200 and b'"turns_consumed":2' in body
                if not ok or (stream and not body.endswith(b"data: [DONE]\n\n")):
                    raise RuntimeError(f"hub completion failed ({status}): {body[-500:]!r}")

            workers.append(call)
        return workers

    async def completion(self) -> None:
        response = await self.http.post(self.hub_url, content=self.body, headers=self.json_headers)
        if response.status_code != 200 or b'"turns_consumed":2' not in response.content:
            raise RuntimeError(f"hub completion failed ({response.status_code}): {response.text[:500]}")
        timing = response.headers.get("server-timing")
        if timing is not None:
            self.server_timings.append(parse_server_timing(timing))

    async def checked_completion(self) -> dict[str, Any]:
        response = await self.http.post(self.hub_url, content=self.body, headers=self.json_headers)
        body = response.json()
        if response.status_code != 200 or body.get("tools_executed") != [TOOL] or body.get("turns_consumed") != 2:
            raise RuntimeError(f"unexpected completion ({response.status_code}): {response.text[:500]}")
        return body

    async def streamed_completion(self) -> None:
        async with self.http.stream("POST", self.hub_url, content=self.stream_body, headers=self.json_headers) as response:
            data = b"".join([chunk async for chunk in response.aiter_bytes()])
        if response.status_code != 200 or not data.endswith(b"data: [DONE]\n\n") or b'"turns_consumed":2' not in data:
            raise RuntimeError(f"streamed completion failed ({response.status_code}): {data[-500:]!r}")

    async def model_turn(self, turn: int) -> None:
        response = await self.http.post(self.model_url, content=self.model_turns[turn], headers=self.model_headers)
        if response.status_code != 200:
            raise RuntimeError(f"bare model call failed ({response.status_code}): {response.text[:300]}")

    async def completion_aiohttp(self) -> None:
        async with self.aio.post(self.hub_url, data=self.body, headers=self.json_headers) as response:
            body = await response.read()
            if response.status != 200 or b'"turns_consumed":2' not in body:
                raise RuntimeError(f"hub completion (aiohttp) failed ({response.status}): {body[:500]!r}")

    async def model_turn_aiohttp(self, turn: int) -> None:
        async with self.aio.post(self.model_url, data=self.model_turns[turn], headers=self.model_headers) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"bare model call (aiohttp) failed ({response.status})")

    def variants(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """The sequential phase's calls, by name."""
        return {"hub_completion": self.completion, "model_turn_1": partial(self.model_turn, 0),
                "model_turn_2": partial(self.model_turn, 1), "bare_tool": self.tool,
                "hub_completion_aiohttp": self.completion_aiohttp,
                "model_turn_1_aiohttp": partial(self.model_turn_aiohttp, 0),
                "model_turn_2_aiohttp": partial(self.model_turn_aiohttp, 1)}

    async def tool(self) -> None:
        # The exact request the hub's session sends (no output-schema check).
        result = await self.bare.session.send_request(self.tool_request, types.CallToolResult)
        if result.is_error:
            raise RuntimeError(f"bare tool call failed: {result.content}")


# -- 1. sequential latency --------------------------------------------------------------------

async def sequential(calls: Calls, cpu: Cpu, completions: int, block: int) -> dict[str, Any]:
    """Blocks of `block` calls per variant, rotating order every round (house style of bench_executor).

    For each block the CPU time of every process is sampled before and after, so the CPU per
    call of each variant is known for the hub, the model server and the MCP child as well.
    """
    variants = calls.variants()
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    blocks: dict[str, list[float]] = {name: [] for name in names}
    cpu_s: dict[str, dict[str, float]] = {name: {} for name in names}
    calls.server_timings.clear()
    gc.collect()
    clock = time.perf_counter_ns
    rounds = -(-completions // block)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            fn, out = variants[name], samples[name]
            start = len(out)
            before = cpu.sample()
            for _ in range(min(block, completions - len(out))):
                t0 = clock()
                await fn()
                out.append((clock() - t0) / 1e6)
            after = cpu.sample()
            for proc, seconds in Cpu.delta(before, after).items():
                cpu_s[name][proc] = cpu_s[name].get(proc, 0.0) + seconds
            blocks[name].append(statistics.median(out[start:]))
    result: dict[str, Any] = {}
    for name in names:
        n = len(samples[name])
        result[name] = summary(samples[name]) | {
            "cpu_us": {proc: seconds * 1e6 / n for proc, seconds in cpu_s[name].items() if proc != "wall"},
            "block_medians": blocks[name]}
    base = {name: result[name]["median"] for name in ("model_turn_1", "model_turn_2", "bare_tool")}
    baseline = sum(base.values())
    overhead = [total - baseline for total in samples["hub_completion"]]
    paired = [h - a - b - c for h, a, b, c in zip(blocks["hub_completion"], blocks["model_turn_1"],
                                                  blocks["model_turn_2"], blocks["bare_tool"], strict=True)]
    # The same subtraction with aiohttp as the client, for the hub and the model alike: the hub's
    # providers use aiohttp, which spends less CPU per call than httpx2, so this compares the hub
    # with a client that runs the loop itself on the hub's own HTTP client.
    same_client = result["model_turn_1_aiohttp"]["median"] + result["model_turn_2_aiohttp"]["median"] + base["bare_tool"]
    result["overhead_aiohttp_client"] = summary([total - same_client for total in samples["hub_completion_aiohttp"]])
    result["baseline_aiohttp_client_ms"] = same_client
    # The same subtraction in CPU time of every process: a sequential completion's critical path is
    # mostly CPU (the model answers at once), so this is close to the wall overhead on an idle machine,
    # and other load on the machine hardly moves it.
    def cpu_total(name: str) -> float:
        c = result[name]["cpu_us"]
        return (c["bench"] + c["hub"] + c["model"] + c["mcp_child"] + c["bare_mcp_child"]) / 1000

    result["overhead_cpu_ms"] = cpu_total("hub_completion") - sum(
        cpu_total(name) for name in ("model_turn_1", "model_turn_2", "bare_tool"))
    result["baseline_ms"] = baseline
    result["overhead"] = summary(overhead)
    result["overhead_paired_median_ms"] = statistics.median(paired)
    timings = calls.server_timings
    if len(timings) == len(samples["hub_completion"]) and all("model" in t for t in timings):
        # The hub reported its own model-call time (a `Server-Timing` header): subtract that instead.
        result["server_timing"] = {name: summary([t.get(name, 0.0) for t in timings])
                                   for name in sorted({key for t in timings for key in t})}
        result["overhead_hub_timed"] = summary([total - t["model"] - base["bare_tool"]
                                                for total, t in zip(samples["hub_completion"], timings, strict=True)])
    return result


# -- 2. throughput ----------------------------------------------------------------------------

async def throughput(fns: list[Callable[[], Awaitable[None]]], cpu: Cpu, count: int, warmup: int) -> dict[str, Any]:
    """One worker per function in `fns` (a client each); they take completions off one counter
    until `count` are done, after `warmup` untimed ones."""
    clients = len(fns)

    async def burst(n: int, latencies: list[float] | None) -> None:
        remaining = n

        async def worker(fn: Callable[[], Awaitable[None]]) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter_ns()
                await fn()
                if latencies is not None:
                    latencies.append((time.perf_counter_ns() - t0) / 1e6)

        async with anyio.create_task_group() as tg:
            for fn in fns:
                tg.start_soon(worker, fn)

    await burst(warmup, None)
    gc.collect()
    latencies: list[float] = []
    before = cpu.sample()
    await burst(count, latencies)
    after = cpu.sample()
    spent = Cpu.delta(before, after)
    wall = spent.pop("wall")
    machine = spent.pop("machine_busy")
    ours = sum(spent.values())
    per = {name: seconds * 1000 / count for name, seconds in spent.items()}
    per["other"] = max(machine - ours, 0.0) * 1000 / count
    # What the CPU time allows on this machine with nothing else running: the hub is one thread
    # (at most one core), and all the processes share os.cpu_count() cores.
    ceiling = min(1000 / per["hub"] if per.get("hub") else float("inf"),
                  1000 * (os.cpu_count() or 1) / (ours * 1000 / count))
    return {"clients": clients, "completions": count, "wall_s": wall, "per_s": count / wall, "cpu_ceiling_per_s": ceiling,
            "latency": summary(latencies), "cpu_ms_per_completion": per,
            "cpu_share_of_one_core": {name: seconds / wall for name, seconds in spent.items()},
            "machine_busy_cores": machine / wall}


# -- the run ----------------------------------------------------------------------------------

async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mcp-hub-bench-completions-"))
    report: dict[str, Any] = {"meta": meta(args)}
    phase = time.perf_counter()
    model_port, hub_port = free_port(), free_port()
    model_url, hub_url = f"http://127.0.0.1:{model_port}", f"http://127.0.0.1:{hub_port}"
    write_registry(tmp / "registry.yaml")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        model = spawn([sys.executable, str(MODEL_SERVER), "--port", str(model_port)], model_port, tmp / "model.log",
                      clean_env())
        procs.append(model)
        script = ScriptClient(model_url)
        script_model(script)
        hub_cmd = [sys.executable, str(args.hub_launcher)] if args.hub_launcher else [sys.executable, "-m", "mcp_hub"]
        hub = spawn([*hub_cmd, "serve", "--registry", str(tmp / "registry.yaml"), "--data-dir", str(tmp / "data"),
                     "--port", str(hub_port), "--log-level", "warning"], hub_port, tmp / "hub.log",
                    clean_env(OPENAI_BASE_URL=f"{model_url}/v1", OPENAI_API_KEY=API_KEY, **dict(args.hub_env)))
        procs.append(hub)
        log(f"model server pid {model.pid}, hub pid {hub.pid}", phase)
        limits = httpx2.Limits(max_connections=args.clients * 2, max_keepalive_connections=args.clients * 2)
        with open(tmp / "bare-probe.log", "a", encoding="utf-8") as errlog, anyio.fail_after(args.budget):
            params = StdioServerParameters(command=sys.executable, args=[str(PROBE)], cwd=str(ROOT))
            async with httpx2.AsyncClient(timeout=httpx2.Timeout(60), limits=limits) as http, \
                    aiohttp.ClientSession() as aio, \
                    Client(stdio_client(params, errlog=errlog), mode="legacy", cache=None) as bare:
                calls = Calls(http, hub_url, model_url, bare, aio)
                t0 = time.perf_counter()
                first = await calls.checked_completion()  # spawns the hub's probe child
                report["meta"]["first_completion_ms"] = (time.perf_counter() - t0) * 1000
                report["sample_body"] = first
                # The two model requests of that completion, exactly as the hub sent them.
                sent = [r for r in script.requests() if r.path.endswith("/chat/completions")]
                calls.model_turns = [json.dumps(r.body).encode() for r in sent[-2:]]
                if len(calls.model_turns) != 2 or sent[-1].last_tool_result is None:
                    raise RuntimeError("could not capture the two model turns of a completion")
                report["meta"]["model_request_bytes"] = [len(t) for t in calls.model_turns]
                pids = {"hub": hub.pid, "model": model.pid, "mcp_child": probe_child(hub.pid), "bench": os.getpid(),
                        "bare_mcp_child": probe_child(os.getpid())}
                cpu = Cpu(pids)
                report["meta"]["pids"] = pids
                for fn in calls.variants().values():
                    for _ in range(args.warmup):
                        await fn()
                reset_model(script)
                log("warm-up done", phase)
                report["sequential"] = await sequential(calls, cpu, args.completions, args.block)
                reset_model(script)
                log("sequential done", phase)
                report["throughput"] = {}
                variants = {"non-streaming": False} | ({} if args.no_stream else {"streaming": True})
                for label, stream in variants.items():
                    if args.loadgen == "raw":
                        fns = calls.raw_workers(args.clients, stream)
                    else:
                        fns = [calls.streamed_completion if stream else calls.completion] * args.clients
                    report["throughput"][label] = await throughput(fns, cpu, args.count, min(args.count, 4 * args.clients))
                    reset_model(script)
                    log(f"throughput {label} done", phase)
    finally:
        for proc in reversed(procs):
            stop(proc)
    report["meta"]["total_s"] = time.perf_counter() - phase
    report["meta"]["loadavg_at_end"] = os.getloadavg()
    report["meta"]["speed_probe_ms_at_end"] = speed_probe()
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    steal = (steal_ticks() - report["meta"]["steal_ticks_at_start"]) / ticks
    report["meta"]["steal_share"] = steal / (report["meta"]["total_s"] * (os.cpu_count() or 1))
    if args.keep_logs:
        report["meta"]["logs"] = str(tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    report["verdict"] = verdict(report)
    return report


def probe_child(parent: int) -> int:
    """The pid of the one probe server process under `parent`."""
    children = [p for p in psutil.Process(parent).children()
                if any(str(PROBE) in part for part in p.cmdline())]
    if len(children) != 1:
        raise RuntimeError(f"expected one probe child under pid {parent}, found {len(children)}")
    return children[0].pid


def speed_probe() -> float:
    """Milliseconds for a fixed pure-Python loop, the best of three: how fast this machine's CPU is right now.

    On a shared VM the CPU's speed moves (seen here: the same loop took 280 to 500 ms within a
    minute), and every figure of this benchmark moves with it; the probe says which runs compare.
    """
    best = float("inf")
    for _ in range(3):
        started, total = time.perf_counter(), 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return best * 1000


def steal_ticks() -> int:
    """CPU time the hypervisor gave to other guests, in clock ticks, from /proc/stat (0 if unknown)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8])
    except (OSError, IndexError, ValueError):
        return 0


def log(message: str, since: float) -> None:
    print(f"[{time.perf_counter() - since:6.1f}s] {message}", file=sys.stderr, flush=True)


def meta(args: argparse.Namespace) -> dict[str, Any]:
    return {"python": platform.python_version(), "mcp": package_version("mcp"), "httpx2": package_version("httpx2"),
            "uvicorn": package_version("uvicorn"), "cpus": os.cpu_count(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "completions": args.completions, "block": args.block,
            "warmup": args.warmup, "clients": args.clients, "count": args.count, "loadgen": args.loadgen,
            "hub_launcher": str(args.hub_launcher) if args.hub_launcher else None,
            "loadavg_at_start": os.getloadavg(), "speed_probe_ms_at_start": speed_probe(), "steal_ticks_at_start": steal_ticks()}


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    overhead = report["sequential"]["overhead"]
    rate = report["throughput"]["non-streaming"]["per_s"]
    return {"overhead_p50_ms": overhead["median"], "overhead_p99_ms": overhead["p99"],
            "overhead_p50_ok": overhead["median"] <= OVERHEAD_P50_TARGET_MS,
            "overhead_p99_ok": overhead["p99"] <= OVERHEAD_P99_TARGET_MS,
            "throughput_per_s": rate, "throughput_ok": rate >= THROUGHPUT_TARGET}


# -- output -----------------------------------------------------------------------------------

def markdown(report: dict[str, Any]) -> str:
    m, seq = report["meta"], report["sequential"]
    lines = [f"mcp-hub completions benchmark: Python {m['python']}, mcp {m['mcp']}, uvicorn {m['uvicorn']}, "
             f"{m['cpus']} CPUs, {m['date']}, {m['completions']} sequential completions, {m['clients']} clients × "
             f"{m['count']} completions ({m['loadgen']} load generator), total {m['total_s']:.0f} s, "
             f"load average {m['loadavg_at_start'][0]:.1f} → {m['loadavg_at_end'][0]:.1f}, "
             f"speed probe {m['speed_probe_ms_at_start']:.0f} → {m['speed_probe_ms_at_end']:.0f} ms (lower: faster CPU), "
             f"steal {100 * m['steal_share']:.0f}%"
             + (f", hub launcher {m['hub_launcher']}" if m.get("hub_launcher") else ""), "",
             "#### Sequential: one completion = model turn 1 (calls `echo`) → MCP tool call → model turn 2 (ms)", "",
             "Bare calls are made from the benchmark process: the hub's two model requests, byte for byte, straight "
             "to the scripted model, and `echo` on a bare SDK stdio session (`send_request`). CPU is per call, for "
             "each process (MCP child: the hub's, or the bare session's on the bare `echo` row).", "",
             "| call | median | p95 | p99 | max | CPU µs/call: bench / hub / model server / MCP child |",
             "|---|---|---|---|---|---|"]
    labels = {"hub_completion": "hub completion (total)", "model_turn_1": "bare model turn 1",
              "model_turn_2": "bare model turn 2", "bare_tool": "bare SDK `echo`",
              "hub_completion_aiohttp": "hub completion, aiohttp client",
              "model_turn_1_aiohttp": "bare model turn 1, aiohttp", "model_turn_2_aiohttp": "bare model turn 2, aiohttp"}
    for key, label in labels.items():
        row, c = seq[key], seq[key]["cpu_us"]
        child = c["bare_mcp_child"] if key == "bare_tool" else c["mcp_child"]
        lines.append(f"| {label} | {row['median']:.3f} | {row['p95']:.3f} | {row['p99']:.3f} | {row['max']:.3f} "
                     f"| {c['bench']:.0f} / {c['hub']:.0f} / {c['model']:.0f} / {child:.0f} |")
    o = seq["overhead"]
    lines.append(f"| **hub overhead** = total − {seq['baseline_ms']:.3f} (the three bare medians) "
                 f"| **{o['median']:.3f}** | {o['p95']:.3f} | **{o['p99']:.3f}** | {o['max']:.3f} "
                 f"| paired (median over rounds of block differences): {seq['overhead_paired_median_ms']:.3f} |")
    same = seq["overhead_aiohttp_client"]
    lines.append(f"| hub overhead with an aiohttp client (the hub's model client) for the hub and the model alike = "
                 f"total, aiohttp − {seq['baseline_aiohttp_client_ms']:.3f} | {same['median']:.3f} | {same['p95']:.3f} "
                 f"| {same['p99']:.3f} | {same['max']:.3f} | |")
    lines.append(f"| hub overhead in CPU time: all processes' CPU per completion − that of the three bare calls "
                 f"| {seq['overhead_cpu_ms']:.3f} | | | | (≈ the wall overhead on an idle machine) |")
    if "overhead_hub_timed" in seq:
        h = seq["overhead_hub_timed"]
        lines.append(f"| hub overhead = total − the hub's own model time (`Server-Timing`) − bare `echo` median "
                     f"| {h['median']:.3f} | {h['p95']:.3f} | {h['p99']:.3f} | {h['max']:.3f} | |")
    lines += ["", f"#### Throughput: {m['clients']} concurrent clients, one hub process "
              "(CPU ms per completion; `other` = the rest of the machine)", "",
              "| variant | completions | wall s | **completions/s** | latency p50 / p99 ms "
              "| CPU ms: hub / model server / MCP child / load generator / other | busy cores: hub / machine "
              "| ceiling from CPU /s |",
              "|---|---|---|---|---|---|---|---|"]
    for label, row in report["throughput"].items():
        c, lat = row["cpu_ms_per_completion"], row["latency"]
        lines.append(f"| {label} | {row['completions']} | {row['wall_s']:.2f} | **{row['per_s']:.0f}** "
                     f"| {lat['median']:.1f} / {lat['p99']:.1f} "
                     f"| {c['hub']:.2f} / {c['model']:.2f} / {c['mcp_child']:.2f} / {c['bench']:.2f} / {c['other']:.2f} "
                     f"| {row['cpu_share_of_one_core']['hub']:.2f} / {row['machine_busy_cores']:.2f} "
                     f"| {row['cpu_ceiling_per_s']:.0f} |")
    v = report["verdict"]
    lines += ["", "#### Targets", "",
              f"* overhead p50 ≤ {OVERHEAD_P50_TARGET_MS:g} ms: {'PASS' if v['overhead_p50_ok'] else 'FAIL'} "
              f"({v['overhead_p50_ms']:.2f} ms)",
              f"* overhead p99 ≤ {OVERHEAD_P99_TARGET_MS:g} ms: {'PASS' if v['overhead_p99_ok'] else 'FAIL'} "
              f"({v['overhead_p99_ms']:.2f} ms)",
              f"* ≥ {THROUGHPUT_TARGET:g} completions/s at {m['clients']} clients: "
              f"{'PASS' if v['throughput_ok'] else 'FAIL'} ({v['throughput_per_s']:.0f}/s)"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--completions", type=int, default=500, help="timed sequential completions (default 500)")
    parser.add_argument("--block", type=int, default=10, help="calls per interleaved block (default 10)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed warm-up calls per variant (default 30)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients for throughput (default 32)")
    parser.add_argument("--count", type=int, default=2000, help="completions per throughput variant (default 2000)")
    parser.add_argument("--no-stream", action="store_true", help="skip the streaming throughput variant")
    parser.add_argument("--loadgen", choices=("raw", "httpx2"), default="raw",
                        help="throughput clients: minimal keep-alive HTTP/1.1 (default) or one pooled httpx2 client")
    parser.add_argument("--hub-launcher", type=Path,
                        help="run this script instead of `-m mcp_hub` (same arguments): to try patches on the hub")
    parser.add_argument("--hub-env", action="append", default=[], type=lambda text: tuple(text.split("=", 1)),
                        metavar="NAME=VALUE", help="a setting for the hub, e.g. MCP_HUB_AUDIT_ENABLED=false (repeatable)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (the path is in the JSON)")
    run_main(parser, run, markdown, budget=300.0)


if __name__ == "__main__":
    main()
