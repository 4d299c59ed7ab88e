"""The data folder is 0700 and every file the hub keeps in it 0600, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_hub.private_files import append_text, private_dir, private_file, tighten
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import asgi_client


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _modes(folder: Path) -> dict[str, int]:
    """Mode bits of everything under `folder` but symbolic links, by relative path."""
    found = {".": stat.S_IMODE(folder.stat().st_mode)}
    for path in folder.rglob("*"):
        if not path.is_symlink():
            found[str(path.relative_to(folder))] = stat.S_IMODE(path.lstat().st_mode)
    return found


async def test_data_files_are_private(tmp_path: Path, registry: Registry, umask_022: None) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / "left-by-an-earlier-version.txt").write_text("x")  # 0644 under this umask
    outside = tmp_path / "outside.txt"
    outside.write_text("not the hub's")
    os.chmod(outside, 0o644)
    (data / "link").symlink_to(outside)
    settings = Settings.load(data_dir=data, connect_timeout=20, restart_backoff=0.05)
    async with asgi_client(settings, registry) as (http, _):
        for text in ("a", "b"):
            response = await http.post("/v1/tools/call", json={"server": "test/probe", "tool": "echo",
                                                                "arguments": {"text": text}})
            assert response.status_code == 200, response.text
        assert (await http.get("/v1/audit/tool-calls")).json()["data"]
        running = _modes(data)
    stopped = _modes(data)
    for modes in (running, stopped):
        assert {"records.sqlite3", "encryption-keys", "logs", "left-by-an-earlier-version.txt"} <= set(modes)
        assert any(name.startswith("logs/") for name in modes)  # the probe's stderr log
        wide = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
        assert not wide, f"readable by group or others: {wide}"
    assert "records.sqlite3-wal" in running
    assert modes["."] == 0o700 and modes["records.sqlite3"] == 0o600
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # a symbolic link is not followed


def test_helpers_set_modes_whatever_the_umask(tmp_path: Path, umask_022: None) -> None:
    folder = private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(private_file(folder / "db").stat().st_mode) == 0o600
    with append_text(folder / "log") as log:
        log.write("line\n")
    assert stat.S_IMODE((folder / "log").stat().st_mode) == 0o600
    wide = folder / "wide"
    wide.mkdir(mode=0o777)
    os.chmod(wide, 0o777)
    (wide / "f").write_text("x")
    os.chmod(wide / "f", 0o666)
    tighten(folder)
    assert stat.S_IMODE(wide.stat().st_mode) == 0o700 and stat.S_IMODE((wide / "f").stat().st_mode) == 0o600
