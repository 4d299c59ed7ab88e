"""Published npm/PyPI packages: validated names, installed once into the data folder, run from their own entry point.

The review's attack: package `arguments` such as `--call "sh -c id"` or `--node-options=...`
were options of `npx`, which ran them. Here the hub runs the installed bin with node, and the
arguments arrive in the server's own argv: a real server (the TypeScript SDK) reports them.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from pydantic import ValidationError

from mcp_hub.errors import PackageInstallFailed
from mcp_hub.hub import Hub
from mcp_hub.installer import MARKER, PackageStore, stderr_tail
from mcp_hub.packages import Package, from_runner_command
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import ROOT, asgi_client, probe_entry

ARGV_ECHO = ROOT / "tests" / "fixtures" / "argv_echo"
HOSTILE_ARGUMENTS = ["--call", "sh -c id", "--node-options=--require=/tmp/evil.js", "-p", "evil", "-e",
                     "process.exit(7)", "--package=evil", "-y", "{data_dir}"]


def _package(**fields: Any) -> Package:
    return Package.model_validate({"registry": "npm", "identifier": "argv-echo", "version": "1.0.0", **fields})


@pytest.mark.parametrize("fields", [
    {"identifier": "../../etc"}, {"identifier": "/etc/passwd"}, {"identifier": "a/../b"}, {"identifier": "@x/../y"},
    {"identifier": ".."}, {"identifier": "@scope/a/b"}, {"identifier": "ｅvil"}, {"identifier": "evil\n"},
    {"identifier": "e\u0301vil"}, {"identifier": "a\\b"}, {"version": "../1.0.0"}, {"version": "1.0.0/.."},
    {"version": "latest"}, {"version": "^1.0.0"}, {"version": "1.0.0\n"}, {"version": "１.0.0"},
    {"registry": "pypi", "identifier": "../x", "version": "1.0"}, {"registry": "pypi", "identifier": "x", "version": ".."},
    {"registry": "pypi", "identifier": "x", "version": "1.0; rm -rf /"}, {"registry": "pypi", "identifier": "x-",
                                                                          "version": "1.0"},
    {"arguments": ["ok", "nul\x00byte"]}, {"arguments": ["line\nbreak"]}, {"arguments": ["x"] * 65},
    {"arguments": ["x" * 5000]},
])
def test_package_names_versions_and_arguments_are_held_to_the_registries_rules(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _package(**fields)


def test_install_folders_come_from_validated_names_only(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "packages")
    scoped = _package(identifier="@modelcontextprotocol/server-everything", version="2026.8.31")
    assert store.folder(scoped) == tmp_path / "packages" / "npm" / "@modelcontextprotocol+server-everything@2026.8.31"
    pypi = Package(registry="pypi", identifier="Weather_MCP", version="0.5.0")
    assert store.folder(pypi) == tmp_path / "packages" / "pypi" / "weather-mcp@0.5.0"
    assert pypi.spec == "Weather_MCP==0.5.0" and scoped.spec == "@modelcontextprotocol/server-everything@2026.8.31"


def test_old_runner_commands_read_as_packages() -> None:
    npm = from_runner_command(["npx", "-y", "@scope/srv@1.2.3", "--call", "sh -c id"])
    assert npm == Package(registry="npm", identifier="@scope/srv", version="1.2.3", arguments=("--call", "sh -c id"))
    assert from_runner_command(["uvx", "weather-mcp==0.5.0", "--units", "metric"]) == Package(
        registry="pypi", identifier="weather-mcp", version="0.5.0", arguments=("--units", "metric"))
    assert from_runner_command(["npx", "-y", "../evil@1.0.0"]) is None
    assert from_runner_command(["python", "server.py"]) is None


def seed_argv_echo(store: PackageStore, bins: dict[str, str] | None = None) -> Path:
    """An install of the argv-echo fixture as npm would leave it (its dependencies copied from this checkout)."""
    folder = store.folder(_package())
    if not (ROOT / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        pytest.skip("needs `npm ci` (the TypeScript SDK)")
    shutil.copytree(ROOT / "node_modules", folder / "node_modules", symlinks=True)
    shutil.copytree(ARGV_ECHO, folder / "node_modules" / "argv-echo")
    (folder / "node_modules" / "argv-echo").chmod(0o777)  # only the mount can keep the server from writing here
    if bins is not None:
        manifest = json.loads((ARGV_ECHO / "package.json").read_text()) | {"bin": bins}
        (folder / "node_modules" / "argv-echo" / "package.json").write_text(json.dumps(manifest))
    return folder


class CountingStore(PackageStore):
    """A store whose installer only records that it ran (the argv-echo files are already in place)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.installs = 0
        self.release = anyio.Event()

    async def _install(self, package: Package, folder: Path, server: str) -> list[str]:
        self.installs += 1
        await self.release.wait()
        from mcp_hub.installer import _npm_bin

        entry = _npm_bin(package, folder, server)
        (folder / MARKER).write_text(json.dumps({"entry": str(entry)}))
        return self._entry_argv(package, folder, entry)


async def test_concurrent_sessions_install_a_package_once(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "packages")
    folder = seed_argv_echo(store)
    answers: list[list[str]] = []

    async def install() -> None:
        answers.append(await store.install(_package(arguments=["a"]), server="acme/echo"))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(install)
        with anyio.fail_after(5):
            while store.installs == 0:
                await anyio.sleep(0.01)
        store.release.set()
    assert store.installs == 1
    assert answers == [[shutil.which("node"), str(folder / "node_modules" / "argv-echo" / "index.js"), "a"]] * 5
    # A new store (a restarted hub) reads the finished install instead of installing again.
    again = CountingStore(tmp_path / "packages")
    assert await again.install(_package(), server="acme/echo") == answers[0][:2] and again.installs == 0


async def test_hubs_sharing_a_data_folder_install_a_package_once(tmp_path: Path) -> None:
    first, second = CountingStore(tmp_path / "packages"), CountingStore(tmp_path / "packages")
    seed_argv_echo(first)
    answers: list[list[str]] = []

    async def install(store: CountingStore) -> None:
        answers.append(await store.install(_package(), server="acme/echo"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(install, first)
        with anyio.fail_after(5):
            while first.installs == 0:
                await anyio.sleep(0.01)
        tg.start_soon(install, second)  # waits on the first one's file lock, then finds its install
        key = str(second.folder(_package()))
        with anyio.fail_after(5):  # once its own lock is taken, it is suspended in the file lock (or its own install)
            while key not in second._locks or not second._locks[key].locked():
                await anyio.sleep(0.01)
        first.release.set()
        second.release.set()
    assert (first.installs, second.installs) == (1, 0) and answers[0] == answers[1]


@pytest.mark.parametrize(("bins", "error"), [
    ({"one": "index.js", "two": "index.js"}, "several bins"),
    ({"argv-echo": "../../../../../../../etc/passwd"}, "outside its folder"),
    ({}, "no `bin`"),
])
async def test_a_bin_is_chosen_by_name_and_stays_inside_the_package(tmp_path: Path, bins: dict[str, str],
                                                                   error: str) -> None:
    store = CountingStore(tmp_path / "packages")
    seed_argv_echo(store, bins)
    store.release.set()
    with pytest.raises(PackageInstallFailed, match=error):
        await store.install(_package(), server="acme/echo")


async def test_a_package_that_does_not_exist_fails_with_npms_own_words(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "packages", timeout=120)
    missing = Package(registry="npm", identifier="@modelcontextprotocol/server-everything", version="0.0.1-nope")
    with pytest.raises(PackageInstallFailed) as caught:
        await store.install(missing, server="acme/missing")
    assert caught.value.code == "package_install_failed" and caught.value.server == "acme/missing"
    assert "ETARGET" in caught.value.message or "notarget" in caught.value.message.lower(), caught.value.message
    assert not store.folder(missing).exists()  # nothing half-installed is left to be mistaken for an install


class BrokenStore(PackageStore):
    """A store whose installs always fail, counting them."""

    attempts = 0

    async def _install(self, package: Package, folder: Path, server: str) -> list[str]:
        self.attempts += 1
        raise PackageInstallFailed("installing argv-echo@1.0.0 failed: npm error 404", server=server)


async def test_a_failed_install_is_not_retried_for_every_request(tmp_path: Path) -> None:
    store = BrokenStore(tmp_path / "packages")
    for _ in range(3):
        with pytest.raises(PackageInstallFailed, match="npm error 404"):
            await store.install(_package(), server="acme/echo")
    assert store.attempts == 1


def test_installer_output_is_scrubbed(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    log.write_bytes(b"npm error fetch https://user:s3cret@registry.example/x failed\n\x1b[31m_authToken=abc123\x1b[0m\x00\n")
    tail = stderr_tail(log)
    assert "s3cret" not in tail and "abc123" not in tail and "\x00" not in tail and "\x1b" not in tail
    assert "https://[REDACTED]@registry.example/x" in tail


@pytest.fixture
def hub_settings(tmp_path: Path) -> Settings:
    return Settings.load(data_dir=tmp_path / "data", openai_api_key="sk-t", restart_backoff=0.05)


@pytest.fixture
async def market(hub_settings: Settings) -> AsyncIterator[tuple[httpx2.AsyncClient, Hub]]:
    registry = Registry.from_data({"servers": {"test/probe": probe_entry()}}, root=ROOT)
    async with asgi_client(hub_settings, registry) as running:
        yield running


async def test_package_arguments_reach_the_server_as_data(market: tuple[httpx2.AsyncClient, Hub]) -> None:
    http, hub = market
    seed_argv_echo(hub.packages)
    (hub.packages.folder(_package()) / MARKER).write_text(json.dumps(
        {"entry": "node_modules/argv-echo/index.js"}))
    publisher = {"authorization": f"Bearer {(await hub.keys.create('acme', 'p', 'publisher'))[0]}"}
    created = await http.post("/v1/servers", headers=publisher, json={"slug": "acme/echo", "version": {
        "version": "1.0.0", "package": {"registry": "npm", "identifier": "argv-echo", "version": "1.0.0",
                                        "arguments": HOSTILE_ARGUMENTS}}})
    assert created.status_code == 201, created.text
    called = await http.post("/v1/tools/call", headers=publisher, json={"server": "acme/echo", "tool": "argv"})
    assert called.status_code == 200, called.text
    seen = json.loads(called.json()["result"][0]["text"])
    # Every argument arrived, in order and unchanged ({data_dir} not filled in), and node took none as its own.
    assert seen == {"argv": HOSTILE_ARGUMENTS, "execArgv": []}
    # The installed package is read-only to the server that runs from it.
    written = await http.post("/v1/tools/call", headers=publisher, json={"server": "acme/echo", "tool": "write_own_files"})
    assert written.json()["result"][0]["text"] == "EROFS", written.text
    assert not (hub.packages.folder(_package()) / "node_modules" / "argv-echo" / "planted.js").exists()


async def test_arguments_with_control_characters_are_refused_by_the_api(market: tuple[httpx2.AsyncClient, Hub]) -> None:
    http, hub = market
    publisher = {"authorization": f"Bearer {(await hub.keys.create('acme', 'p', 'publisher'))[0]}"}
    refused = await http.post("/v1/servers", headers=publisher, json={"slug": "acme/echo", "version": {
        "version": "1.0.0", "package": {"registry": "npm", "identifier": "argv-echo", "version": "1.0.0",
                                        "arguments": ["ok", "two\nlines"]}}})
    assert refused.status_code == 400 and "control characters" in refused.json()["error"]["message"], refused.text
    traversal = await http.post("/v1/servers", headers=publisher, json={"slug": "acme/echo", "version": {
        "version": "1.0.0", "package": {"registry": "npm", "identifier": "../../../etc", "version": "1.0.0"}}})
    assert traversal.status_code == 400 and not hub.packages.root.exists(), traversal.text


async def test_a_pypi_package_installs_into_a_venv_and_runs_its_console_script(hub_settings: Settings) -> None:
    registry = Registry.from_data({"servers": {}}, root=ROOT)
    isort = Package(registry="pypi", identifier="isort", version="5.13.2", arguments=("--version",))
    async with Hub(hub_settings, registry) as hub:  # sandboxed: the configured indexes only, through the proxy
        argv = await hub.packages.install(isort, server="acme/isort")
    folder = hub.packages.folder(isort)
    assert argv == [str(folder / "venv" / "bin" / "python"), str(folder / "venv" / "bin" / "isort"), "--version"]
    ran = await anyio.run_process(argv, check=False)
    assert ran.returncode == 0 and b"5.13.2" in ran.stdout


async def test_a_package_that_cannot_be_installed_is_a_server_error(hub_settings: Settings) -> None:
    registry = Registry.from_data({"servers": {"acme/missing": {"versions": {"1.0.0": {"package": {
        "registry": "npm", "identifier": "@modelcontextprotocol/server-everything", "version": "0.0.1-nope"}}}}}},
        root=ROOT)
    async with Hub(hub_settings, registry) as hub:
        servers = hub.open_servers("acme/missing")
        await hub.list_tools(servers)
    assert servers.errors["acme/missing"].code == "package_install_failed"
    assert "0.0.1-nope" in servers.errors["acme/missing"].message


async def test_stored_runner_commands_are_read_as_packages_and_bad_env_is_not_loaded(hub_settings: Settings) -> None:
    async with Hub(hub_settings, Registry.from_data({"servers": {}}, root=ROOT)):
        pass  # creates the tables
    now = 1.0
    with sqlite3.connect(hub_settings.records_path) as db:
        for slug in ("acme/old", "acme/evil", "acme/raw"):
            db.execute("INSERT INTO registrations VALUES (?, 'acme', '', '[]', '{}', '{}', 0, ?, 'k', ?)", (slug, now, now))
        db.execute("INSERT INTO registration_versions VALUES ('acme/old', '1.0.0', ?, 0, ?, 'k')", (json.dumps(
            {"command": ["npx", "-y", "argv-echo@1.0.0", "--call", "sh -c id"], "env": {"LOG_LEVEL": "info"}}), now))
        db.execute("INSERT INTO registration_versions VALUES ('acme/raw', '1.0.0', ?, 0, ?, 'k')", (json.dumps(
            {"command": ["npx", "-y", "some-tool", "--flag"]}), now))
        db.execute("INSERT INTO registration_versions VALUES ('acme/evil', '1.0.0', ?, 0, ?, 'k')", (json.dumps(
            {"command": ["npx", "-y", "argv-echo@1.0.0"], "env": {"NODE_OPTIONS": "--import=data:,"}}), now))
    async with Hub(hub_settings, Registry.from_data({"servers": {}}, root=ROOT)) as hub:
        old = hub.registry.get("acme/old")
        assert old is not None and old.versions["1.0.0"].command is None
        assert old.versions["1.0.0"].package == _package(arguments=["--call", "sh -c id"])
        assert hub.registry.get("acme/evil") is None
        raw = hub.registry.get("acme/raw")  # an admin's own npx command line (no pinned version) stays one
        assert raw is not None and raw.versions["1.0.0"].command == ("npx", "-y", "some-tool", "--flag")
