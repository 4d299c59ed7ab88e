"""The hub as a real process: hosted children survive crashes, and none outlive the hub."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psutil
import pytest
import yaml

from .conftest import free_port, probe_entry, spawn, stop


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"servers": {"test/probe": probe_entry(), "test/other": probe_entry()}}))
    return path


@pytest.fixture
def hub_process(tmp_path: Path, registry_file: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    args = [sys.executable, "-m", "mcp_hub", "serve", "--port", str(port), "--registry", str(registry_file),
            "--data-dir", str(tmp_path / "data"), "--log-level", "warning"]
    proc = spawn(args, port, tmp_path / "hub.log")
    yield proc, f"http://127.0.0.1:{port}"
    stop(proc)


def call(base: str, tool: str, server: str = "test/probe", **arguments: object) -> dict:
    response = httpx2.post(f"{base}/v1/tools/call", json={"server": server, "tool": tool, "arguments": arguments},
                           timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def descendants(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]


def gone(pids: list[int], timeout: float = 15.0) -> bool:
    _, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=timeout)
    return not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def servers(everyone: list[psutil.Process]) -> list[psutil.Process]:
    """The hosted servers themselves among the hub's descendants (not the sandbox's bwrap processes)."""
    return [p for p in everyone if "probe_server.py" in " ".join(p.cmdline()) and "bwrap" not in p.name()]


def test_killed_child_is_replaced_and_the_next_call_succeeds(hub_process: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, base = hub_process
    call(base, "pid")
    [first] = servers(descendants(proc.pid))  # sandboxed: the pid tool answers its PID namespace's number
    first.send_signal(signal.SIGKILL)
    second = call(base, "pid")
    assert second["is_error"] is False
    assert [p.pid for p in servers(descendants(proc.pid))] != [first.pid]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_the_hub_leaves_no_child_behind(hub_process: tuple[subprocess.Popen[bytes], str],
                                                 sig: signal.Signals) -> None:
    proc, base = hub_process
    call(base, "pid")
    call(base, "pid", server="test/other")
    everyone = descendants(proc.pid)
    writers = [p for p in everyone if "mcp_hub.audit.child" in p.cmdline()]
    assert len(writers) == 1  # the audit writer process
    assert len(servers(everyone)) == 2  # the two hosted servers (and their sandboxes' bwrap processes)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert gone([p.pid for p in everyone]), f"children outlived the hub after {sig.name}"


def test_invalid_registry_fails_at_start_up_naming_entry_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "registry.yaml"
    bad.write_text("servers:\n  acme/x:\n    versions:\n      1.0.0:\n        url: ftp://nowhere\n")
    result = subprocess.run([sys.executable, "-m", "mcp_hub", "serve", "--registry", str(bad), "--port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "servers['acme/x'].versions['1.0.0']" in result.stderr
    assert "`url` must start with http" in result.stderr
    assert "Traceback" not in result.stderr
