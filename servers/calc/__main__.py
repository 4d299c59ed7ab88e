"""Run the `calc` MCP server over stdio: ``python -m mcp_hub_servers.calc``.

Environment variables: none (the server has no configuration).
"""

from __future__ import annotations

from mcp_hub_servers.calc.server import build_server


def main() -> None:
    """Build the server and serve it on stdin/stdout."""
    build_server().run()


if __name__ == "__main__":
    main()
