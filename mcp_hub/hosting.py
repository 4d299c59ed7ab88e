"""How a hosted server is launched: its session folder, its environment, its sandbox and its quota.

Each session of a hosted server (tenant + server + credential, as the pool keys sessions) gets a
writable folder of its own, `<data_dir>/sandboxes/<digest>/` (0700): `{data_dir}` in registry
commands and env and `MCP_HUB_DATA_DIR` name it, so two tenants never share written files.
Sandboxed (the default; see `mcp_hub.sandbox`) the child sees only that folder of the data
folder, gets a fixed environment (the hub's choice of PATH, HOME, TMPDIR, locale and, for a server
with `network: egress`, CA settings, plus the server's declared and credential variables, nothing
else of the hub's) and the limits
of its entry. The folder's size is checked by the hub, not by the filesystem: before each start
and about once a second while the child runs; past `disk_mb` the child is stopped and not
started again until the folder is below its quota.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from mcp import StdioServerParameters

from .credentials import Binding
from .egress_proxy import EgressProxy
from .errors import ConnectError, SandboxUnavailable
from .installer import PackageStore
from .resolution import Target
from .sandbox import CA_VARIABLES, HOME, MIB, Sandbox, SandboxLimits, folder_size

log = logging.getLogger("mcp_hub.hosting")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
QUOTA_INTERVAL = 1.0
PROXY_URL = "http://127.0.0.1:3128"  # sandbox_bridge.PROXY_PORT inside the sandbox


class Hosting:
    """Launch plans for hosted children; `sandbox` None runs every one unsandboxed (operator's choice)."""

    def __init__(self, *, data_dir: Path, registry_root: Path, sandbox: Sandbox | None = None,
                 limits: SandboxLimits | None = None, base_env: Mapping[str, str] | None = None,
                 egress_proxy: EgressProxy | None = None, setpriv: str | None = None,
                 packages: PackageStore | None = None) -> None:
        self.data_dir = data_dir
        self.registry_root = registry_root
        self.sandbox = sandbox
        self.limits = limits or SandboxLimits()
        self.base_env = dict(base_env or {})
        self.egress_proxy = egress_proxy
        self._setpriv = setpriv
        self.packages = packages or PackageStore(data_dir / "packages")

    def sandboxed(self, target: Target) -> bool:
        """Whether `target` runs sandboxed: always, unless the hub's or the operator's entry says not."""
        return self.sandbox is not None and (target.entry is None or target.entry.sandbox)

    def limits_for(self, target: Target) -> SandboxLimits:
        """The hub's defaults with the entry's limits applied (a published entry's only lower them)."""
        entry = target.entry
        return self.limits if entry is None else self.limits.within(entry.limits.sandbox(), may_raise=not entry.published)

    def session_dir(self, target: Target, tenant: str, binding: Binding) -> Path:
        """The session's own writable folder (not created here)."""
        server = target.slug or target.name
        digest = hashlib.sha256(f"{tenant}\0{server}\0{binding.fingerprint}".encode()).hexdigest()[:32]
        return self.data_dir / "sandboxes" / digest

    def expand(self, text: str, data_dir: Path) -> str:
        """Fill `{python}`, `{registry_dir}` and `{data_dir}` (the session's folder) in commands, env and cwd."""
        values = {"python": sys.executable, "registry_dir": str(self.registry_root), "data_dir": str(data_dir)}
        return re.sub(r"{(python|registry_dir|data_dir)}", lambda m: values[m.group(1)], text)

    async def plan(self, target: Target, binding: Binding, tenant: str, stack: AsyncExitStack,
                   closed: anyio.Event) -> StdioServerParameters:
        """The parameters to spawn `target` with; what the launch needs (egress socket, quota watch)
        lives on `stack`. Raises SandboxUnavailable, ConnectError (over quota), FileNotFoundError."""
        version = target.version
        folder = self.session_dir(target, tenant, binding)
        readonly = [self.registry_root]
        if version.package is not None:  # its installed entry point; the arguments are the server's argv, as given
            command = self.packages.command(version.package)
            readonly.append(self.packages.folder(version.package))  # read-only at run time
        else:
            assert version.command is not None
            command = [self.expand(part, folder) for part in version.command]
        executable = shutil.which(command[0], path=(version.env.get("PATH") or None))
        if executable is None:
            raise FileNotFoundError(2, "command not found", command[0])
        command[0] = executable
        declared = {key: self.expand(value, folder) for key, value in version.env.items()}
        cwd = self.expand(version.cwd, folder) if version.cwd else str(self.registry_root)
        if not self.sandboxed(target):
            folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.mkdir(mode=0o700, exist_ok=True)
            env = declared | binding.env
            env.setdefault("MCP_HUB_DATA_DIR", str(folder))
            return self._params(command, env, cwd)
        assert self.sandbox is not None
        limits = self.limits_for(target)
        quota = limits.disk_mb * MIB
        self.sandbox.prepare(folder)
        if await anyio.to_thread.run_sync(folder_size, folder, quota) > quota:
            raise ConnectError(f"server {target.name!r}: its data folder is over its {limits.disk_mb} MiB quota",
                               server=target.name, recommendation="Ask the hub's operator to free space in the "
                               "server's data folder or to raise its `limits.disk_mb`.")
        # CA settings only where there is an outside to trust: without network they would only cost the
        # start (Node 20 parses its whole root store at start-up when NODE_EXTRA_CA_CERTS is set: +35 ms).
        base = {name: value for name, value in self.base_env.items()
                if version.network == "egress" or name not in CA_VARIABLES}
        env = {"PATH": self._path(executable), "HOME": HOME, "TMPDIR": "/tmp", "LANG": "C.UTF-8", "USER": "sandbox",
               "LOGNAME": "sandbox", "SHELL": "/bin/sh", "TERM": "dumb"} | base | declared | binding.env
        env["MCP_HUB_DATA_DIR"] = str(folder)
        socket = None
        if version.network == "egress":
            socket = await self._egress(target, folder, stack)
            env |= {name: PROXY_URL for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                                                 "npm_config_proxy", "npm_config_https_proxy")}
            env |= {"NO_PROXY": "", "no_proxy": ""}
        try:
            argv = self.sandbox.command(command, env=env, cwd=cwd, writable=[folder],
                                        readonly=[*readonly, *self._cwd(cwd, folder)],
                                        egress_socket=socket, limits=limits)
        except SandboxUnavailable as exc:
            raise SandboxUnavailable(f"server {target.name!r}: {exc.message}", server=target.name) from None
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        tg.start_soon(self._watch_quota, target.name, folder, quota, closed)
        return self._params(argv, env, cwd)

    @staticmethod
    def _cwd(cwd: str, folder: Path) -> list[Path]:
        """An operator's `cwd` outside the registry folder is shown read-only (its session folder already is)."""
        path = Path(cwd)
        return [path] if path.is_absolute() and path.is_dir() and not path.is_relative_to(folder) else []

    def _params(self, command: list[str], env: dict[str, str], cwd: str) -> StdioServerParameters:
        if self._setpriv:  # outside the sandbox too: a hub killed with SIGKILL takes its children along
            command = [self._setpriv, "--pdeathsig", "KILL", "--", *command]
        return StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=cwd)

    @staticmethod
    def _path(executable: str) -> str:
        """The hub's PATH for a child: this interpreter's and the command's folders, then the system's."""
        folders = dict.fromkeys([str(Path(sys.executable).parent), str(Path(executable).parent), SYSTEM_PATH])
        return ":".join(folders)

    async def _egress(self, target: Target, folder: Path, stack: AsyncExitStack) -> Path:
        """Serve the egress proxy on a socket of this session's; its path (short: Unix socket paths are)."""
        assert self.egress_proxy is not None and self.sandbox is not None
        run = self.data_dir / "run"
        if len(str(run)) > 60:  # too long for a socket's path: a folder of this session's, removed when it closes
            run = Path(tempfile.mkdtemp(prefix="mcp-hub-"))
            stack.callback(shutil.rmtree, run, ignore_errors=True)  # after the proxy's exit removed the socket
        path = run / f"{folder.name[:16]}-{id(stack):x}.sock"
        await stack.enter_async_context(self.egress_proxy.serve(path, name=target.name))
        self.sandbox.grant(path)
        return path

    @staticmethod
    async def _watch_quota(name: str, folder: Path, quota: int, closed: anyio.Event) -> None:
        """Stop the child (end its session, which restarts it) once its folder is past the quota."""
        while not closed.is_set():
            await anyio.sleep(QUOTA_INTERVAL)
            if await anyio.to_thread.run_sync(folder_size, folder, quota) > quota:
                log.warning("server %s: data folder over its quota of %d MiB; stopping it", name, quota // MIB)
                closed.set()
                return
