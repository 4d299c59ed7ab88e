"""A deliberately hostile MCP server (stdio): each tool attacks the hub's machine and reports
what happened as text (`ok ...` or `error <errno name or exception>`), so a test can assert
the exact failure. Run only sandboxed, by tests/test_sandbox.py.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
import urllib.request

from mcp.server.mcpserver import MCPServer


def _failure(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"error {errno.errorcode.get(exc.errno, exc.errno)}"
    return f"error {type(exc).__name__}"


def build_server() -> MCPServer:
    server = MCPServer("hostile", version="1.0.0")

    @server.tool()
    def read(path: str) -> str:
        """Read a file (the hub's keyring, records database, another session's folder, ...)."""
        try:
            with open(path, "rb") as file:
                return f"ok {len(file.read())} bytes"
        except BaseException as exc:
            return _failure(exc)

    @server.tool()
    def listdir(path: str) -> str:
        """List a folder."""
        try:
            return f"ok {sorted(os.listdir(path))}"
        except BaseException as exc:
            return _failure(exc)

    @server.tool()
    def write(path: str) -> str:
        """Create a file."""
        try:
            with open(path, "w") as file:
                file.write("pwned")
            return "ok"
        except BaseException as exc:
            return _failure(exc)

    @server.tool()
    def connect(host: str, port: int) -> str:
        """Open a TCP connection (PostgreSQL, Redis, the hub, a private or metadata address)."""
        try:
            with socket.create_connection((host, port), timeout=2):
                return "ok connected"
        except BaseException as exc:
            return _failure(exc)

    @server.tool()
    def fetch(url: str) -> str:
        """GET a URL through whatever proxy the environment names; the status or the failure."""
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return f"ok {response.status} {response.read(200).decode('utf-8', 'replace')}"
        except urllib.error.HTTPError as exc:
            return f"http {exc.code}"
        except BaseException as exc:
            return _failure(exc)

    @server.tool()
    def env(name: str) -> str:
        """One environment variable ('' when unset)."""
        return os.environ.get(name, "")

    @server.tool()
    def fork_bomb() -> str:
        """Fork sleeping children until the kernel refuses; how many and how it refused."""
        children = []
        try:
            for _ in range(100_000):
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                children.append(pid)
            return f"ok {len(children)} forks"
        except BaseException as exc:
            return f"{_failure(exc)} after {len(children)}"
        finally:
            for pid in children:
                os.kill(pid, 9)
                os.waitpid(pid, 0)

    @server.tool()
    def allocate(mb: int) -> str:
        """Allocate (and touch) `mb` MiB."""
        try:
            block = bytearray(mb * 1024 * 1024)
            return f"ok {len(block)}"
        except BaseException as exc:
            return _failure(exc)

    @server.tool()
    def fill(folder: str, files: int, mb: int) -> str:
        """Write `files` files of `mb` MiB each into `folder`."""
        written = 0
        try:
            for index in range(files):
                with open(os.path.join(folder, f"fill-{index}"), "wb") as file:
                    for _ in range(mb):
                        file.write(b"x" * 1024 * 1024)
                        written += 1
            return f"ok {written} MiB"
        except BaseException as exc:
            return f"{_failure(exc)} after {written} MiB"

    @server.tool()
    def flood(mb: int) -> str:
        """Write `mb` MiB to stderr without a newline."""
        chunk = "A" * 65536
        for _ in range(mb * 16):
            sys.stderr.write(chunk)
        sys.stderr.flush()
        return "ok"

    @server.tool()
    def open_many() -> str:
        """Open /dev/null until the kernel refuses; how many and how it refused."""
        files = []
        try:
            for _ in range(100_000):
                files.append(open(os.devnull))  # noqa: SIM115 (closed below)
            return f"ok {len(files)} files"
        except BaseException as exc:
            return f"{_failure(exc)} after {len(files)}"
        finally:
            for file in files:
                file.close()

    @server.tool()
    def spin(seconds: float) -> str:
        """Burn CPU for up to `seconds` of wall time (past an RLIMIT_CPU, the kernel kills it first)."""
        end = time.monotonic() + seconds
        count = 0
        while time.monotonic() < end:
            count += 1
        return f"ok {count}"

    @server.tool()
    def whoami() -> str:
        """uid, gid and pid as seen inside."""
        return f"{os.getuid()} {os.getgid()} {os.getpid()}"

    return server


if __name__ == "__main__":
    build_server().run("stdio")
