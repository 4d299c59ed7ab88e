"""Benchmark: what the audit trail adds per tool call, at 32 concurrent completions.

One run starts the scripted model (zero latency; turn 1 calls `echo`, turn 2 answers) and
three real hubs (`python -m mcp_hub serve`), identical but for the audit trail:
`off` (`MCP_HUB_AUDIT_ENABLED=false`), `sqlite` (the default: a WAL file in the data
folder) and `postgresql` (`MCP_HUB_DATABASE_URL` on 127.0.0.1:5432, a schema of its own,
dropped afterwards). Every completion makes exactly one MCP tool call, so one audit record.

It then runs rounds: in each, every hub in turn (the order rotates) serves `--per-round`
completions from `--clients` concurrent clients, each on its own keep-alive connection.
Time per completion = the block's wall time / completions. The ratio audit / off is taken
per round (both blocks ran back to back) and its median over rounds is the figure checked
against the target (≤ 1.05). At the end each audited hub's chain is verified over its API
and must hold every completion's record.

Usage: `.venv/bin/python bench/bench_audit.py [--rounds N] [--per-round N] [--json out.json]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psutil
from rig import (  # bench/ is on sys.path when run as a script
    API_KEY,
    MODEL_SERVER,
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

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
TARGET = 1.05


def log(message: str, since: float) -> None:
    print(f"[{time.perf_counter() - since:6.1f}s] {message}", file=sys.stderr, flush=True)


def workers(hub_url: str, clients: int) -> list[Callable[[], Awaitable[None]]]:
    url = httpx2.URL(f"{hub_url}/v1/chat/completions")
    payload = RawConnection.encode(url.path, f"{url.host}:{url.port}", json.dumps(completion_body()).encode())
    out: list[Callable[[], Awaitable[None]]] = []
    for _ in range(clients):
        connection = RawConnection(url.host, url.port or 80)

        async def call(connection: RawConnection = connection) -> None:
            status, body = await connection.request(payload)
            if status != 200 or b'"turns_consumed":2' not in body:
                raise RuntimeError(f"hub completion failed ({status}): {body[-500:]!r}")

        out.append(call)
    return out


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds (user + system) of each live process in `procs`, by pid."""
    out = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[proc.pid] = times.user + times.system
    return out


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent in between by the processes alive at both samples."""
    return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())


def audit_writers(hub_pid: int) -> list[psutil.Process]:
    """The hub's audit writer process (none when auditing is off)."""
    return [p for p in psutil.Process(hub_pid).children() if "mcp_hub.audit.child" in " ".join(p.cmdline())]


def postgres_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if (p.info.get("name") or "").startswith("postgres")]


async def block(fns: list[Callable[[], Awaitable[None]]], count: int) -> tuple[float, list[float]]:
    """`count` completions from the workers in `fns`; the wall seconds and each latency (ms)."""
    remaining = count
    latencies: list[float] = []

    async def worker(fn: Callable[[], Awaitable[None]]) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter_ns()
            await fn()
            latencies.append((time.perf_counter_ns() - t0) / 1e6)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for fn in fns:
            tg.start_soon(worker, fn)
    return time.perf_counter() - started, latencies


def postgres_schema() -> tuple[str, Callable[[], None]] | None:
    """A URL whose tables go to a fresh schema, and its cleanup; None when PostgreSQL is not there."""
    try:
        import psycopg

        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure means: no PostgreSQL variant
        print(f"PostgreSQL at {POSTGRES} unreachable ({type(exc).__name__}): skipping that variant", file=sys.stderr)
        return None
    schema = f"bench_{uuid.uuid4().hex}"
    admin.execute(f"CREATE SCHEMA {schema}")

    def drop() -> None:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()

    return f"{POSTGRES}?options=-csearch_path%3D{schema}", drop


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mcp-hub-bench-audit-"))
    phase = time.perf_counter()
    report: dict[str, Any] = {"meta": {
        "python": platform.python_version(), "mcp": package_version("mcp"), "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "clients": args.clients, "rounds": args.rounds,
        "per_round": args.per_round, "commit_delay": args.commit_delay, "loadavg_at_start": os.getloadavg()}}
    write_registry(tmp / "registry.yaml")
    procs: list[subprocess.Popen[bytes]] = []
    cleanup: list[Callable[[], None]] = []
    try:
        model_port = free_port()
        model_url = f"http://127.0.0.1:{model_port}"
        procs.append(spawn([sys.executable, str(MODEL_SERVER), "--port", str(model_port)], model_port, tmp / "model.log",
                           clean_env()))
        script = ScriptClient(model_url)
        script_model(script)
        tuning = {"MCP_HUB_AUDIT_COMMIT_DELAY": str(args.commit_delay)} if args.commit_delay is not None else {}
        variants: dict[str, dict[str, str]] = {"off": {"MCP_HUB_AUDIT_ENABLED": "false"}, "sqlite": tuning}
        pg = postgres_schema()
        if pg is not None:
            variants["postgresql"] = {"MCP_HUB_DATABASE_URL": pg[0], **tuning}
            cleanup.append(pg[1])
        hubs: dict[str, str] = {}
        hub_procs: dict[str, subprocess.Popen[bytes]] = {}
        for name, extra in variants.items():
            port = free_port()
            hub_procs[name] = spawn([sys.executable, "-m", "mcp_hub", "serve", "--registry", str(tmp / "registry.yaml"),
                                "--data-dir", str(tmp / f"data-{name}"), "--port", str(port), "--log-level", "warning"],
                               port, tmp / f"hub-{name}.log",
                               clean_env(OPENAI_BASE_URL=f"{model_url}/v1", OPENAI_API_KEY=API_KEY, **extra))
            procs.append(hub_procs[name])
            hubs[name] = f"http://127.0.0.1:{port}"
        log(f"hubs up: {', '.join(hubs)}", phase)
        fns = {name: workers(url, args.clients) for name, url in hubs.items()}
        with anyio.fail_after(args.budget):
            for name in hubs:  # spawns each hub's probe child, warms connections and caches
                await block(fns[name], args.warmup)
            reset_model(script)
            # CPU of each hub process (the event loop and its threads) and of every PostgreSQL process.
            hub_ps = {name: [psutil.Process(proc.pid)] for name, proc in hub_procs.items()}
            writer_ps = {name: audit_writers(proc.pid) for name, proc in hub_procs.items()}
            pg_ps = postgres_processes()
            cpu: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in hubs}  # hub, postgres, audit writer
            walls: dict[str, list[float]] = {name: [] for name in hubs}
            latencies: dict[str, list[float]] = {name: [] for name in hubs}
            names = list(hubs)
            for round_ in range(args.rounds):
                order = names[round_ % len(names):] + names[:round_ % len(names)]
                for name in order:
                    hub0, pg0, writer0 = cpu_seconds(hub_ps[name]), cpu_seconds(pg_ps), cpu_seconds(writer_ps[name])
                    wall, lat = await block(fns[name], args.per_round)
                    cpu[name][0] += spent(hub0, cpu_seconds(hub_ps[name]))
                    cpu[name][1] += spent(pg0, cpu_seconds(pg_ps))
                    cpu[name][2] += spent(writer0, cpu_seconds(writer_ps[name]))
                    walls[name].append(wall)
                    latencies[name] += lat
                reset_model(script)  # the model server keeps every request: forget them
                log(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
                    f"{n} {walls[n][-1] * 1000 / args.per_round:.2f} ms" for n in names), phase)
            async with httpx2.AsyncClient(timeout=60) as http:
                checks = {name: (await http.get(f"{url}/v1/audit/verify")).json()
                          for name, url in hubs.items() if name != "off"}
                metrics = {name: (await http.get(f"{url}/metrics")).text for name, url in hubs.items()}
    finally:
        for proc in reversed(procs):
            stop(proc)
        for drop in cleanup:
            drop()
        shutil.rmtree(tmp, ignore_errors=True)
    completions = args.warmup + args.rounds * args.per_round
    results: dict[str, Any] = {}
    for name in hubs:
        per = [wall * 1000 / args.per_round for wall in walls[name]]
        timed = args.rounds * args.per_round
        results[name] = {"ms_per_completion": sum(walls[name]) * 1000 / timed,
                         "ms_per_completion_rounds": per, "latency": summary(latencies[name]),
                         "hub_cpu_ms": cpu[name][0] * 1000 / timed, "postgres_cpu_ms": cpu[name][1] * 1000 / timed,
                         "writer_cpu_ms": cpu[name][2] * 1000 / timed,
                         "records_per_commit": records_per_commit(metrics[name])}
        if name != "off":
            ratios = [a / b for a, b in zip(walls[name], walls["off"], strict=True)]
            results[name] |= {"ratio_paired_median": statistics.median(ratios), "ratios": ratios,
                              "ratio_totals": sum(walls[name]) / sum(walls["off"]),
                              "verify": checks[name], "chain_ok": checks[name].get("ok") is True
                              and checks[name].get("records_checked") == completions}
    report["results"] = results
    report["meta"]["loadavg_at_end"] = os.getloadavg()
    report["meta"]["total_s"] = time.perf_counter() - phase
    return report


def records_per_commit(text: str) -> float | None:
    """Audit records / commits, from the hub's own metrics."""
    values = {}
    for line in text.splitlines():
        for metric in ("mcp_hub_audit_records_total", "mcp_hub_audit_commit_duration_seconds_count"):
            if line.startswith(metric + " "):
                values[metric] = float(line.split()[1])
    commits = values.get("mcp_hub_audit_commit_duration_seconds_count")
    return values["mcp_hub_audit_records_total"] / commits if commits else None


def markdown(report: dict[str, Any]) -> str:
    m, results = report["meta"], report["results"]
    off = results["off"]["ms_per_completion"]
    lines = [f"mcp-hub audit benchmark: Python {m['python']}, mcp {m['mcp']}, {m['cpus']} CPUs, {m['date']}, "
             f"{m['clients']} concurrent clients, {m['rounds']} rounds × {m['per_round']} completions per hub, "
             f"total {m['total_s']:.0f} s, load average {m['loadavg_at_start'][0]:.2f} → {m['loadavg_at_end'][0]:.2f}", "",
             "| audit | ms per completion (wall / count) | latency p50 / p99 ms | vs off: paired median, totals "
             "| added per tool call | CPU ms per completion: hub / audit writer process / PostgreSQL | records per commit "
             "| chain verified |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        lat = row["latency"]
        if name == "off":
            lines.append(f"| off | {row['ms_per_completion']:.3f} | {lat['median']:.1f} / {lat['p99']:.1f} | 1 | "
                         f"| {row['hub_cpu_ms']:.3f} / - / {row['postgres_cpu_ms']:.3f} | | |")
            continue
        added = row["ms_per_completion"] - off
        lines.append(f"| {name} | {row['ms_per_completion']:.3f} | {lat['median']:.1f} / {lat['p99']:.1f} "
                     f"| **{row['ratio_paired_median']:.3f}**, {row['ratio_totals']:.3f} | {added * 1000:+.0f} µs "
                     f"| {row['hub_cpu_ms']:.3f} / {row['writer_cpu_ms']:.3f} / {row['postgres_cpu_ms']:.3f} "
                     f"| {row['records_per_commit'] or 0:.2f} "
                     f"| {'yes' if row['chain_ok'] else 'NO'} ({row['verify'].get('records_checked')} records) |")
    lines += ["", "#### Target", ""]
    for name, row in results.items():
        if name != "off":
            ok = row["ratio_paired_median"] <= TARGET
            lines.append(f"* {name}: ≤ {TARGET:.2f} × the time per completion without auditing: "
                         f"{'PASS' if ok else 'FAIL'} ({row['ratio_paired_median']:.3f})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds; each runs every hub once (default 10)")
    parser.add_argument("--per-round", type=int, default=400, help="completions per hub per round (default 400)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed completions per hub first (default 200)")
    parser.add_argument("--commit-delay", type=float,
                        help="audit_commit_delay of the audited hubs (default: the hub's default)")
    run_main(parser, run, markdown, budget=600.0)


if __name__ == "__main__":
    main()
