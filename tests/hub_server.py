"""The real hub app served by uvicorn on a free 127.0.0.1 port, from a background thread.

`HubServer.serve(settings, registry)` binds the socket first, starts uvicorn (lifespan on, configured
as `mcp-hub serve` configures it: `httpguard.server_config`)
in a thread and returns once the lifespan has started, so the hub's `Hub` object is at
hand (`server.hub`) for observing sessions while SDK clients talk to `server.url` over a
real socket. SDK clients put in `server.clients` are closed first; stopping then asks
uvicorn to exit and joins the thread; the hub's lifespan closes its sessions and children
on the way out.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

from mcp_hub.app import create_app
from mcp_hub.httpguard import server_config
from mcp_hub.hub import Hub
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings


class HubServer:
    """A running hub: `url` (the root; the openai SDK wants `url + "/v1"`) and its `hub`."""

    def __init__(self, url: str, state: dict[str, Any], server: uvicorn.Server) -> None:
        self.url = url
        self._state = state
        self._server = server
        self.clients: list[Any] = []  # sync SDK clients opened against this hub; closed before it stops

    @property
    def hub(self) -> Hub:
        return self._state["hub"]

    @classmethod
    @contextlib.contextmanager
    def serve(cls, settings: Settings, registry: Registry, *, startup_timeout: float = 20.0) -> Iterator[HubServer]:
        app = create_app(settings, registry)
        state: dict[str, Any] = {}

        async def capture_state(scope: Scope, receive: Receive, send: Send) -> None:
            # uvicorn hands the lifespan a state dict that Starlette fills with {"hub": hub};
            # keeping a reference to it is how the test reaches the running Hub.
            if scope["type"] == "lifespan":
                state.update(scope=scope.get("state"))
            await app(scope, receive, send)

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        # The configuration `mcp-hub serve` uses: guarded httptools, proxy headers from nobody.
        config = server_config(capture_state, settings, log_level="warning", access_log=False, lifespan="on",
                               ws="none", timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="hub-server", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + startup_timeout
            while not server.started:  # bounded poll of uvicorn's own readiness flag
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the hub did not start (see the log above)")
                time.sleep(0.01)
            lifespan_state = state["scope"]
            assert isinstance(lifespan_state, dict) and isinstance(lifespan_state.get("hub"), Hub)
            running = cls(url, lifespan_state, server)
            try:
                yield running
            finally:
                for client in running.clients:
                    client.close()
        finally:
            server.should_exit = True
            thread.join(timeout=15)
            sock.close()
