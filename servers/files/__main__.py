"""Run the `files` MCP server over stdio: ``python -m mcp_hub_servers.files``.

Environment variables:
    FILES_ROOT            Directory to expose read-only. Unset: the bundled
                          ``data/sample`` tree (a few text files), so the server
                          works out of the box.
    FILES_MAX_FILE_BYTES  Files larger than this are not read or searched
                          (default 10485760, i.e. 10 MiB).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mcp_hub_servers.files.server import build_server

SAMPLE_ROOT = Path(__file__).resolve().parent / "data" / "sample"


def main() -> None:
    """Build the server from the environment and serve it on stdin/stdout."""
    try:
        server = build_server(
            root=os.environ.get("FILES_ROOT") or SAMPLE_ROOT,
            max_file_bytes=int(os.environ.get("FILES_MAX_FILE_BYTES") or 10 * 1024 * 1024),
        )
    except ValueError as exc:
        sys.exit(f"mcp_hub_servers.files: {exc}")
    server.run()


if __name__ == "__main__":
    main()
