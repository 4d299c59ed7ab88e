"""The audit writer process: chains and commits the records the hub hands over, and acknowledges them.

The hub's event loop is its bottleneck under load; this process takes the hashing, the SQL
and the commits off it (and off its GIL). The protocol is JSON lines:

- hub -> child, first line: `{"where": Database.where(), "max_batch": int, "commit_delay": float}`; then one line per
  `write()`: `{"id": int, "t": time.monotonic() when handed over, "records": [record content, ...]}`, plus
  `"intents": [audit_intents row, ...]` and `"now": true` for the intents of calls about to be sent (a
  transaction holding one does not wait for more writes: the call waits for it), and `"done": [intent id, ...]`
  for the intents that these records complete.
- child -> hub, first `{"ready": true}` once its connection is open (or `{"ready": false, "error": ...}`),
  then one line per transaction: `{"ids": [int, ...], "ok": true, "records": n, "seconds": s}`
  once those writes are committed, or `{"ids": [...], "ok": false, "error": "<exception type>"}`.

Group commit happens here: every line that has arrived by the time a transaction starts
joins it (up to `max_batch` writes). End of input (the hub closed the pipe, or died) ends
the process once what arrived is committed. Nothing secret is written to stderr: errors
are named by type only.

A connection the server closed (PostgreSQL restarted, the backend terminated, the network
cut) is replaced (`Reconnecting`): the transaction is tried once more on a new connection,
and while none can be opened, writes are refused at once (the hub answers 503
`audit_unavailable`) and a new connection is tried with a growing backoff, so nothing
queues up while the database is away and the trail recovers by itself once it is back.
The chain stays whole: a transaction that failed committed nothing, and each one chains
onto the head it reads under its lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Any

from .. import jsoncodec
from ..database import BlockingWriter, Steps, open_blocking_writer
from .record import AuditRecord
from .store import AuditStore

READ_SIZE = 1 << 20
# Under concurrency a transaction waits for more writes, as PostgreSQL's commit_delay with
# commit_siblings does: fewer commits (and fsyncs), a little more latency per tool call. It waits
# until its oldest write has waited `commit_delay` seconds (setting audit_commit_delay) since the
# hub handed it over, so writes that queued up during the last commit (a slow fsync) do not wait
# a whole delay more. Concurrency shows itself when writes queue up while a transaction commits
# (two or more waiting); waiting stops once MISSES waits in a row gathered nothing, so an idle
# hub, or one client calling tools one after another, does not wait.
MISSES = 2
BACKOFF = (0.05, 5.0)  # seconds before the first and at most between attempts to open a lost connection


class Unreachable(Exception):
    """No connection to the records database for now; the next attempt is after the backoff."""


class Reconnecting:
    """A `BlockingWriter` that replaces a lost connection, backing off while it cannot be opened."""

    def __init__(self, where: dict[str, Any], writer: BlockingWriter,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._where = where
        self._writer: BlockingWriter | None = writer
        self._clock = clock
        self._backoff = BACKOFF[0]
        self._retry_at = 0.0

    def run(self, transaction: Callable[[], Steps[None]]) -> None:
        """Run the transaction `transaction()` makes; once more on a new connection if the connection was lost."""
        for attempt in (1, 2):
            writer = self._connected()
            try:
                writer.run(transaction())
                return
            except Exception:
                if not writer.lost:
                    raise  # this transaction's failure; the connection is fine
                self.close()
                if attempt == 2:
                    raise
        # A COMMIT whose answer was lost may have committed: then the retry's ids collide and it fails
        # (503, the records are in the chain), never a record twice.

    def _connected(self) -> BlockingWriter:
        if self._writer is not None:
            return self._writer
        now = self._clock()
        if now < self._retry_at:
            raise Unreachable("the records database is unreachable; retrying shortly")
        try:
            self._writer = open_blocking_writer(**self._where)
        except Exception:
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF[1])
            raise
        self._backoff, self._retry_at = BACKOFF[0], 0.0
        return self._writer

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):  # a lost connection may fail to close; it is gone either way
                writer.close()


def _commit(writer: Reconnecting, lines: list[bytes], out: Any) -> None:
    messages = [jsoncodec.loads(line) for line in lines]
    ids = [message["id"] for message in messages]
    records = [AuditRecord(**content) for message in messages for content in message["records"]]
    intents = [row for message in messages for row in message.get("intents", ())]
    done = [ident for message in messages for ident in message.get("done", ())]
    started = time.perf_counter()
    try:
        writer.run(lambda: AuditStore.chain_and_insert(records, intents, done))
    except Exception as exc:  # reported to the hub, which withholds the results (AuditUnavailable)
        ack = {"ids": ids, "ok": False, "error": type(exc).__name__}
    else:
        ack = {"ids": ids, "ok": True, "records": len(records), "seconds": time.perf_counter() - started}
    out.write(jsoncodec.dumps(ack) + b"\n")
    out.flush()


def main() -> int:
    stdin, out = sys.stdin.buffer.fileno(), sys.stdout.buffer
    buffer = b""
    while b"\n" not in buffer:
        chunk = os.read(stdin, READ_SIZE)
        if not chunk:
            return 0
        buffer += chunk
    first, buffer = buffer.split(b"\n", 1)
    config = json.loads(first)
    max_batch = int(config["max_batch"])
    delay = float(config["commit_delay"])
    try:
        writer = Reconnecting(config["where"], open_blocking_writer(**config["where"]))
    except Exception as exc:  # named, never printed: the message could hold the database's location
        out.write(json.dumps({"ready": False, "error": type(exc).__name__}).encode() + b"\n")
        out.flush()
        return 1
    out.write(b'{"ready":true}\n')
    out.flush()
    misses = MISSES  # consecutive waits that gathered nothing; at MISSES transactions stop waiting
    try:
        while True:
            queued = buffer.count(b"\n")
            if delay and queued >= 2:
                misses = 0
            urgent = b'"now":true' in buffer  # an intent: a tool call waits for it (the hub's encoder writes no spaces)
            if delay and misses < MISSES and 0 < queued < max_batch and not urgent:
                oldest = float(jsoncodec.loads(buffer[:buffer.index(b"\n")])["t"])
                wait = min(delay, oldest + delay - time.monotonic())
                more = _gather(stdin, wait)  # let concurrent writes share the transaction
                misses = 0 if b"\n" in more else misses + 1
                buffer += more
            *lines, buffer = buffer.split(b"\n")
            while lines:  # what arrived while the last transaction ran: one transaction (up to max_batch lines)
                batch, lines = lines[:max_batch], lines[max_batch:]
                _commit(writer, batch, out)
            chunk = os.read(stdin, READ_SIZE)  # blocks until the hub writes, or closes the pipe
            if not chunk:
                return 0
            buffer += chunk
    finally:
        writer.close()


def _gather(fd: int, seconds: float) -> bytes:
    """What arrives on `fd` within `seconds` (at most the delay): one sleep, then what is there (a wake-up
    per write would cost both processes CPU that the cores, shared with the hub, do not have under load)."""
    if seconds > 0:
        time.sleep(seconds)
    data = b""
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, READ_SIZE)
        if not chunk:  # end of input: the caller's next read sees it too
            break
        data += chunk
    return data


if __name__ == "__main__":
    sys.exit(main())
