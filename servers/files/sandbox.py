"""Path confinement for the files server.

Every path a caller gives is relative to one root directory. `Sandbox.resolve`
refuses NUL bytes, absolute paths, any ``..`` component, and anything whose
real path (after following symbolic links) lies outside the root. Paths shown
back to callers are relative to the root, so the host layout never leaks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath


class SandboxError(Exception):
    """A path was refused or does not exist; the message is meant for the caller."""


class Sandbox:
    """A root directory and the rules for reaching files below it."""

    def __init__(self, root: str | Path) -> None:
        resolved = Path(root).expanduser().resolve()
        if not resolved.is_dir():
            raise ValueError(f"files root is not a directory: {resolved}")
        self.root = resolved

    def resolve(self, relative: str) -> Path:
        """Return the real path of an existing file or directory under the root.

        Raises:
            SandboxError: if the path is malformed, escapes the root, or does not exist.
        """
        if "\x00" in relative:
            raise SandboxError("the path contains a NUL byte")
        text = relative.strip() or "."
        if text.startswith(("/", "\\")) or PureWindowsPath(text).drive:
            raise SandboxError(
                f"absolute paths are not allowed ({text!r}); give a path relative to the root, e.g. 'docs/guide.md'"
            )
        parts = PurePosixPath(text.replace("\\", "/")).parts
        if ".." in parts:
            raise SandboxError(f"'..' is not allowed in paths ({text!r}); paths stay inside the root")
        candidate = self.root.joinpath(*parts)
        real = Path(os.path.realpath(candidate))
        if not self.contains(real):
            raise SandboxError(f"{text!r} leads outside the root (through a symbolic link) and is not accessible")
        if not real.exists():
            raise SandboxError(f"{text!r} does not exist")
        return real

    def contains(self, real: Path) -> bool:
        """Whether an already-resolved path is the root or below it."""
        return real == self.root or self.root in real.parents

    def relative(self, path: Path) -> str:
        """The caller-facing (root-relative, POSIX) form of a path lexically under the root."""
        rel = path.relative_to(self.root).as_posix()
        return rel if rel else "."

    @staticmethod
    def display(relative: str) -> str:
        """Normalised caller-facing form of a path the caller gave ('./a//b/' -> 'a/b')."""
        text = relative.strip().replace("\\", "/")
        normal = PurePosixPath(text).as_posix() if text else "."
        return normal.removeprefix("./") or "."

    def walk(self, start: Path, *, include_hidden: bool) -> Iterator[tuple[str, Path]]:
        """Yield (root-relative path, real path) of the files below `start`, sorted.

        Symbolic links to directories are not descended into; links to files
        are yielded only when their target stays inside the root.
        """
        for directory, subdirs, files in os.walk(start, followlinks=False):
            subdirs[:] = sorted(d for d in subdirs if include_hidden or not d.startswith("."))
            for name in sorted(files):
                if not include_hidden and name.startswith("."):
                    continue
                link = Path(directory, name)
                real = Path(os.path.realpath(link))
                if self.contains(real) and real.is_file():
                    yield self.relative(link), real
