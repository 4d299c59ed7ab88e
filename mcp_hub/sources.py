"""Where this host installs packages from: the npm registry and pip's indexes, as the operator configured them.

Read once, from the hub's side (the operator's own configuration, not a package's):
`npm config get registry` and `pip config list` (index-url, extra-index-url, find-links,
cert). A sandboxed install may then reach exactly these hosts through the egress proxy, and
local sources (`file://` indexes, find-links folders, the CA file) are bound into the sandbox
read-only instead of over the network. pip inside the install is given these settings as
arguments and reads no configuration file of its own.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio

NPM_DEFAULT = "https://registry.npmjs.org/"
PYPI_DEFAULT = "https://pypi.org/simple"
PYPI_FILES = "files.pythonhosted.org"  # where pypi.org's simple index points for the files themselves


@dataclass(frozen=True)
class Sources:
    """The registries an install may use: npm's registry URL, pip's arguments, hosts and local paths."""

    npm_registry: str = NPM_DEFAULT
    npm_cafile: str | None = None
    index_url: str = PYPI_DEFAULT
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    cert: str | None = None

    @property
    def npm_hosts(self) -> tuple[str, ...]:
        return _hosts([self.npm_registry])

    @property
    def npm_arguments(self) -> list[str]:
        return ["--registry", self.npm_registry, *(["--cafile", self.npm_cafile] if self.npm_cafile else [])]

    @property
    def npm_paths(self) -> tuple[Path, ...]:
        return (Path(self.npm_cafile),) if self.npm_cafile else ()

    @property
    def pip_hosts(self) -> tuple[str, ...]:
        hosts = _hosts([self.index_url, *self.extra_index_urls, *self.find_links])
        return (*hosts, PYPI_FILES) if "pypi.org" in hosts else hosts

    @property
    def pip_paths(self) -> tuple[Path, ...]:
        """Local folders and files pip reads (file:// indexes, find-links folders, the CA file)."""
        paths = [_local_path(item) for item in (self.index_url, *self.extra_index_urls, *self.find_links)]
        return tuple(dict.fromkeys([*(p for p in paths if p is not None), *([Path(self.cert)] if self.cert else [])]))

    @property
    def pip_arguments(self) -> list[str]:
        arguments = ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            arguments += ["--extra-index-url", url]
        for link in self.find_links:
            arguments += ["--find-links", link]
        return arguments + (["--cert", self.cert] if self.cert else [])


def _hosts(urls: Iterable[str]) -> tuple[str, ...]:
    hosts = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.hostname:
            hosts.append(parts.hostname)
    return tuple(dict.fromkeys(hosts))


def _local_path(item: str) -> Path | None:
    parts = urlsplit(item)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if not parts.scheme and item.startswith("/"):
        return Path(item)
    return None


def parse_pip_config(text: str) -> dict[str, str]:
    """`pip config list` output (`global.index-url='…'`) as option -> value, later lines winning."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if not sep:
            continue
        option = key.rsplit(".", 1)[-1].strip()
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, str):
            options[option] = value
    return options


async def _output(argv: list[str]) -> str:
    try:
        with anyio.fail_after(30):
            result = await anyio.run_process(argv, check=False)
    except (OSError, TimeoutError):
        return ""
    return result.stdout.decode("utf-8", "replace") if result.returncode == 0 else ""


async def discover_sources(python: str) -> Sources:
    """This host's configured registries (defaults where nothing is configured)."""
    npm = shutil.which("npm")
    registry = (await _output([npm, "config", "get", "registry"])).strip() if npm else ""
    cafile = (await _output([npm, "config", "get", "cafile"])).strip() if npm else ""
    options = parse_pip_config(await _output([python, "-m", "pip", "config", "list"]))
    return Sources(
        npm_registry=registry if registry.startswith(("http://", "https://")) else NPM_DEFAULT,
        npm_cafile=cafile if cafile.startswith("/") else None,
        index_url=options.get("index-url") or PYPI_DEFAULT,
        extra_index_urls=tuple(options.get("extra-index-url", "").split()),
        find_links=tuple(options.get("find-links", "").split()),
        cert=options.get("cert") or None,
    )
