"""Files only the hub's user can read: the data folder 0700, everything the hub writes in it 0600.

The data folder holds the records database (audit trail, API key hashes, publishers'
registrations), the encryption keys and hosted servers' stderr logs. Modes are set at
creation (`os.open` with a mode, then `fchmod`, so neither the umask nor a moment of a
wider mode lets another user in), and `tighten` drops group and other bits from whatever
an earlier version, or a umask, left behind in the folder when the hub starts.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TextIO

DIR_MODE, FILE_MODE = 0o700, 0o600


def private_dir(path: Path) -> Path:
    """`path` (and missing parents) created if absent; `path` itself made 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """`path` created empty if absent, and made 0600 (SQLite gives its -wal and -shm files the
    mode of the database file, so creating the database this way covers them too). A symbolic
    link is followed: an operator may keep the database on another volume."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def append_text(path: Path) -> TextIO:
    """`path` opened to append UTF-8 text, created 0600; never through a symbolic link (a log's
    folder is one a hosted server might write to)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "a", encoding="utf-8")


def tighten(folder: Path) -> None:
    """Drop group and other permissions from `folder` and everything under it (at start-up).

    Symbolic links are neither followed nor changed: one planted by a hosted server must not
    make the hub chmod a file elsewhere.
    """
    os.chmod(folder, DIR_MODE)
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            try:
                info = os.lstat(path)
                if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o077:
                    os.chmod(path, stat.S_IMODE(info.st_mode) & ~0o077)
            except (FileNotFoundError, PermissionError):  # removed while we walked; another user's file
                continue
