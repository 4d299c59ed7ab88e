"""The sandbox every hosted server runs in: one bubblewrap profile, built here and nowhere else.

`Sandbox.command` turns a server's argv into `bwrap … -- [setpriv … unshare …] prlimit … -- argv`:

* Namespaces: its own mount, PID (`/proc` is its own: no other process is visible), IPC, UTS,
  network (only loopback; `network: egress` adds the hub's egress proxy, see below) and user.
  The child runs as an unprivileged uid (`sandbox_uid`, 65534 by default) with no capabilities.
  A hub running as root runs bwrap in its privileged mode; inside, `setpriv` drops to the uid
  (outside too, so the child is not root on the host) and `unshare --user` gives it a user
  namespace of its own. An unprivileged hub lets bwrap make the user namespace (the child is
  the hub's uid outside).
* Files: a read-only view of the system (/usr, the /lib and /bin links, chosen parts of /etc),
  the interpreter and installed packages (`runtime_paths`) and the caller's `readonly` paths;
  a private, size-capped tmpfs for `/tmp` and for HOME; the caller's `writable` paths bound
  read-write at the same path; and the `hidden` paths (the hub's data folder) covered by an
  empty read-only tmpfs, so the keyring, records database, logs and other sessions' folders
  do not exist inside even when the data folder lies in a bound tree.
* Limits: `prlimit` applies the rlimits inside, after the user namespace exists (RLIMIT_NPROC
  counts per user namespace there; set earlier, a root hub would not be limited at all).
  Memory is RLIMIT_DATA, not RLIMIT_AS: Node reserves large virtual ranges it never touches.
* Network: with `egress_socket`, the hub's `EgressProxy` socket is bound in and
  `sandbox_launcher.py` starts `sandbox_bridge` (127.0.0.1:3128 inside) before running argv.

`bwrap --die-with-parent` (and the PID namespace: its init dying kills everything in it) keeps
the no-orphan guarantee of `setpriv --pdeathsig` outside.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import SandboxUnavailable

HOME = "/home/sandbox"
RUN = "/run/mcp-hub"  # the launcher, the bridge and the egress socket, inside
LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")
BRIDGE = Path(__file__).with_name("sandbox_bridge.py")
# /etc entries a runtime needs: CA certificates, the dynamic loader's configuration, users and name service.
ETC = ("ssl", "ca-certificates", "ca-certificates.conf", "pki", "alternatives", "ld.so.cache", "ld.so.conf",
       "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "hosts", "localtime", "mime.types", "os-release")
SYSTEM = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
# The host's CA settings, which only the hub sets (`envpolicy` refuses them to publishers): the files they
# name are bound read-only. Any other name's value is never taken for a path to show (a publisher's
# `X_CA_BUNDLE=/etc/mcp-hub.yaml` must not bind that file in).
CA_VARIABLES = frozenset({"SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                          "PIP_CERT"})
MIB = 1024 * 1024


@dataclass(frozen=True)
class SandboxLimits:
    """Per-child limits (see `Settings.sandbox_*` for the defaults and their meaning)."""

    memory_mb: int = 2048
    cpu_seconds: int = 3600
    processes: int = 256
    open_files: int = 1024
    file_size_mb: int = 256
    disk_mb: int = 512
    stderr_kb: int = 1024

    def within(self, given: Mapping[str, int | None], *, may_raise: bool) -> SandboxLimits:
        """These limits with `given`'s set fields applied; a publisher's (`may_raise=False`) only lower them."""
        changes = {name: value if may_raise else min(value, getattr(self, name))
                   for name, value in given.items() if value is not None and hasattr(self, name)}
        return replace(self, **changes)

    def rlimits(self) -> list[str]:
        """`prlimit` options (soft = hard, so the child cannot raise them)."""
        values = {"data": self.memory_mb * MIB, "cpu": self.cpu_seconds, "nproc": self.processes,
                  "nofile": self.open_files, "fsize": self.file_size_mb * MIB, "core": 0}
        return [f"--{name}={value}:{value}" for name, value in values.items()]


def runtime_paths(executables: Iterable[str] = ()) -> list[Path]:
    """What a hosted server needs read-only to run: this interpreter, its prefixes and import paths,
    and the installation prefix of each executable (e.g. `npx` under ~/.nvm), real paths included."""
    found: list[Path] = []
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  *(entry for entry in sys.path if entry and os.path.isabs(entry)),
                  str(Path(__file__).resolve().parent.parent)]
    for executable in [sys.executable, *executables]:
        for path in {Path(executable), Path(executable).resolve()}:
            candidates.append(str(path.parent.parent if path.parent.name == "bin" else path.parent))
    for text in candidates:
        for path in {Path(text).absolute(), Path(text).resolve()}:
            if path.exists() and path != Path("/"):
                found.append(path)
    return _outermost(found)


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """The paths without those inside another one of them, sorted."""
    unique = sorted(set(paths), key=lambda p: (len(p.parts), str(p)))
    kept: list[Path] = []
    for path in unique:
        if not any(path == outer or path.is_relative_to(outer) for outer in kept):
            kept.append(path)
    return sorted(kept)


class _Mounts:
    """bwrap mount options in order, creating missing parent folders world-traversable (0755):
    bwrap would otherwise copy the modes of the host's parents (e.g. /root's 0700)."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self._layers: list[tuple[Path, bool]] = []  # (mount point, is a host tree), in mount order
        self._made: set[Path] = set()

    @property
    def _binds(self) -> list[Path]:
        """Host trees bound in (and not covered by a later tmpfs)."""
        return [dest for dest, host in self._layers if host and self._top(dest) == (dest, True)]

    def _top(self, path: Path) -> tuple[Path, bool]:
        """The mount that shows `path`: the deepest mount point above it, the later one on a tie."""
        best: tuple[Path, bool] = (Path("/"), False)  # bwrap's own root tmpfs
        for dest, host in self._layers:
            if path.is_relative_to(dest) and len(dest.parts) >= len(best[0].parts):
                best = (dest, host)
        return best

    def _parents(self, dest: Path) -> None:
        for parent in reversed(dest.parents):
            if parent == Path("/") or parent in self._made or self._top(parent)[1]:
                continue  # made already, or inside a host tree (where it exists)
            self._made.add(parent)
            self.args += ["--perms", "0755", "--dir", str(parent)]

    def bind(self, source: Path, dest: Path | None = None, *, writable: bool = False) -> None:
        dest = dest or source
        self._parents(dest)
        self.args += ["--bind" if writable else "--ro-bind", str(source), str(dest)]
        self._layers.append((dest, True))
        self._made.add(dest)

    def tmpfs(self, dest: Path, size_bytes: int, perms: str = "0700") -> None:
        self._parents(dest)
        self.args += ["--perms", perms, "--size", str(size_bytes), "--tmpfs", str(dest)]
        self._layers.append((dest, False))
        self._made.add(dest)


class Sandbox:
    """Builds sandboxed command lines; see the module docstring for the profile."""

    def __init__(self, bwrap: str = "bwrap", *, uid: int = 65534, hidden: Sequence[Path] = (),
                 system: Sequence[str] = SYSTEM, etc: Sequence[str] = ETC) -> None:
        self.bwrap = bwrap
        self.uid = uid
        self.hidden = [Path(path).absolute() for path in hidden]
        self.privileged = os.geteuid() == 0  # a root hub: bwrap's privileged mode, setpriv drops to uid
        self._system = system
        self._etc = etc
        self._tools: dict[str, str] | None = None
        self._runtime: dict[str, list[Path]] = {}  # by executable: the same at every start

    def tools(self) -> dict[str, str]:
        """The executables the profile needs, resolved; raises `SandboxUnavailable` naming what is missing."""
        if self._tools is not None:
            return self._tools
        names = {"bwrap": self.bwrap, "prlimit": "prlimit"}
        if self.privileged:
            names |= {"setpriv": "setpriv", "unshare": "unshare"}
        found = {name: shutil.which(path) for name, path in names.items()}
        missing = sorted(names[name] for name, path in found.items() if path is None)
        if missing or not sys.platform.startswith("linux"):
            raise SandboxUnavailable(
                f"hosted servers run in a bubblewrap sandbox, and {', '.join(missing) or 'Linux'} is not available",
                server="", recommendation="Install bubblewrap (`apt-get install bubblewrap`; util-linux provides "
                "prlimit, setpriv and unshare), or set sandbox_bwrap to its path.")
        self._tools = {name: path for name, path in found.items() if path is not None}
        return self._tools

    def command(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None,
                writable: Sequence[Path] = (), readonly: Sequence[Path] = (),
                egress_socket: Path | None = None, limits: SandboxLimits) -> list[str]:
        """The full argv that runs `argv` sandboxed (see the module docstring).

        `env` is the child's complete environment; files its `CA_VARIABLES` name are bound read-only.
        `readonly` and `writable` paths are shown even inside a hidden folder; nothing else there is.
        """
        tools = self.tools()
        mounts = _Mounts()
        mounts.tmpfs(Path("/tmp"), limits.disk_mb * MIB, "01777")
        mounts.tmpfs(Path(HOME), limits.disk_mb * MIB, "0777")
        for name in self._system:
            path = Path(name)
            if path.is_symlink():
                mounts.args += ["--symlink", os.readlink(path), name]
            elif path.is_dir():
                mounts.bind(path)
        for name in self._etc:
            if (path := Path("/etc") / name).exists():
                mounts.bind(path)
        ca_files = [Path(value) for key, value in env.items() if key in CA_VARIABLES and os.path.isabs(value)]
        runtime = self._runtime.get(argv[0])
        if runtime is None:
            runtime = self._runtime[argv[0]] = runtime_paths([argv[0]])
        for path in _outermost([*readonly, *runtime, *(p for p in ca_files if p.exists())]):
            if not any(path.is_relative_to(other) for other in [*self.hidden, *mounts._binds]):
                mounts.bind(path)
        covered = [hide for hide in self.hidden if any(hide.is_relative_to(bound) for bound in mounts._binds)]
        for hide in covered:
            if hide.is_dir():
                mounts.tmpfs(hide, 64 * 1024, "0755")
            elif hide.exists():
                mounts.bind(Path("/dev/null"), hide)
        # What the caller names inside a hidden folder (the session's folder, an installed package) is
        # shown after all: only that path, on top of the hiding tmpfs.
        for path in _outermost(p for p in map(Path, readonly) if any(p.is_relative_to(hide) for hide in self.hidden)):
            mounts.bind(path)
        for path in writable:
            mounts.bind(path, writable=True)
        for path in readonly:  # the caller's own read-only paths inside a hidden folder (an installed package)
            if any(path == hide or path.is_relative_to(hide) for hide in self.hidden):
                mounts.bind(path)
        for hide in covered:
            if hide.is_dir():  # read-only once the writable folders inside it are mounted
                mounts.args += ["--remount-ro", str(hide)]
        inner = [*argv]
        if egress_socket is not None:
            run = Path(RUN)
            mounts.bind(LAUNCHER, run / LAUNCHER.name)
            mounts.bind(BRIDGE, run / BRIDGE.name)
            mounts.bind(egress_socket, run / "egress.sock")
            inner = [str(Path(sys.executable).resolve()), "-I", "-S", str(run / LAUNCHER.name),
                     str(run / BRIDGE.name), str(run / "egress.sock"), "--", *argv]
        inner = [tools["prlimit"], *limits.rlimits(), "--", *inner]
        options = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                   "--die-with-parent", "--new-session", "--hostname", "sandbox"]
        if self.privileged:
            uid = str(self.uid)
            options += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
            inner = [tools["setpriv"], f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--",
                     tools["unshare"], "--user", f"--map-user={uid}", f"--map-group={uid}", "--", *inner]
        else:
            options += ["--unshare-user", "--uid", str(self.uid), "--gid", str(self.uid), "--cap-drop", "ALL"]
        return [tools["bwrap"], *options, *mounts.args, "--proc", "/proc", "--dev", "/dev",
                "--chdir", cwd or HOME, "--", *inner]

    def prepare(self, folder: Path) -> Path:
        """Create a session's writable folder (0700), owned by the sandbox's uid when the hub is root."""
        folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # other sessions' folders: not listable
        folder.mkdir(mode=0o700, exist_ok=True)
        if self.privileged:
            os.chown(folder, self.uid, self.uid)
        return folder

    def grant(self, socket_path: Path) -> None:
        """Let the sandbox's uid connect to a Unix socket the hub serves it (the egress proxy's)."""
        if self.privileged:
            os.chown(socket_path, self.uid, self.uid)


def folder_size(folder: Path, limit: int) -> int:
    """Bytes in the files under `folder` (allocated blocks, so sparse files count what they use);
    stops counting once past `limit` (a flood of small files costs no more than needed)."""
    total = 0
    stack = [folder]
    while stack and total <= limit:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    info = entry.stat(follow_symlinks=False)
                    total += max(info.st_blocks * 512, 4096 if entry.is_file(follow_symlinks=False) else 0)
            except OSError:
                continue
    return total
