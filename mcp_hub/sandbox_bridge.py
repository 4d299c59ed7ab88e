"""Inside a sandbox: 127.0.0.1:PROXY_PORT spliced to the hub's egress proxy on a Unix socket.

A sandbox with `network: egress` has its own network namespace with only loopback in it; the
hub's `EgressProxy` socket is bind-mounted in. HTTP clients only know TCP proxies
(`HTTP(S)_PROXY=http://127.0.0.1:3128`), so this bridge accepts on that port and splices each
connection, byte for byte, to a new connection on the Unix socket. It adds no policy: the
proxy on the hub's side decides everything.

Standard library only, no package imports: it runs inside the sandbox under `python -I -S`
(its file is bind-mounted, not the hub's package). One daemon thread serves every connection
with a selector, so connections cost no threads (a sandbox's process limit counts threads).
Run as a script (`python -I -S sandbox_bridge.py PORT UNIX_PATH`) it bridges until killed.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import sys
import threading

PROXY_PORT = 3128
CHUNK = 65536
CONNECT_TIMEOUT = 5.0  # a Unix connect only waits when the proxy's backlog is full


class _Direction:
    """Bytes from one socket to the other: what was read and not yet written, and whether the source ended."""

    def __init__(self, source: socket.socket, sink: socket.socket) -> None:
        self.source = source
        self.sink = sink
        self.buffer = b""
        self.ended = False  # the source sent EOF
        self.done = False  # ...and everything was written and the sink half-closed


class _Pair:
    """One accepted connection and its Unix-socket peer."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self.directions = (_Direction(client, upstream), _Direction(upstream, client))
        self.closed = False

    def interest(self, sock: socket.socket) -> int:
        """The events `sock` waits for: readable while its outgoing buffer is empty, writable while
        bytes wait for it."""
        events = 0
        for direction in self.directions:
            if direction.source is sock and not direction.ended and not direction.buffer:
                events |= selectors.EVENT_READ
            if direction.sink is sock and direction.buffer:
                events |= selectors.EVENT_WRITE
        return events


class Bridge:
    """The selector loop: a listening TCP socket and the pairs it spliced."""

    def __init__(self, listener: socket.socket, unix_path: str) -> None:
        self.listener = listener
        self.unix_path = unix_path
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, None)

    def run(self) -> None:
        """Serve until the process ends."""
        while True:
            for key, events in self.selector.select():
                if key.data is None:
                    self._accept()
                elif not key.data.closed:  # an earlier event of this batch may have closed it
                    try:
                        self._step(key.data, key.fileobj, events)  # type: ignore[arg-type]
                    except Exception:  # boundary: one connection's surprise never stops the bridge
                        self._close(key.data)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.settimeout(CONNECT_TIMEOUT)
            upstream.connect(self.unix_path)
        except OSError:
            client.close()  # no proxy: the client sees the connection end
            upstream.close()
            return
        pair = _Pair(client, upstream)
        for sock in pair.sockets:
            sock.setblocking(False)
            self.selector.register(sock, pair.interest(sock), pair)

    def _step(self, pair: _Pair, sock: socket.socket, events: int) -> None:
        try:
            for direction in pair.directions:
                if direction.source is sock and events & selectors.EVENT_READ:
                    data = sock.recv(CHUNK)
                    if data:
                        direction.buffer += data
                    else:
                        direction.ended = True
                if direction.sink is sock and events & selectors.EVENT_WRITE and direction.buffer:
                    sent = sock.send(direction.buffer)
                    direction.buffer = direction.buffer[sent:]
                if direction.ended and not direction.buffer and not direction.done:
                    direction.done = True
                    direction.sink.shutdown(socket.SHUT_WR)  # pass the half-close on
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(pair)  # reset, broken pipe: the connection is over
            return
        if all(direction.done for direction in pair.directions):
            self._close(pair)
            return
        for each in pair.sockets:
            self.selector.modify(each, pair.interest(each), pair)

    def _close(self, pair: _Pair) -> None:
        pair.closed = True
        for sock in pair.sockets:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)
            sock.close()


def start_bridge(listen_port: int, unix_path: str) -> None:
    """Listen on 127.0.0.1:`listen_port` and splice every accepted connection to a new
    connection on the Unix socket `unix_path`, in a daemon thread. Returns once listening."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(128)
    listener.setblocking(False)
    bridge = Bridge(listener, unix_path)
    threading.Thread(target=bridge.run, name="egress-bridge", daemon=True).start()


def main(argv: list[str]) -> None:
    """`sandbox_bridge.py PORT UNIX_PATH`: bridge until killed."""
    port, path = int(argv[0]), argv[1]
    start_bridge(port, path)
    print(f"bridging 127.0.0.1:{port} to {path}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
