"""Installing published npm and PyPI packages once, and the command line that runs each.

`PackageStore` (one per hub, owned by it) installs a package version into
`<data_dir>/packages/<registry>/<name>@<version>/` the first time a session needs it and
answers the argv that runs its entry point directly:

- npm: `npm install --ignore-scripts` into the folder, then `node <bin> args…`, the bin of
  the package's own `package.json` named like the package (else its only one);
- PyPI: a venv made by the hub's interpreter, `pip install --only-binary=:all: name==version`,
  then `<venv>/bin/python <console script> args…`, the script named like the package (else
  its only one).

Nothing of the publisher's runs while installing (no npm lifecycle scripts, no sdist builds),
and no runner (`npx`, `uvx`) stands between the hub and the server: every argument after the
entry point is the server's own argv. The install itself runs
sandboxed when the hub has a sandbox (its network only the package registries this host is
configured for, `sources.py`; local sources bound read-only), the folder writable during the
install and bound read-only when the server runs (`hosting.py`).
Concurrent sessions wait for one install (a lock per package, and a file lock between hubs
sharing the data folder); a failure is remembered for
`RETRY_SECONDS`, so a broken package is not reinstalled for every request naming it; a folder
left without its completion marker (a crash mid-install) is wiped and installed again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from .egress_proxy import EgressProxy
from .errors import PackageInstallFailed, SandboxUnavailable
from .packages import Package
from .sandbox import HOME, Sandbox, SandboxLimits
from .sandbox_bridge import PROXY_PORT
from .sources import Sources, discover_sources

MARKER = ".mcp-hub-installed.json"
RETRY_SECONDS = 30.0
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"  # the egress proxy, as the sandbox bridge serves it inside
# An install is bigger than a server's run (dependency trees, a venv), and brief.
INSTALL_LIMITS = SandboxLimits(memory_mb=4096, cpu_seconds=900, processes=512, open_files=4096, file_size_mb=1024,
                               disk_mb=2048, stderr_kb=1024)
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")
_TOKEN = re.compile(r"(?i)(_auth(?:token)?|password|token)(\s*[=:]\s*)\S+")


class PackageStore:
    """Installed packages under `root` (`<data_dir>/packages`) and how to run them."""

    def __init__(self, root: Path, *, timeout: float = 300.0, python: str = sys.executable,
                 sources: Sources | None = None) -> None:
        self.root = root
        self.timeout = timeout
        self._python = python
        self._sources = sources
        self._locks: dict[str, anyio.Lock] = {}
        self._entries: dict[str, list[str]] = {}  # folder -> the entry point's argv (no arguments)
        self._failures: dict[str, tuple[float, PackageInstallFailed]] = {}  # folder -> (when, why)
        self._sandbox: Sandbox | None = None
        self._egress_proxy: EgressProxy | None = None
        self._base_env: dict[str, str] = {}

    def use(self, sandbox: Sandbox | None, egress_proxy: EgressProxy | None, *,
            base_env: Mapping[str, str] | None = None) -> None:
        """Install inside `sandbox` (None: unsandboxed), reaching registries through `egress_proxy` (the hub's,
        open while the hub runs); `base_env`: the host's locale and CA variables the installers need."""
        self._sandbox, self._egress_proxy, self._base_env = sandbox, egress_proxy, dict(base_env or {})

    def folder(self, package: Package) -> Path:
        """The package version's install folder (its name comes from validated text only)."""
        base = self.root / package.registry
        folder = base / package.folder
        if folder.parent != base or not package.folder.isascii() or package.folder in (".", ".."):
            raise PackageInstallFailed(f"package {package.spec!r} has no safe folder name", server=package.identifier)
        return folder

    def command(self, package: Package) -> list[str]:
        """The argv that runs an installed package with its arguments; `install` must have returned first."""
        entry = self._entries.get(str(self.folder(package)))
        if entry is None:
            raise PackageInstallFailed(f"package {package.spec} is not installed", server=package.identifier)
        return [*entry, *package.arguments]

    async def install(self, package: Package, *, server: str) -> list[str]:
        """Install `package` unless it is already, once however many sessions ask; the argv to run it."""
        folder = self.folder(package)
        key = str(folder)
        if key not in self._entries:
            self.root.mkdir(parents=True, exist_ok=True)
            async with self._locks.setdefault(key, anyio.Lock()):
                if key not in self._entries:
                    failed = self._failures.get(key)
                    if failed is not None and time.monotonic() - failed[0] < RETRY_SECONDS:
                        raise PackageInstallFailed(failed[1].message, server=server)
                    try:
                        async with self._shared_lock(folder, server):
                            self._entries[key] = self._installed(package, folder) or await self._timed(package,
                                                                                                       folder, server)
                    except PackageInstallFailed as exc:
                        self._failures[key] = (time.monotonic(), exc)
                        raise
        return self.command(package)

    @asynccontextmanager
    async def _shared_lock(self, folder: Path, server: str) -> AsyncIterator[None]:
        """Hubs sharing one data folder (README, several hubs) install a package once between them too:
        an advisory lock on a file beside the package's folder, polled so that waiting stays cancellable."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f".{folder.name}.lock", "a+b") as handle:
            with anyio.move_on_after(self.timeout) as waited:
                while True:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await anyio.sleep(0.1)
            if waited.cancelled_caught:
                raise PackageInstallFailed(f"another hub has been installing {folder.name} for over "
                                           f"{self.timeout:g}s", server=server)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    async def _timed(self, package: Package, folder: Path, server: str) -> list[str]:
        """Install within the time budget; whatever fails leaves no folder behind."""
        entry = None
        try:
            with anyio.move_on_after(self.timeout):
                entry = await self._install(package, folder, server)
        except ValueError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise PackageInstallFailed(f"installing {package.spec} failed: {exc}", server=server) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if entry is None:
            shutil.rmtree(folder, ignore_errors=True)
            raise PackageInstallFailed(f"installing {package.spec} took longer than {self.timeout:g}s", server=server)
        return entry

    def _installed(self, package: Package, folder: Path) -> list[str] | None:
        """The entry point recorded by a finished install, or None (never installed, or left half-done)."""
        try:
            recorded = json.loads((folder / MARKER).read_text(encoding="utf-8"))
            entry = self._entry_argv(package, folder, Path(recorded["entry"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return entry

    async def _install(self, package: Package, folder: Path, server: str) -> list[str]:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, mode=0o755)
        if self._sources is None:
            self._sources = await discover_sources(self._python)
        with tempfile.TemporaryDirectory(prefix=".install-", dir=self.root) as scratch:
            if package.registry == "npm":
                await self._npm(package, folder, Path(scratch), server)
                entry = _npm_bin(package, folder, server)
            else:
                await self._pip(package, folder, Path(scratch), server)
                entry = _console_script(package, folder, server)
        argv = self._entry_argv(package, folder, entry)
        (folder / MARKER).write_text(json.dumps({"package": package.spec, "entry": str(entry)}),
                                     encoding="utf-8")
        return argv

    def _entry_argv(self, package: Package, folder: Path, entry: Path) -> list[str]:
        """`node <bin>` or `<venv python> <script>`, the entry point checked to lie inside the folder."""
        path = (folder / entry).resolve()
        if not path.is_relative_to(folder.resolve()) or not path.is_file():
            raise ValueError(f"the entry point of {package.spec} is outside its folder or missing")
        if package.registry == "npm":
            node = shutil.which("node")
            if node is None:
                raise ValueError("node is not installed")
            return [node, str(path)]
        return [str(folder / "venv" / "bin" / "python"), str(path)]

    async def _npm(self, package: Package, folder: Path, scratch: Path, server: str) -> None:
        assert self._sources is not None
        npm = shutil.which("npm")
        if npm is None:
            raise PackageInstallFailed("npm is not installed on this hub", server=server)
        # --ignore-scripts: a package's (and its dependencies') install scripts are publisher code that
        # would run at install time, before anything about the package was checked; MCP servers need none.
        argv = [npm, "install", "--ignore-scripts", "--no-audit", "--no-fund", "--no-save", "--omit=dev",
                "--no-update-notifier", "--prefix", str(folder), *self._sources.npm_arguments,
                "--cache", str(scratch / "npm-cache"), package.spec]
        await self._run(argv, package, folder, scratch, server, hosts=self._sources.npm_hosts,
                        readonly=self._sources.npm_paths)

    async def _pip(self, package: Package, folder: Path, scratch: Path, server: str) -> None:
        assert self._sources is not None
        venv = folder / "venv"
        await self._run([self._python, "-m", "venv", str(venv)], package, folder, scratch, server, hosts=(),
                        readonly=())
        # --only-binary: building an sdist runs the publisher's setup code at install time; wheels only.
        argv = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                "--only-binary=:all:", "--no-cache-dir", *self._sources.pip_arguments, package.spec]
        await self._run(argv, package, folder, scratch, server, hosts=self._sources.pip_hosts,
                        readonly=self._sources.pip_paths)

    async def _run(self, argv: list[str], package: Package, folder: Path, scratch: Path, server: str, *,
                   hosts: Sequence[str], readonly: Sequence[Path]) -> None:
        """Run one install step; a failure is a `PackageInstallFailed` with npm's/pip's last stderr lines."""
        tools = [shutil.which(name) for name in ("node", "npm")]
        path = os.pathsep.join(dict.fromkeys([*(str(Path(t).parent) for t in tools if t), "/usr/local/bin", "/usr/bin",
                                              "/bin"]))
        env = {"PATH": path, "HOME": str(scratch), "LANG": "C.UTF-8", "PIP_CONFIG_FILE": os.devnull,
               "NPM_CONFIG_USERCONFIG": os.devnull, "PYTHONDONTWRITEBYTECODE": "1"} | self._base_env
        log = scratch / "stderr.log"
        async with self._sandboxed(argv, env, folder, scratch, readonly, hosts, server) as (command, env):
            with open(log, "wb") as errors:
                process = await anyio.open_process(command, stdin=None, stdout=errors, stderr=errors,
                                                   cwd=str(folder), env=env, start_new_session=True)
                try:
                    code = await process.wait()
                finally:
                    if process.returncode is None:  # cancelled (the install's time budget): the whole group goes
                        with anyio.CancelScope(shield=True):
                            _kill_group(process.pid)
                            await process.wait()
        if code != 0:
            raise PackageInstallFailed(f"installing {package.spec} failed: {stderr_tail(log)}", server=server)

    @asynccontextmanager
    async def _sandboxed(self, argv: list[str], env: dict[str, str], folder: Path, scratch: Path,
                         readonly: Sequence[Path], hosts: Sequence[str],
                         server: str) -> AsyncIterator[tuple[list[str], dict[str, str]]]:
        """The install step's command line and environment: in the hub's sandbox when it has one, the
        package folder and a scratch folder writable, the network only the registry `hosts` (through the
        egress proxy; none at all when the sources are local), local sources bound read-only."""
        if self._sandbox is None or self._egress_proxy is None:
            yield argv, env
            return
        sandbox = self._sandbox
        for writable in (folder, scratch):
            sandbox.prepare(writable)  # owned by the sandbox's uid when the hub is root
        env = env | {"HOME": HOME}
        async with AsyncExitStack() as stack:
            socket = None
            if hosts:
                run = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mcp-hub-install-")))
                socket = run / "egress.sock"
                await stack.enter_async_context(self._egress_proxy.serve(socket, name=server, only_hosts=list(hosts)))
                sandbox.grant(socket)
                env |= {name: PROXY_URL for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                                                     "npm_config_proxy", "npm_config_https_proxy")}
                env |= {"NO_PROXY": "", "no_proxy": ""}
            try:
                command = sandbox.command(argv, env=env, cwd=str(folder), writable=[folder, scratch],
                                          readonly=list(readonly), egress_socket=socket, limits=INSTALL_LIMITS)
            except SandboxUnavailable as exc:
                raise SandboxUnavailable(f"installing a package for {server!r}: {exc.message}", server=server) from None
            yield command, env


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def stderr_tail(path: Path, lines: int = 4) -> str:
    """The last lines of an installer's output: control characters and credentials removed, bounded."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 8192))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "no output"
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    kept = [re.sub(r"[\x00-\x1f\x7f]", " ", line).strip() for line in text.splitlines()]
    tail = " | ".join(line for line in kept if line)[-600:] if kept else ""
    tail = _URL_CREDENTIALS.sub("[REDACTED]@", tail)
    return _TOKEN.sub(r"\1\2[REDACTED]", tail) or "no output"


def _npm_bin(package: Package, folder: Path, server: str) -> Path:
    """The package's bin named like it (its last path segment), else its only bin."""
    root = folder / "node_modules" / package.identifier
    try:
        manifest: Any = json.loads((root / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise PackageInstallFailed(f"{package.spec} installed no readable package.json",
                                   server=server) from None
    bins = manifest.get("bin") if isinstance(manifest, dict) else None
    if isinstance(bins, str):
        bins = {package.command_name: bins}
    if not isinstance(bins, dict) or not bins or not all(isinstance(v, str) for v in bins.values()):
        raise PackageInstallFailed(f"{package.spec} declares no `bin` to run", server=server)
    chosen = bins.get(package.command_name) or (next(iter(bins.values())) if len(bins) == 1 else None)
    if chosen is None:
        raise PackageInstallFailed(f"{package.spec} declares several bins ({', '.join(sorted(bins)[:8])}) and none "
                                   f"is named {package.command_name!r}", server=server)
    return (root / chosen).relative_to(folder)


def _console_script(package: Package, folder: Path, server: str) -> Path:
    """The console script of the installed distribution named like the package, else its only one."""
    scripts: dict[str, str] = {}
    for info in (folder / "venv" / "lib").glob("python*/site-packages/*.dist-info"):
        name = info.name.removesuffix(".dist-info").rsplit("-", 1)[0]
        if re.sub(r"[-_.]+", "-", name).lower() != package.name:
            continue
        try:
            text = (info / "entry_points.txt").read_text(encoding="utf-8")
        except OSError:
            break
        section = None
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[] ")
            elif section == "console_scripts" and "=" in line:
                script = line.split("=", 1)[0].strip()
                scripts[re.sub(r"[-_.]+", "-", script).lower()] = script
    chosen = scripts.get(package.name) or (next(iter(scripts.values())) if len(scripts) == 1 else None)
    if chosen is None:
        what = f"several ({', '.join(sorted(scripts.values())[:8])}) and none named {package.name!r}" if scripts else "none"
        raise PackageInstallFailed(f"{package.spec} installed console scripts: {what}", server=server)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", chosen):
        raise PackageInstallFailed(f"{package.spec}: console script name {chosen[:64]!r} is not allowed",
                                   server=server)
    return Path("venv") / "bin" / chosen
