"""What the completions and audit benchmarks share: the processes they start (the scripted
model, hubs, the probe server), a minimal HTTP/1.1 load-generator client, and the scripted
completion (turn 1 calls the probe's `echo`, turn 2 answers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.scripted_model import ScriptClient, ToolThenAnswer  # noqa: E402

PROBE = ROOT / "tests" / "fixtures" / "probe_server.py"
MODEL_SERVER = ROOT / "tests" / "fixtures" / "scripted_model.py"
SLUG = "bench/probe"
TOOL = "echo"
TOOL_ARGS = {"text": "x" * 16}
MODEL = "openai/gpt-bench"
API_KEY = "sk-bench-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(args: list[str], port: int, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a server in its own process group; return once it accepts connections."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[1]} exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.02)
    stop(proc)
    raise RuntimeError(f"{args[1]} did not listen on {port} within 30 s; see {log}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the hub shuts its sessions down), then SIGKILL the group if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(5)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any hub or provider configuration, plus `extra`."""
    drop = ("MCP_HUB_", "OPENAI_", "ANTHROPIC_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)} | extra


def write_registry(path: Path) -> None:
    # JSON is YAML: no quoting surprises in the path.
    path.write_text(json.dumps({"servers": {SLUG: {"description": "benchmark probe", "versions": {
        "1.0.0": {"command": ["{python}", str(PROBE)]}}}}}, indent=2), encoding="utf-8")


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client: one connection, one request at a time, pre-encoded requests.

    The throughput phase's load generator. On 2 cores every process competes for CPU, and
    httpx2 spends 1-1.5 ms of CPU per completion request here (about what the model server
    spends per model call); this spends 0.15-0.25 ms, so the hub, the model server and the MCP
    child get the cores. `--loadgen httpx2` switches back.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @staticmethod
    def encode(path: str, host: str, body: bytes) -> bytes:
        head = (f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n")
        return head.encode() + body

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            reused = self._writer is not None
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            reader, writer = self._reader, self._writer
            assert reader is not None and writer is not None
            try:
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
                break
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                # The server closed an idle keep-alive connection (uvicorn: after 5 s): reconnect once.
                await self.aclose()
                if not reused or attempt == 2 or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                    raise
        assert reader is not None  # set in the loop, which only leaves by `break` with a connection
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(part[:-2] for part in parts)
        else:
            raise RuntimeError(f"response without a length: {head!r}")
        if headers.get("connection", "").lower() == "close":
            await self.aclose()
        return status, body

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None


def completion_body(stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Echo something, please."}],
                            "mcp_servers": [SLUG]}
    if stream:
        body["stream"] = True
    return body


def script_model(script: ScriptClient) -> None:
    script.script(tool_then_answer=ToolThenAnswer(tool=f"__{TOOL}", arguments=TOOL_ARGS, answer="The tool said: {result}"))


def reset_model(script: ScriptClient) -> None:
    """Forget the recorded requests (the server keeps every one), then script it again."""
    script.reset()
    script_model(script)
