"""The real `dedalus_mcp` credential types (`Connection`, `SecretValues`), loaded on their own.

`import dedalus_mcp` fails against the MCP SDK this project pins (its package `__init__`
imports names that `mcp.types` no longer has), but its `auth/connection.py` and
`auth/envelope.py` need nothing beyond pydantic. Loading those two files, unmodified, under
a private package name gives the tests the exact classes users pass to the Dedalus SDK.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

_PACKAGE = "_dedalus_mcp_auth"


def _load() -> Any:
    if f"{_PACKAGE}.connection" in sys.modules:
        return sys.modules[f"{_PACKAGE}.connection"]
    spec = importlib.util.find_spec("dedalus_mcp")  # finds the package without running its __init__
    assert spec is not None and spec.submodule_search_locations, "dedalus_mcp is not installed"
    auth = Path(next(iter(spec.submodule_search_locations))) / "auth"
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(auth)]
    sys.modules[_PACKAGE] = package
    for name in ("envelope", "connection"):
        module_spec = importlib.util.spec_from_file_location(f"{_PACKAGE}.{name}", auth / f"{name}.py")
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
    return sys.modules[f"{_PACKAGE}.connection"]


_connection = _load()
Connection = _connection.Connection
SecretValues = _connection.SecretValues

__all__ = ["Connection", "SecretValues"]
