"""Schemathesis fuzzes every endpoint of a running hub: no 5xx, no response that breaks its own schema."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import ROOT, free_port, probe_entry, spawn, stop
from .model_fixtures import SCRIPT, Reply, ScriptClient

MAX_EXAMPLES = os.environ.get("MCP_HUB_FUZZ_EXAMPLES", "60")
# Publishing runs what it is given (spawns a command, fetches and runs an npm/pypi package, dials a
# URL) to list its tools: random inputs would make the fuzzer install packages from the public
# registries. These three are tested with explicit bad inputs in tests/test_registrations.py.
PUBLISHING_EXCLUDED = [arg for op in ("registerServer", "importServerJson", "addServerVersion")
                       for arg in ("--exclude-operation-id", op)]


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    model_port, hub_port = free_port(), free_port()
    model = spawn([sys.executable, str(SCRIPT), "--port", str(model_port)], model_port, tmp_path / "model.log")
    try:
        ScriptClient(f"http://127.0.0.1:{model_port}").script(default=Reply.say("fuzzed"))
        registry = tmp_path / "registry.yaml"
        registry.write_text(yaml.safe_dump({"servers": {"test/probe": probe_entry()}}))
        upstream = f"http://127.0.0.1:{model_port}"
        env = {"OPENAI_BASE_URL": f"{upstream}/v1", "OPENAI_API_KEY": "sk-fuzz", "ANTHROPIC_BASE_URL": upstream,
               "ANTHROPIC_API_KEY": "sk-fuzz"}
        hub = spawn([sys.executable, "-m", "mcp_hub", "serve", "--port", str(hub_port), "--registry", str(registry),
                     "--data-dir", str(tmp_path / "data"), "--log-level", "warning"], hub_port, tmp_path / "hub.log",
                    env=env)
        try:
            schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
            result = subprocess.run(
                [schemathesis, "run", f"http://127.0.0.1:{hub_port}/openapi.json", "--checks", "all",
                 "--max-examples", MAX_EXAMPLES, "--request-timeout", "30", "--seed", "20261126",
                 "--no-color", *PUBLISHING_EXCLUDED],
                capture_output=True, text=True, timeout=600, cwd=tmp_path, stdin=subprocess.DEVNULL)
        finally:
            stop(hub)
        log = (tmp_path / "hub.log").read_text(errors="replace")
        assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
        assert "Traceback" not in log, log[-4000:]
        # A phase line reads "✅ 7 passed"; "0 passed" or no such line means nothing was exercised.
        assert re.search(r"\b[1-9][0-9]* passed", result.stdout), result.stdout[-8000:]
    finally:
        stop(model)


def test_openapi_document_names_every_route() -> None:
    from mcp_hub import openapi
    from mcp_hub.app import ROUTES

    document = openapi.document(["openai"])
    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    routed = {(route.path, method) for route in ROUTES for method in (route.methods or ()) if method != "HEAD"}
    # The MCP gateway speaks MCP (streamable HTTP), specified by the MCP spec, not this document.
    gateway = {("/mcp/{org}/{name}", method) for method in ("GET", "POST", "DELETE")}
    console = {("/console", "GET"), ("/console/", "GET"), ("/console/{file}", "GET")}  # static HTML, not API
    assert routed - {("/openapi.json", "GET")} - gateway - console == documented
    assert ROOT.name  # the checkout is importable
