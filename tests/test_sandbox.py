"""Hosted servers run sandboxed: a hostile server (tests/hostile_server.py) attacks the hub's machine
from inside, every attempt fails with the specific error, and the hub stays healthy."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from mcp_hub.credentials import Credential
from mcp_hub.errors import SandboxUnavailable
from mcp_hub.executor import ToolCall
from mcp_hub.hub import Hub
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import ROOT, asgi_client, free_port

HOSTILE = ROOT / "tests" / "hostile_server.py"
SERVER = "test/hostile"
LIMITS = {"memory_mb": 256, "processes": 32, "disk_mb": 4, "file_size_mb": 2, "stderr_kb": 64, "open_files": 64}
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bubblewrap is Linux-only")


def hostile_entry(limits: dict[str, int] = LIMITS, **version: Any) -> dict[str, Any]:
    return {"limits": limits, "connections": {"hostile": {"fields": ["token"], "env": {"HOSTILE_TOKEN": "{token}"},
                                                          "required": False}},
            "versions": {"1.0.0": {"command": ["{python}", str(HOSTILE)], **version}}}


@pytest.fixture
def registry() -> Registry:
    return Registry.from_data({"servers": {SERVER: hostile_entry(), "test/online": hostile_entry(network="egress"),
                                            "test/cpu": hostile_entry(LIMITS | {"cpu_seconds": 2})}},
                              root=ROOT)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(data_dir=tmp_path / "data", connect_timeout=20, restart_backoff=0.05, egress_allow=[])


@pytest.fixture
async def running(settings: Settings, registry: Registry) -> AsyncIterator[tuple[httpx2.AsyncClient, Hub]]:
    os.environ["MCP_HUB_DATABASE_URL"] = "postgresql://postgres:hunter2@127.0.0.1/x"  # the hub's environment
    try:
        async with asgi_client(settings, registry) as pair:
            yield pair
    finally:
        del os.environ["MCP_HUB_DATABASE_URL"]


async def attack(hub: Hub, tool: str, server: str = SERVER, token: str | None = None, **args: Any) -> str:
    credentials = [Credential(connection_name="hostile", values={"token": token})] if token else []
    servers = hub.open_servers(server, credentials=credentials)
    name = next(iter(servers.sessions), None) or next(iter(servers.errors))
    batch = await hub.execute([ToolCall(name, tool, args)], servers)
    result = batch.results[0]
    assert not result.is_error, result.result
    return str(result.result["result"])


async def healthy(client: httpx2.AsyncClient, hub: Hub) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await attack(hub, "env", name="HOME")) == "/home/sandbox"


async def test_hub_files_are_out_of_sight(running: tuple[httpx2.AsyncClient, Hub], settings: Settings) -> None:
    client, hub = running
    data = settings.data_dir.resolve()
    await attack(hub, "whoami", token="other-tenant-secret")  # another session's folder exists now
    others = list((data / "sandboxes").iterdir())
    assert others and (data / "records.sqlite3").exists() and (data / "encryption-keys").exists()
    for path in [data / "records.sqlite3", data / "encryption-keys" / "x", *(other / "x" for other in others)]:
        assert await attack(hub, "read", path=str(path)) == "error ENOENT", path
    assert await attack(hub, "listdir", path=str(data / "encryption-keys")) == "error ENOENT"
    assert await attack(hub, "read", path=f"/proc/{os.getpid()}/environ") == "error ENOENT"
    assert await attack(hub, "read", path="/root/.bash_history") in ("error ENOENT", "error EACCES")
    own = await attack(hub, "env", name="MCP_HUB_DATA_DIR")
    assert Path(own).parent == data / "sandboxes" and Path(own) not in others
    assert {Path(own).stat().st_mode & 0o777, (data / "sandboxes").stat().st_mode & 0o777} == {0o700}
    assert await attack(hub, "write", path=f"{own}/mine") == "ok"
    for outside in [str(ROOT / "pwned"), "/usr/pwned", str(data / "pwned"), "/etc/pwned"]:
        assert await attack(hub, "write", path=outside) in ("error EROFS", "error EACCES"), outside
    assert not (ROOT / "pwned").exists()
    uid, _, pid = (await attack(hub, "whoami")).split()
    assert (uid, int(pid) < 10) == ("65534", True)  # an unprivileged user, in a PID namespace of its own
    await healthy(client, hub)


async def test_no_network_and_no_hub_environment(running: tuple[httpx2.AsyncClient, Hub]) -> None:
    client, hub = running
    hub_port = free_port()
    with socket.create_server(("127.0.0.1", hub_port)):  # stands in for the hub's own listening port
        for host, port in [("127.0.0.1", 5432), ("127.0.0.1", 6379), ("127.0.0.1", hub_port)]:
            assert await attack(hub, "connect", host=host, port=port) == "error ECONNREFUSED"
    for host in ["10.0.0.1", "169.254.169.254"]:
        assert await attack(hub, "connect", host=host, port=80) == "error ENETUNREACH"
    assert await attack(hub, "env", name="MCP_HUB_DATABASE_URL") == ""
    os.environ["OPENAI_API_KEY"] = "sk-hub-secret"
    try:
        assert await attack(hub, "env", name="OPENAI_API_KEY", token="fresh-session") == ""
    finally:
        del os.environ["OPENAI_API_KEY"]
    assert await attack(hub, "env", name="PATH") != os.environ["PATH"]
    await healthy(client, hub)


async def test_limits_hold(running: tuple[httpx2.AsyncClient, Hub], settings: Settings) -> None:
    client, hub = running
    forks = await attack(hub, "fork_bomb")
    assert forks.startswith("error EAGAIN after") and int(forks.split()[-1]) < LIMITS["processes"]
    files = await attack(hub, "open_many")
    assert files.startswith("error EMFILE after") and int(files.split()[-1]) < LIMITS["open_files"]
    assert await attack(hub, "allocate", mb=512) == "error MemoryError"
    assert await attack(hub, "allocate", mb=16) == "ok 16777216"
    tmp = await attack(hub, "fill", folder="/tmp", files=1, mb=3)
    assert tmp == "error EFBIG after 2 MiB"  # one file past file_size_mb
    tmp = await attack(hub, "fill", folder="/tmp", files=4, mb=2)
    assert tmp.startswith("error ENOSPC after")  # /tmp is a tmpfs of disk_mb
    await attack(hub, "flood", mb=2)
    logs = list((settings.data_dir / "logs").glob("test_hostile*"))
    assert logs and all(log.stat().st_size <= LIMITS["stderr_kb"] * 1024 for log in logs)
    assert any(log.name.endswith(".1") for log in logs)  # rotated
    await healthy(client, hub)


async def test_cpu_time_limit_kills_a_spinning_child(running: tuple[httpx2.AsyncClient, Hub]) -> None:
    client, hub = running
    assert await attack(hub, "write", server="test/cpu", path="/tmp/marker") == "ok"  # in this child's own /tmp
    servers = hub.open_servers("test/cpu")
    batch = await hub.execute([ToolCall("test/cpu", "spin", {"seconds": 60})], servers)
    result = batch.results[0]
    assert result.is_error, result.result  # killed at 2 CPU seconds (SIGXCPU), long before 60 s of spinning
    assert result.result["error"]["code"] == "session_lost" and "went away during the call" in \
        result.result["error"]["message"]
    deadline = anyio.current_time() + 20
    while True:  # the next call gets a fresh child: a new private /tmp, without the marker
        servers = hub.open_servers("test/cpu")
        batch = await hub.execute([ToolCall("test/cpu", "read", {"path": "/tmp/marker"})], servers)
        if not batch.results[0].is_error:
            break
        assert anyio.current_time() < deadline, batch.results[0].result
        await anyio.sleep(0.1)
    assert batch.results[0].result["result"] == "error ENOENT"
    await healthy(client, hub)


async def test_data_folder_quota_stops_the_server(running: tuple[httpx2.AsyncClient, Hub]) -> None:
    client, hub = running
    own = await attack(hub, "env", name="MCP_HUB_DATA_DIR", token="filler-secret-71")
    await attack(hub, "fill", folder=own, token="filler-secret-71", files=3, mb=2)  # may be stopped part-way
    assert sum(path.stat().st_size for path in Path(own).iterdir()) > LIMITS["disk_mb"] * 1024 * 1024
    credentials = [Credential(connection_name="hostile", values={"token": "filler-secret-71"})]
    deadline = anyio.current_time() + 20
    while True:  # the hub checks about once a second: the server is stopped and not started again
        servers = hub.open_servers(SERVER, credentials=credentials)
        batch = await hub.execute([ToolCall(SERVER, "whoami", {})], servers)
        if batch.results[0].is_error and "over its 4 MiB quota" in str(batch.results[0].result):
            break
        assert anyio.current_time() < deadline, batch.results[0].result
        await anyio.sleep(0.1)
    await healthy(client, hub)  # other sessions are unaffected


class _Origin(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello from the origin")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def test_egress_goes_through_the_hubs_proxy_only(tmp_path: Path, registry: Registry, origin: int) -> None:
    settings = Settings.load(data_dir=tmp_path / "data", connect_timeout=20, egress_allow=["127.0.0.1/32"])
    async with asgi_client(settings, registry) as (client, hub):
        assert await attack(hub, "fetch", server="test/online", url=f"http://127.0.0.1:{origin}/") == \
            "ok 200 hello from the origin"
        assert await attack(hub, "connect", server="test/online", host="127.0.0.1", port=origin) == "error ECONNREFUSED"
    closed = Settings.load(data_dir=tmp_path / "data2", connect_timeout=20, egress_allow=[])
    async with asgi_client(closed, registry) as (client, hub):
        for port in [5432, 6379, origin]:
            assert await attack(hub, "fetch", server="test/online", url=f"http://127.0.0.1:{port}/") == "http 403"
        assert (await client.get("/healthz")).status_code == 200


def _egress_folders() -> set[Path]:
    """The host folders of the egress sockets bound into the running sandboxes (from bwrap's argv)."""
    import psutil

    found: set[Path] = set()
    for process in psutil.Process().children(recursive=True):
        try:
            argv = process.cmdline()
        except psutil.NoSuchProcess:
            continue
        found |= {Path(argv[i - 1]).parent for i, arg in enumerate(argv)
                  if arg == "/run/mcp-hub/egress.sock" and argv[i - 2] == "--ro-bind"}
    return found


async def test_a_long_data_paths_socket_folder_goes_with_its_session(tmp_path: Path, registry: Registry,
                                                                      origin: int) -> None:
    data = tmp_path / "a-data-folder-whose-path-is-too-long-for-a-unix-socket"
    assert len(str(data / "run")) > 60
    settings = Settings.load(data_dir=data, connect_timeout=20, egress_allow=["127.0.0.1/32"])
    async with asgi_client(settings, registry) as (_, hub):
        for token in ("closed-with-its-session", "closed-with-the-hub"):
            assert await attack(hub, "fetch", server="test/online", token=token,
                                url=f"http://127.0.0.1:{origin}/") == "ok 200 hello from the origin"
            [folder] = _egress_folders()
            assert folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith("mcp-hub-")
            if token == "closed-with-its-session":
                for session in hub.pool.reap(0):
                    await session.finished.wait()
                deadline = anyio.current_time() + 15
                while folder.exists():
                    assert anyio.current_time() < deadline, list(folder.iterdir())
                    await anyio.sleep(0.05)
    assert not folder.exists()  # the hub's exit closed the second session and removed its folder
    assert not (data / "run").exists()


async def test_missing_bubblewrap_is_a_coded_error(tmp_path: Path, registry: Registry) -> None:
    settings = Settings.load(data_dir=tmp_path / "data", sandbox_bwrap="/nonexistent/bwrap")
    async with asgi_client(settings, registry) as (_, hub):
        servers = hub.open_servers(SERVER)
        batch = await hub.execute([ToolCall(SERVER, "whoami", {})], servers)
        assert batch.results[0].is_error and batch.results[0].error_code == "sandbox_unavailable"
        errors = hub.open_servers(SERVER).errors or {}
        session = servers.sessions[SERVER]
        with pytest.raises(SandboxUnavailable) as raised:
            await session.client(5)
        assert raised.value.code == "sandbox_unavailable"
        assert "apt-get install bubblewrap" in raised.value.recommendation
        assert not errors or all(e.code == "sandbox_unavailable" for e in errors.values())


def test_the_readmes_sandbox_example_validates() -> None:
    import yaml

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    example = text.split("**Sandbox.**", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    registry = Registry.from_data(yaml.safe_load(example))
    fetcher, legacy = registry.get("acme/fetcher"), registry.get("acme/legacy-tool")
    assert fetcher is not None and legacy is not None
    assert fetcher.versions["1.0.0"].network == "egress" and fetcher.limits.memory_mb == 512 and not legacy.sandbox


def test_published_limits_only_lower_the_defaults() -> None:
    from mcp_hub.sandbox import SandboxLimits

    defaults = SandboxLimits(memory_mb=1024, processes=128)
    assert defaults.within({"memory_mb": 4096, "processes": 16}, may_raise=False) == \
        SandboxLimits(memory_mb=1024, processes=16)
    assert defaults.within({"memory_mb": 4096, "processes": None}, may_raise=True).memory_mb == 4096


def test_a_publisher_cannot_opt_out_and_its_entries_are_marked_published() -> None:
    from pydantic import ValidationError

    from mcp_hub.registration_store import build_entry
    from mcp_hub.registrations import RegistrationBody

    version = {"version": "1.0.0", "command": ["x"], "network": "egress"}
    with pytest.raises(ValidationError):
        RegistrationBody.model_validate({"slug": "a/b", "sandbox": False, "version": version})
    body = RegistrationBody.model_validate({"slug": "a/b", "limits": {"memory_mb": 99999}, "version": version})
    entry = build_entry(body.slug, "", [], {}, body.limits, {"1.0.0": body.version.spec()})
    assert entry.sandbox and entry.published and entry.versions["1.0.0"].network == "egress"


async def test_reaping_and_tenants(running: tuple[httpx2.AsyncClient, Hub]) -> None:
    import psutil

    _, hub = running
    first = await attack(hub, "env", name="MCP_HUB_DATA_DIR")
    servers = hub.open_servers(SERVER, tenant="acme")
    batch = await hub.execute([ToolCall(SERVER, "env", {"name": "MCP_HUB_DATA_DIR"})], servers)
    assert batch.results[0].result["result"] != first  # two tenants never share a writable folder
    sandboxed = [p for p in psutil.Process().children(recursive=True) if "hostile_server.py" in " ".join(p.cmdline())]
    assert sandboxed
    for session in hub.pool.reap(0):
        await session.finished.wait()
    deadline = anyio.current_time() + 15
    while alive := [p for p in sandboxed if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
        assert anyio.current_time() < deadline, alive  # bwrap and the server alike
        await anyio.sleep(0.05)


def test_paths_a_caller_names_inside_the_hidden_data_folder_are_shown(tmp_path: Path) -> None:
    from mcp_hub.sandbox import Sandbox, SandboxLimits

    data = tmp_path / "data"
    package, secret = data / "packages" / "npm" / "pkg", data / "encryption-keys"
    for folder in (package, secret):
        folder.mkdir(parents=True)
    (package / "index.txt").write_text("package\n")
    (secret / "key.pem").write_text("secret")
    for folder in (tmp_path, data, data / "packages", data / "packages" / "npm", package):
        folder.chmod(0o755)  # readable by the sandbox's user
    argv = Sandbox(hidden=[data]).command(
        ["/bin/sh", "-c", f"cat {package}/index.txt; cat {secret}/key.pem 2>/dev/null || echo hidden"],
        env={}, cwd=str(tmp_path), readonly=[tmp_path, package], limits=SandboxLimits())
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["package", "hidden"], done.stderr


async def test_hub_notes_persist_in_the_sessions_folder_across_hub_restarts(tmp_path: Path) -> None:
    registry = Registry.from_file(ROOT / "registry.yaml")
    settings = Settings.load(data_dir=tmp_path / "data", connect_timeout=20)
    notes = [Credential(connection_name="notes", values={"token": "persisting-token-5"})]
    for tool, args in [("add_note", {"title": "kept", "body": "across restarts"}), ("list_notes", {})]:
        async with asgi_client(settings, registry) as (_, hub):
            batch = await hub.execute([ToolCall("hub/notes", tool, args)], hub.open_servers("hub/notes", notes))
            assert not batch.results[0].is_error, batch.results[0].result
    assert "kept" in str(batch.results[0].result)
    [database] = (tmp_path / "data" / "sandboxes").glob("*/notes.sqlite3")
    assert not (tmp_path / "data" / "notes.sqlite3").exists() and database.stat().st_size > 0


def test_only_the_hubs_ca_variables_name_files_to_show(tmp_path: Path) -> None:
    from mcp_hub.sandbox import Sandbox, SandboxLimits

    outside = tmp_path / "outside"
    outside.mkdir()
    ca, config = outside / "ca.pem", outside / "hub.yaml"  # a CA bundle, and a file no sandbox may see
    ca.write_text("ca\n")
    config.write_text("api_key: sk-secret\n")
    for path in (tmp_path, outside, ca, config):
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the sandbox's user, were it shown
    argv = Sandbox().command(
        ["/bin/sh", "-c", f"cat {ca}; cat {config} 2>/dev/null || echo hidden"],
        env={"NODE_EXTRA_CA_CERTS": str(ca), "EVIL_CA_BUNDLE": str(config), "EVIL_CERT_FILE": str(config)},
        cwd=None, limits=SandboxLimits())
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["ca", "hidden"], done.stderr


async def test_ca_settings_reach_only_servers_with_network(tmp_path: Path, registry: Registry) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("ca\n")
    settings = Settings.load(data_dir=tmp_path / "data", connect_timeout=20, egress_allow=[],
                             sandbox_base_env={"NODE_EXTRA_CA_CERTS": str(ca), "SSL_CERT_FILE": str(ca), "TZ": "UTC"})
    async with asgi_client(settings, registry) as (_, hub):
        # No network, nothing to trust: Node 20 would parse its whole root store at each start for nothing.
        for name, offline, online in [("NODE_EXTRA_CA_CERTS", "", str(ca)), ("SSL_CERT_FILE", "", str(ca)),
                                      ("TZ", "UTC", "UTC")]:
            assert await attack(hub, "env", name=name) == offline
            assert await attack(hub, "env", server="test/online", name=name) == online
        assert await attack(hub, "read", server="test/online", path=str(ca)) == "ok 3 bytes"


async def test_notes_of_the_pre_sandbox_shared_database_move_to_their_session(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from mcp_hub.cli import main
    from mcp_hub_servers.notes.store import NotesStore, owner_id

    data = tmp_path / "data"
    NotesStore(data / "notes.sqlite3", owner_id("old-token-3")).add("from before", "the sandbox", ["kept"])
    NotesStore(data / "notes.sqlite3", owner_id("someone-else")).add("not mine", "x", [])
    flags = ["--data-dir", str(data), "--registry", str(ROOT / "registry.yaml"), "--cred", "notes:token=old-token-3"]
    for copied in (1, 0):  # once only: a second run copies nothing twice
        assert main(["notes", "import-shared", *flags]) == 0
        assert f"imported {copied} note(s)" in capsys.readouterr().out
    settings = Settings.load(data_dir=data, connect_timeout=20)
    notes = [Credential(connection_name="notes", values={"token": "old-token-3"})]
    async with asgi_client(settings, Registry.from_file(ROOT / "registry.yaml")) as (_, hub):
        calls = [ToolCall("hub/notes", "list_notes", {}), ToolCall("hub/notes", "add_note", {"title": "new", "body": "b"})]
        batch = await hub.execute(calls, hub.open_servers("hub/notes", notes))
    assert not any(result.is_error for result in batch.results), batch.results
    listed = str(batch.results[0].result)
    assert "from before" in listed and "kept" in listed and "not mine" not in listed
    assert main(["notes", "import-shared", *flags[:4], "--cred", "notes:token=x", "--from", str(tmp_path / "no")]) == 2
    assert "no shared notes database" in capsys.readouterr().err
