"""The `files` MCP server: read and search files under one root directory.

Nothing is ever written. Paths are relative to the root; escapes (``..``,
absolute paths, symbolic links leading out, NUL bytes) are refused by
`Sandbox`.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import re2
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_hub_servers.files.sandbox import Sandbox, SandboxError

_READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
_SNIFF_BYTES = 8192
_MAX_MATCH_LINE = 4096  # longer lines are cut before regex matching and in results
_SEARCH_SECONDS = 10.0

PathArg = Annotated[str, Field(description="Path relative to the root, e.g. 'docs/guide.md'; '.' is the root.")]


class Entry(BaseModel):
    """A file or directory."""

    path: str = Field(description="path relative to the root")
    type: Literal["file", "directory", "other"]
    size: int | None = Field(description="bytes (files only)")
    modified: str = Field(description="last modification, ISO 8601 UTC")


class Listing(BaseModel):
    """Contents of a directory."""

    path: str
    entries: list[Entry]
    truncated: bool


class FileContent(BaseModel):
    """A window of lines from a text file."""

    path: str
    content: str
    start_line: int = Field(description="1-based number of the first line returned")
    end_line: int = Field(description="number of the last line returned (start_line - 1 if none)")
    total_lines: int
    truncated: bool = Field(description="true if lines after end_line were not returned")
    next_offset: int | None = Field(description="offset to pass to continue reading, if truncated")


class Match(BaseModel):
    """A file found by a search, with the matching line when searching content."""

    path: str
    line: int | None = None
    text: str | None = None


class SearchResult(BaseModel):
    """Search hits."""

    matches: list[Match]
    files_scanned: int
    truncated: bool = Field(description="true if the search stopped at max_results or its time budget")


class FileInfo(BaseModel):
    """Metadata of a file or directory."""

    path: str
    type: Literal["file", "directory", "other"]
    size: int
    modified: str
    permissions: str = Field(description="e.g. 'rw-r--r--'")
    is_text: bool | None = Field(description="whether the file looks like text (files only)")
    line_count: int | None = Field(description="lines, for text files within the size limit")
    mime_type: str | None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _is_binary(path: Path) -> bool:
    with path.open("rb") as handle:
        return b"\x00" in handle.read(_SNIFF_BYTES)


def _name_matcher(pattern: str | None, case_sensitive: bool) -> Callable[[str], bool]:
    """A predicate on root-relative paths: glob on the name, or on the path if `pattern` has a '/'."""
    if not pattern:
        return lambda rel: True
    wanted = pattern if case_sensitive else pattern.lower()

    def matches(rel: str) -> bool:
        subject = rel if case_sensitive else rel.lower()
        if "/" in wanted:
            return PurePosixPath(subject).match(wanted)
        return fnmatch.fnmatchcase(subject.rsplit("/", 1)[-1], wanted)

    return matches


def build_server(
    *,
    root: str | Path,
    max_file_bytes: int = 10 * 1024 * 1024,
    max_read_chars: int = 100_000,
) -> MCPServer:
    """Build the files server.

    Args:
        root: directory whose contents are exposed (read-only).
        max_file_bytes: larger files are not read or searched.
        max_read_chars: most characters one read_file call returns.

    Raises:
        ValueError: if `root` is not a directory.
    """
    sandbox = Sandbox(root)

    def resolve(path: str) -> Path:
        try:
            return sandbox.resolve(path)
        except SandboxError as exc:
            raise ToolError(str(exc)) from None

    def read_text(path: Path, shown: str) -> str:
        if path.is_dir():
            raise ToolError(f"{shown!r} is a directory; use list_directory")
        if not path.is_file():
            raise ToolError(f"{shown!r} is not a regular file (device, socket or pipe) and cannot be read")
        try:
            size = path.stat().st_size
            if size > max_file_bytes:
                raise ToolError(f"{shown!r} is {size} bytes; files over {max_file_bytes} bytes are not read")
            if _is_binary(path):
                raise ToolError(f"{shown!r} is a binary file; only text files can be read (file_info describes it)")
            return path.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            raise ToolError(f"cannot read {shown!r}: {exc.strerror or exc}") from None

    server = MCPServer(
        "files",
        version="1.0.0",
        instructions=(
            "Read-only access to one directory tree. All paths are relative to its root ('.'). "
            "Use list_directory to explore, search_files to find files by name or content, read_file to read."
        ),
    )

    @server.tool(annotations=_READ_ONLY)
    def list_directory(
        path: PathArg = ".",
        depth: Annotated[int, Field(ge=1, le=10, description="1 lists only this directory; more recurses.")] = 1,
        max_entries: Annotated[int, Field(ge=1, le=5000, description="Stop after this many entries.")] = 500,
    ) -> Listing:
        """List files and subdirectories (with sizes and modification times) of a directory under the root."""
        start = resolve(path)
        if not start.is_dir():
            raise ToolError(f"{path!r} is a file, not a directory; use file_info or read_file")
        shown = sandbox.display(path)
        entries: list[Entry] = []
        queue = deque([(start, shown, 1)])
        truncated = False
        while queue and not truncated:
            directory, rel, level = queue.popleft()
            try:
                children = sorted(directory.iterdir(), key=lambda p: p.name.lower())
            except OSError:
                continue
            for child in children:
                real = Path(os.path.realpath(child))
                if not sandbox.contains(real):
                    continue  # links leading out of the root are not shown
                try:
                    info = real.stat()
                except OSError:
                    continue  # dangling link or unreadable
                if len(entries) == max_entries:
                    truncated = True
                    break
                child_rel = child.name if rel == "." else f"{rel}/{child.name}"
                is_dir = stat.S_ISDIR(info.st_mode)
                entries.append(
                    Entry(
                        path=child_rel,
                        type="directory" if is_dir else "file" if stat.S_ISREG(info.st_mode) else "other",
                        size=None if is_dir else info.st_size,
                        modified=_iso(info.st_mtime),
                    )
                )
                if is_dir and level < depth and not child.is_symlink():
                    queue.append((real, child_rel, level + 1))
        return Listing(path=shown, entries=entries, truncated=truncated)

    @server.tool(annotations=_READ_ONLY)
    def read_file(
        path: PathArg,
        offset: Annotated[int, Field(ge=1, description="1-based line number to start at.")] = 1,
        limit: Annotated[int, Field(ge=1, le=20_000, description="Maximum number of lines to return.")] = 2000,
    ) -> FileContent:
        """Read a UTF-8 text file under the root, optionally a window of lines (offset/limit).

        Long files come back in pieces: if `truncated` is true, call again with `next_offset`.
        Binary files and very large files are refused.
        """
        real = resolve(path)
        shown = sandbox.display(path)
        lines = read_text(real, shown).splitlines(keepends=True)
        chosen: list[str] = []
        used = 0
        for line in lines[offset - 1 : offset - 1 + limit]:
            if chosen and used + len(line) > max_read_chars:
                break
            chosen.append(line[:max_read_chars])
            used += len(line)
        end = offset - 1 + len(chosen)
        truncated = end < len(lines)
        return FileContent(
            path=shown,
            content="".join(chosen),
            start_line=offset,
            end_line=end,
            total_lines=len(lines),
            truncated=truncated,
            next_offset=end + 1 if truncated else None,
        )

    @server.tool(annotations=_READ_ONLY)
    def search_files(
        name: Annotated[
            str | None,
            Field(
                description="Glob on file names, e.g. '*.md' or 'report-2024*'; with a '/', on paths ('docs/*.txt')."
            ),
        ] = None,
        content: Annotated[
            str | None, Field(description="Text to find inside files (a regular expression if regex is true).")
        ] = None,
        path: PathArg = ".",
        regex: Annotated[bool, Field(description="Treat `content` as a regular expression (RE2 syntax: Python's, "
                                           "without backreferences or lookaround).")] = False,
        case_sensitive: bool = False,
        include_hidden: Annotated[bool, Field(description="Also search dot-files and dot-directories.")] = False,
        max_results: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> SearchResult:
        """Find files under a directory by name (glob) and/or by content (text or regex).

        With `content`, each matching line is returned with its line number; otherwise matching
        files are listed. Binary and very large files are skipped for content search.
        """
        start = resolve(path)
        if not start.is_dir():
            raise ToolError(f"{path!r} is not a directory")
        if not name and not content:
            raise ToolError("give `name` (a glob such as '*.txt'), `content` (text to find), or both")
        finder = _content_finder(content, regex, case_sensitive) if content else None
        matches_name = _name_matcher(name, case_sensitive)
        matches: list[Match] = []
        scanned = 0
        deadline = time.monotonic() + _SEARCH_SECONDS
        truncated = False
        for rel, real in sandbox.walk(start, include_hidden=include_hidden):
            if len(matches) >= max_results or time.monotonic() > deadline:
                truncated = True
                break
            if not matches_name(rel):
                continue
            scanned += 1
            if finder is None:
                matches.append(Match(path=rel))
                continue
            try:
                if real.stat().st_size > max_file_bytes or _is_binary(real):
                    continue
                text = real.read_bytes().decode("utf-8", errors="replace")
            except OSError:
                continue
            for number, line in enumerate(text.splitlines(), start=1):
                snippet = line[:_MAX_MATCH_LINE]
                if finder(snippet):
                    matches.append(Match(path=rel, line=number, text=snippet.strip()[:500]))
                    if len(matches) >= max_results:
                        break
        return SearchResult(matches=matches[:max_results], files_scanned=scanned, truncated=truncated)

    @server.tool(annotations=_READ_ONLY)
    def file_info(path: PathArg) -> FileInfo:
        """Show metadata of a file or directory: type, size, modification time, permissions,
        whether it is text, its line count and MIME type."""
        import mimetypes  # only this tool needs it

        real = resolve(path)
        info = real.stat()
        is_file = real.is_file()
        is_text: bool | None = None
        line_count = None
        if is_file:
            try:
                is_text = not _is_binary(real)
                if is_text and info.st_size <= max_file_bytes:
                    data = real.read_bytes()
                    line_count = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
            except OSError:
                pass  # unreadable: the metadata is still worth returning
        return FileInfo(
            path=sandbox.display(path),
            type="file" if is_file else "directory" if real.is_dir() else "other",
            size=info.st_size,
            modified=_iso(info.st_mtime),
            permissions=stat.filemode(info.st_mode)[1:],
            is_text=is_text,
            line_count=line_count,
            mime_type=mimetypes.guess_type(real.name)[0] if is_file else None,
        )

    return server


def _content_finder(content: str, regex: bool, case_sensitive: bool) -> Callable[[str], bool]:
    """A predicate telling whether a line contains `content`.

    A regular expression runs on RE2, whose matching time is linear in the line's length:
    a backtracking engine (Python's `re`) spends exponential time on patterns such as
    ``(a+)+$`` and pins a core for good. RE2 refuses what needs backtracking instead.
    """
    if regex:
        if len(content) > 500:
            raise ToolError("the regular expression is longer than 500 characters")
        options = re2.Options()
        options.case_sensitive = case_sensitive
        options.never_capture = True  # only "does it match" is asked
        options.log_errors = False  # a caller's bad pattern is their error, not the server's log line
        try:
            compiled = re2.compile(content, options)
        except re2.error as exc:
            reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise ToolError(f"invalid regular expression: {reason} (RE2 syntax: no backreferences or lookaround)") from None
        return lambda line: compiled.search(line) is not None
    if case_sensitive:
        return lambda line: content in line
    needle = content.casefold()
    return lambda line: needle in line.casefold()
