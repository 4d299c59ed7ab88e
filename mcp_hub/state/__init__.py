"""Where the hub keeps state shared by its instances: a `StateStore` chosen by URL scheme.

`memory://` (the default) keeps it in this process; `redis://host:port/db` (also
`rediss://`, `unix://`) in Redis, so that several hubs on one Redis behave as one.
See `base.py` for the interface and the rule that no plaintext credential is stored.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from ..errors import ConfigError
from .base import StateStore

# scheme -> "module:class"; imported on use, so that Redis's client loads only when configured.
BACKENDS = {
    "memory": "mcp_hub.state.memory:MemoryStore",
    "redis": "mcp_hub.state.redis:RedisStore",
    "rediss": "mcp_hub.state.redis:RedisStore",
    "unix": "mcp_hub.state.redis:RedisStore",
}

__all__ = ["BACKENDS", "StateStore", "open_store"]


def open_store(url: str, prefix: str = "mcp-hub:") -> StateStore:
    """The (unopened) store for `url`; enter it with `async with`."""
    scheme = urlsplit(url).scheme
    if scheme not in BACKENDS:
        raise ConfigError(f"state_url: unknown scheme {scheme!r}; one of {', '.join(sorted(BACKENDS))}")
    module, name = BACKENDS[scheme].split(":")
    backend = getattr(importlib.import_module(module), name)
    store: StateStore = backend() if scheme == "memory" else backend(url, prefix)
    return store
