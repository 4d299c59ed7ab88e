"""Run the `sql` MCP server over stdio: ``python -m mcp_hub_servers.sql``.

Environment variables:
    SQL_DB_PATH          SQLite file to serve read-only. Unset: the bundled sample
                         bookstore database, built in memory.
    SQL_MAX_ROWS         Most rows one query may return (default 1000).
    SQL_TIMEOUT_SECONDS  Wall-clock budget of one statement (default 5).
"""

from __future__ import annotations

import os
import sys

from mcp_hub_servers.sql.server import build_server


def main() -> None:
    """Build the server from the environment and serve it on stdin/stdout."""
    try:
        server = build_server(
            db_path=os.environ.get("SQL_DB_PATH") or None,
            max_rows_limit=int(os.environ.get("SQL_MAX_ROWS") or 1000),
            timeout_seconds=float(os.environ.get("SQL_TIMEOUT_SECONDS") or 5),
        )
    except ValueError as exc:
        sys.exit(f"mcp_hub_servers.sql: {exc}")
    server.run()


if __name__ == "__main__":
    main()
