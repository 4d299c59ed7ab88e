"""Run the `time` MCP server over stdio: ``python -m mcp_hub_servers.time``.

Environment variables:
    TIME_DEFAULT_TIMEZONE  IANA zone used when a tool call names none (default ``UTC``).
"""

from __future__ import annotations

import os
import sys

from mcp_hub_servers.time.server import build_server


def main() -> None:
    """Build the server from the environment and serve it on stdin/stdout."""
    try:
        server = build_server(default_timezone=os.environ.get("TIME_DEFAULT_TIMEZONE") or "UTC")
    except ValueError as exc:
        sys.exit(f"mcp_hub_servers.time: TIME_DEFAULT_TIMEZONE: {exc}")
    server.run()


if __name__ == "__main__":
    main()
