"""The official MCP conformance suite (`core`, client mode) against the hub's upstream client.

The runner (`@modelcontextprotocol/conformance`, pinned in package.json) starts one
scenario server per scenario, runs `client.py` against each, and writes every
scenario's checks to `<output>/<scenario>-<timestamp>/checks.json`. Known gaps of the
hub are listed with reasons in `expected-failures.yml`; everything else must pass.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from ..interop.node_packages import node_package_file

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "client.py"
BASELINE = HERE / "expected-failures.yml"
RUN_TIMEOUT = 180  # seconds for the whole suite; scenarios run in parallel
CLIENT_TIMEOUT_MS = 60_000
# The one check that measures wall-clock time (a reconnect 450-700 ms after the stream
# closes). On a loaded CI box it can come out late (a WARNING, or a FAILURE past 1 s): tolerated.
# Reconnecting too early (ignoring the retry field) still fails.
TIMING_WARNINGS = {"client-sse-retry-timing"}
# Scenarios the hub must pass, and the checks that prove each was really performed.
REQUIRED = {
    "initialize": {"mcp-client-initialization"},
    "tools_call": {"tool-add-numbers"},
    "sse-retry": {"client-sse-graceful-reconnect", "client-sse-last-event-id", "client-sse-retry-timing"},
    "elicitation-sep1034-client-defaults": {f"client-elicitation-sep1034-{kind}-default"
                                            for kind in ("string", "integer", "number", "enum", "boolean")},
    # OAuth: the hub discovered, registered, authorized with PKCE, and then used the token.
    "auth/metadata-default": {"prm-pathbased-requested", "authorization-server-metadata", "client-registration",
                              "pkce-verifier-matches-challenge", "valid-bearer-token"},
    "auth/basic-cimd": {"cimd-client-id-used", "valid-bearer-token"},
    "auth/scope-step-up": {"scope-step-up-initial", "scope-step-up-escalation"},
    "auth/scope-retry-limit": {"scope-retry-limit"},
    "auth/token-endpoint-auth-post": {"token-endpoint-auth-method", "resource-parameter-consistency"},
    "auth/pre-registration": {"pre-registration-auth", "valid-bearer-token"},
    "auth/resource-mismatch": {"resource-mismatch-rejected"},
}
_TIMESTAMP = re.compile(r"-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


def _results(output: Path) -> dict[str, list[dict[str, Any]]]:
    """`{scenario: checks}` from the runner's output folder (`auth/...` scenarios nest one level)."""
    found = {}
    for checks in output.rglob("checks.json"):
        scenario = _TIMESTAMP.sub("", checks.parent.relative_to(output).as_posix())
        found[scenario] = json.loads(checks.read_text(encoding="utf-8"))
    return found


def _problems(checks: list[dict[str, Any]]) -> list[str]:
    return [f"{c['id']}: {c['status']} {c.get('errorMessage') or c.get('description', '')}" for c in checks
            if c["status"] in ("FAILURE", "WARNING") and not _late_only(c)]


def _late_only(check: dict[str, Any]) -> bool:
    """A reconnect that came late, not early: on a loaded machine that is the clock, not the client."""
    return check["id"] in TIMING_WARNINGS and (check["status"] == "WARNING" or "late" in (check.get("errorMessage") or ""))


def test_core_suite(tmp_path: Path) -> None:
    runner = node_package_file("@modelcontextprotocol", "conformance", "dist", "index.js")
    output = tmp_path / "results"
    # The runner splits --command on spaces; the paths of this checkout and its venv have none.
    command = f"{sys.executable} {CLIENT}"
    assert " " not in sys.executable and " " not in str(CLIENT)
    proc = subprocess.run(
        ["node", str(runner), "client", "--command", command, "--suite", "core", "--timeout", str(CLIENT_TIMEOUT_MS),
         "--expected-failures", str(BASELINE), "--output-dir", str(output)],
        cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL,
    )
    log = f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    announced = re.search(r"Running core suite \((\d+) scenarios\)", proc.stdout)
    assert announced, log
    results = _results(output)
    assert len(results) == int(announced.group(1)), log

    baseline = set(yaml.safe_load(BASELINE.read_text(encoding="utf-8"))["client"])
    assert baseline <= set(results), f"baseline names scenarios the suite no longer has: {baseline - set(results)}"
    unexpected = {s: p for s, checks in results.items() if s not in baseline and (p := _problems(checks))}
    assert unexpected == {}, log
    stale = sorted(s for s in baseline if not _problems(results[s]))
    assert stale == [], f"now passing, remove from {BASELINE.name}: {stale}"

    for scenario, required in REQUIRED.items():
        statuses = {c["id"]: c["status"] for c in results[scenario]}
        assert required <= statuses.keys(), (scenario, statuses)
        checks = {c["id"]: c for c in results[scenario]}
        assert all(statuses[check] in ("SUCCESS", "WARNING") or _late_only(checks[check]) for check in required), \
            (scenario, statuses)
    # It was the hub's Opener that connected (its clientInfo), speaking the latest handshake version.
    [init] = [c for c in results["initialize"] if c["id"] == "mcp-client-initialization"]
    assert (init["details"]["clientName"], init["details"]["protocolVersionSent"]) == ("mcp-hub", "2025-11-25")
    # The scenario marks any call of its tool a success; the arguments it saw are what client.py sent.
    [add] = [c for c in results["tools_call"] if c["id"] == "tool-add-numbers"]
    assert add["details"] == {"a": 5, "b": 3, "result": 8}

    timing_warned = any(c["status"] != "SUCCESS" and _late_only(c) for s in results.values() for c in s)
    # The runner applies the same baseline; it disagrees with us only over a tolerated timing warning.
    assert proc.returncode == 0 or timing_warned, log
    assert "Baseline check passed" in proc.stdout or timing_warned, log

