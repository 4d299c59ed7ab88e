"""Hosted children's stderr: through the hub, secrets scrubbed, into a capped log that rotates.

Every hosted child's stderr is a pipe the hub reads (never the log file itself), so a server
cannot fill the disk by writing: past `max_bytes` the log moves to `<log>.1` (replacing the
previous one) and a new one starts, so a server's logs take at most twice `max_bytes`. The pump
reads chunks, not lines, so a flood without newlines is bounded the same way, and it keeps up
with a writer as fast as the disk (the child blocks on a full pipe, never the hub).
"""

from __future__ import annotations

import asyncio
import codecs
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TextIO

import anyio

from .private_files import append_text
from .scrubbing import Scrubber, TextStream

CHUNK = 64 * 1024


class RotatingLog:
    """An append-only text log that moves to `<name>.1` once past `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._file = append_text(path)  # closed by close()
        self._size = self._file.tell()

    def write(self, text: str) -> None:
        if not text:
            return
        data = text.encode("utf-8", "replace")
        while data:
            room = max(self.max_bytes - self._size, 0)
            if room == 0:
                self._rotate()
                room = self.max_bytes
            piece, data = data[:room], data[room:]
            self._file.write(piece.decode("utf-8", "ignore"))
            self._size += len(piece)
        self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._file = append_text(self.path)
        self._size = 0

    def close(self) -> None:
        self._file.close()


@asynccontextmanager
async def child_stderr(path: Path, scrubber: Scrubber, max_bytes: int) -> AsyncIterator[TextIO]:
    """A pipe to give a child as its stderr; what it writes reaches `path` scrubbed, capped and rotated."""
    read_fd, write_fd = os.pipe()
    writer = os.fdopen(write_fd, "w", encoding="utf-8")
    reader = asyncio.StreamReader(limit=CHUNK)
    loop = asyncio.get_running_loop()
    pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb"))
    drained = anyio.Event()

    async def pump() -> None:
        log = RotatingLog(path, max_bytes)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        stream = TextStream(scrubber)
        try:
            while chunk := await reader.read(CHUNK):
                log.write(stream.feed(decoder.decode(chunk)))
            log.write(stream.feed(decoder.decode(b"", final=True)) + stream.flush())
        finally:
            log.close()
            drained.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            try:
                yield writer
            finally:
                writer.close()  # the child's copy closed when it exited; now the pipe ends
                with anyio.move_on_after(2, shield=True):
                    await drained.wait()
                tg.cancel_scope.cancel()
    finally:
        pipe.close()
