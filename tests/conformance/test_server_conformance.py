"""The official MCP conformance suite (server mode, suite `all`) against the hub's MCP gateway.

The conformance fixture server (tests/fixtures/everything_server.py) is hosted by a real hub
(uvicorn on a free port) over stdio and re-exposed at `/mcp/test/everything`; the runner
connects there as an MCP client. So every scenario crosses the gateway, the pooled session
and the upstream server: content types, errors, logs, progress, sampling and elicitation
requests travelling back to the runner, resources, prompts, completions, and the gateway's
own Host/Origin checks. Scenarios a proxy cannot pass are in `expected-failures.yml`
(`server:`), each with its reason; every other scenario must pass without warnings.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from ..conftest import ROOT
from ..hub_server import HubServer
from ..interop.node_packages import node_package_file

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "expected-failures.yml"
EVERYTHING = ROOT / "tests" / "fixtures" / "everything_server.py"
RUN_TIMEOUT = 240
_TIMESTAMP = re.compile(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


def everything_registry() -> Registry:
    return Registry.from_data({"servers": {"test/everything": {
        "description": "The conformance suite's Everything Server", "tags": ["test"],
        "versions": {"1.0.0": {"command": ["{python}", str(EVERYTHING)]}}}}}, root=ROOT)


def _results(output: Path) -> dict[str, list[dict[str, Any]]]:
    found = {}
    for checks in output.rglob("checks.json"):
        scenario = _TIMESTAMP.sub("", checks.parent.relative_to(output).as_posix()).removeprefix("server-")
        found[scenario] = json.loads(checks.read_text(encoding="utf-8"))
    return found


def _problems(checks: list[dict[str, Any]]) -> list[str]:
    return [f"{c['id']}: {c['status']} {c.get('errorMessage') or ''}" for c in checks
            if c["status"] in ("FAILURE", "WARNING")]


def test_server_suite_through_the_gateway(tmp_path: Path) -> None:
    runner = node_package_file("@modelcontextprotocol", "conformance", "dist", "index.js")
    output = tmp_path / "results"
    settings = Settings.load(data_dir=tmp_path / "data", restart_backoff=0.05)
    with HubServer.serve(settings, everything_registry()) as hub:
        proc = subprocess.run(
            ["node", str(runner), "server", "--url", f"{hub.url}/mcp/test/everything", "--suite", "all",
             "--expected-failures", str(BASELINE), "--output-dir", str(output)],
            cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL,
        )
        # The tool calls were the gateway's: each one went through the hub's executor and pooled session.
        sessions = [s for s in hub.hub.pool.sessions() if s.target.name == "test/everything"]
        assert sessions and sessions[0].hosted
    log = f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-8000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    results = _results(output)
    assert len(results) >= 30, log  # 0.1.13 has 32 server scenarios
    baseline = set(yaml.safe_load(BASELINE.read_text(encoding="utf-8"))["server"])
    assert baseline <= set(results), f"baseline names scenarios the suite no longer has: {baseline - set(results)}"
    unexpected = {s: p for s, checks in results.items() if s not in baseline and (p := _problems(checks))}
    assert unexpected == {}, log
    stale = sorted(s for s in baseline if not any(c["status"] == "FAILURE" for c in results[s]))
    assert stale == [], f"now passing, remove from {BASELINE.name}: {stale}"
    # Scenarios that only pass when the back-channel crossed the proxy, checked by name.
    for scenario in ("tools-call-sampling", "tools-call-elicitation", "tools-call-with-progress",
                     "tools-call-with-logging", "elicitation-sep1330-enums", "json-schema-2020-12"):
        assert results[scenario] and all(c["status"] in ("SUCCESS", "INFO") for c in results[scenario]), \
            (scenario, results[scenario])
    assert proc.returncode == 0, log
