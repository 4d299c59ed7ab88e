"""The `files` server: listing, reading and searching, confined to one root."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from mcp_hub_servers.files.__main__ import SAMPLE_ROOT
from mcp_hub_servers.files.server import build_server
from tests.servers.conftest import StdioCall, data, error_text, everything_said, hints

SECRET = "TOP-SECRET-OUTSIDE-THE-ROOT"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with text, a binary file, an inside link, and two links leading outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(f"{SECRET}\n")
    root = tmp_path / "root"
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "notes.txt").write_text("alpha\nbeta\ngamma\ndelta\n")
    (root / "docs" / "guide.md").write_text("# Guide\nSay Hello to the hub.\n")
    (root / "docs" / "deep" / "more.md").write_text("deeper hello\n")
    (root / ".hidden.txt").write_text("hello from a dot-file\n")
    (root / "image.bin").write_bytes(b"\x89PNG\x00\x00\x01hello")
    os.symlink(outside / "secret.txt", root / "leak.txt")
    os.symlink(outside, root / "leakdir")
    os.symlink(root / "notes.txt", root / "notes-link.txt")
    return root


async def test_tools_listed_with_hints(root: Path) -> None:
    async with Client(build_server(root=root)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"list_directory", "read_file", "search_files", "file_info"}
    for tool in tools.values():
        assert hints(tool).read_only_hint is True and hints(tool).idempotent_hint is True
        assert tool.description and tool.output_schema is not None


async def test_list_directory(root: Path) -> None:
    async with Client(build_server(root=root)) as client:
        top = data(await client.call_tool("list_directory", {}))
        deep = data(await client.call_tool("list_directory", {"path": "docs", "depth": 2}))
        capped = data(await client.call_tool("list_directory", {"max_entries": 2}))
        not_dir = await client.call_tool("list_directory", {"path": "notes.txt"})
    paths = {e["path"]: e for e in top["entries"]}
    assert set(paths) == {".hidden.txt", "docs", "image.bin", "notes-link.txt", "notes.txt"}  # no links leading out
    assert paths["docs"]["type"] == "directory" and paths["docs"]["size"] is None
    assert paths["notes.txt"]["size"] == len("alpha\nbeta\ngamma\ndelta\n")
    assert [e["path"] for e in deep["entries"]] == ["docs/deep", "docs/guide.md", "docs/deep/more.md"]
    assert len(capped["entries"]) == 2 and capped["truncated"] is True
    assert "is a file" in error_text(not_dir)


async def test_read_file_windows_and_limits(root: Path) -> None:
    async with Client(build_server(root=root, max_read_chars=12)) as client:
        whole = data(await client.call_tool("read_file", {"path": "notes.txt"}))
        window = data(await client.call_tool("read_file", {"path": "./notes.txt", "offset": 2, "limit": 2}))
        via_link = data(await client.call_tool("read_file", {"path": "notes-link.txt", "offset": 4}))
        binary = await client.call_tool("read_file", {"path": "image.bin"})
        directory = await client.call_tool("read_file", {"path": "docs"})
        missing = await client.call_tool("read_file", {"path": "nope.txt"})
    # 12 characters fit "alpha\nbeta\n" but not "gamma\n" too: the rest comes with next_offset.
    assert whole["content"] == "alpha\nbeta\n" and whole["truncated"] is True and whole["next_offset"] == 3
    assert whole["total_lines"] == 4
    assert window == {
        "path": "notes.txt",
        "content": "beta\ngamma\n",
        "start_line": 2,
        "end_line": 3,
        "total_lines": 4,
        "truncated": True,
        "next_offset": 4,
    }
    assert via_link["content"] == "delta\n" and via_link["truncated"] is False and via_link["next_offset"] is None
    assert "binary file" in error_text(binary)
    assert "is a directory" in error_text(directory)
    assert "does not exist" in error_text(missing)


async def test_large_files_are_refused(root: Path) -> None:
    (root / "big.txt").write_text("x" * 5000)
    async with Client(build_server(root=root, max_file_bytes=1000)) as client:
        result = await client.call_tool("read_file", {"path": "big.txt"})
    assert "files over 1000 bytes are not read" in error_text(result)


ESCAPES = [
    ("../outside/secret.txt", "'..' is not allowed"),
    ("docs/../../outside/secret.txt", "'..' is not allowed"),
    ("docs\\..\\..\\outside\\secret.txt", "'..' is not allowed"),
    ("..", "'..' is not allowed"),
    ("/etc/passwd", "absolute paths are not allowed"),
    ("ABSOLUTE", "absolute paths are not allowed"),  # replaced by the real absolute path below
    ("C:\\Windows\\win.ini", "absolute paths are not allowed"),
    ("leak.txt", "leads outside the root"),
    ("leakdir/secret.txt", "leads outside the root"),
    ("leakdir", "leads outside the root"),
    ("notes.txt\x00.md", "NUL byte"),
]


@pytest.mark.parametrize(("path", "reason"), ESCAPES)
@pytest.mark.parametrize("tool", ["read_file", "file_info", "list_directory", "search_files"])
async def test_escapes_are_refused(root: Path, tool: str, path: str, reason: str) -> None:
    if path == "ABSOLUTE":
        path = str(root.parent / "outside" / "secret.txt")
    arguments = {"path": path}
    if tool == "search_files":
        arguments["content"] = "SECRET"
    async with Client(build_server(root=root)) as client:
        result = await client.call_tool(tool, arguments)
    assert reason in error_text(result)
    assert SECRET not in everything_said(result)
    assert str(root.parent) not in everything_said(result) or path.startswith(str(root.parent))


async def test_search_by_name_and_content(root: Path) -> None:
    async with Client(build_server(root=root)) as client:
        by_name = data(await client.call_tool("search_files", {"name": "*.MD"}))
        by_path = data(await client.call_tool("search_files", {"name": "docs/deep/*.md"}))
        by_text = data(await client.call_tool("search_files", {"content": "hello"}))
        strict = data(await client.call_tool("search_files", {"content": "Hello", "case_sensitive": True}))
        hidden = data(await client.call_tool("search_files", {"content": "hello", "include_hidden": True}))
        by_regex = data(
            await client.call_tool("search_files", {"content": r"^(beta|delta)$", "regex": True, "name": "notes.txt"})
        )
        capped = data(await client.call_tool("search_files", {"content": "a", "max_results": 2}))
        bad_regex = await client.call_tool("search_files", {"content": "(", "regex": True})
        nothing = await client.call_tool("search_files", {})
    assert [m["path"] for m in by_name["matches"]] == ["docs/guide.md", "docs/deep/more.md"]
    assert [m["path"] for m in by_path["matches"]] == ["docs/deep/more.md"]
    # Binary files are skipped for content, dot-files unless asked, links outside always.
    assert [(m["path"], m["line"]) for m in by_text["matches"]] == [("docs/guide.md", 2), ("docs/deep/more.md", 1)]
    assert by_text["matches"][0]["text"] == "Say Hello to the hub."
    assert [m["path"] for m in strict["matches"]] == ["docs/guide.md"]
    assert ".hidden.txt" in [m["path"] for m in hidden["matches"]]
    assert [m["line"] for m in by_regex["matches"]] == [2, 4]
    assert len(capped["matches"]) == 2 and capped["truncated"] is True
    assert "invalid regular expression" in error_text(bad_regex)
    assert "give `name`" in error_text(nothing)


async def test_catastrophic_regex_finishes_quickly(call_over_stdio: StdioCall, root: Path) -> None:
    """`(a+)+$` against `aaa…b` takes exponential time in a backtracking engine (it pinned a core for good)."""
    (root / "trap.txt").write_text("a" * 4000 + "b\n" + "a" * 40 + "b\n" + "aaa\n")
    started = time.monotonic()
    with anyio.fail_after(40):  # not a benchmark: without the fix the call never ends
        result, _ = await call_over_stdio("files", "search_files", {"content": "(a+)+$", "regex": True, "name": "trap.txt"},
                                          env={"FILES_ROOT": str(root)})
    assert [m["line"] for m in data(result)["matches"]] == [3]
    assert time.monotonic() - started < 30


async def test_regex_needing_backtracking_is_a_clear_error(root: Path) -> None:
    async with Client(build_server(root=root)) as client:
        backreference = await client.call_tool("search_files", {"content": r"(a)\1", "regex": True})
        lookahead = await client.call_tool("search_files", {"content": r"al(?=pha)", "regex": True})
        insensitive = data(await client.call_tool("search_files", {"content": "^ALPHA$", "regex": True, "name": "notes.txt"}))
    assert "invalid regular expression" in error_text(backreference) and "RE2" in error_text(backreference)
    assert "invalid regular expression" in error_text(lookahead)
    assert [(m["path"], m["line"]) for m in insensitive["matches"]] == [("notes.txt", 1)]


async def test_search_never_reaches_outside(root: Path) -> None:
    async with Client(build_server(root=root)) as client:
        result = await client.call_tool("search_files", {"content": SECRET, "include_hidden": True})
        names = await client.call_tool("search_files", {"name": "secret*"})
    assert data(result)["matches"] == [] and data(names)["matches"] == []
    assert SECRET not in everything_said(result)


async def test_file_info(root: Path) -> None:
    async with Client(build_server(root=root)) as client:
        text = data(await client.call_tool("file_info", {"path": "docs/guide.md"}))
        binary = data(await client.call_tool("file_info", {"path": "image.bin"}))
        folder = data(await client.call_tool("file_info", {"path": "."}))
    assert text["type"] == "file" and text["is_text"] is True and text["line_count"] == 2
    assert text["mime_type"] == "text/markdown" and text["permissions"].startswith("rw")
    assert binary["is_text"] is False and binary["line_count"] is None and binary["size"] == 12
    assert folder["path"] == "." and folder["type"] == "directory"


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        build_server(root=tmp_path / "missing")


async def test_bundled_sample_tree() -> None:
    async with Client(build_server(root=SAMPLE_ROOT)) as client:
        listing = data(await client.call_tool("list_directory", {"depth": 2}))
        recipes = data(await client.call_tool("search_files", {"content": "baking powder"}))
    paths = {e["path"] for e in listing["entries"]}
    assert {"README.md", "notes/todo.txt", "recipes/pancakes.md", "src/greet.py", "data/cities.csv"} <= paths
    assert [(m["path"], m["line"]) for m in recipes["matches"]] == [
        ("recipes/pancakes.md", 5),
        ("recipes/pancakes.md", 12),
    ]


async def test_served_over_stdio(call_over_stdio: StdioCall, root: Path) -> None:
    result, tools = await call_over_stdio("files", "read_file", {"path": "README.md"})
    assert "search_files" in tools
    assert "# Sample files" in data(result)["content"]

    result, _ = await call_over_stdio("files", "read_file", {"path": "leak.txt"}, env={"FILES_ROOT": str(root)})
    assert "leads outside the root" in error_text(result)
