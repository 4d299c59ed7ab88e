"""Run the `notes` MCP server over stdio: ``python -m mcp_hub_servers.notes``.

Environment variables:
    NOTES_TOKEN  The caller's credential token (the hub injects it; one process
                 per distinct token). It selects whose notes are served. Unset:
                 the server still starts, but every tool reports the missing
                 `notes` credential (field `token`).
    NOTES_DB     SQLite file holding the notes (created if missing). Unset:
                 ``$XDG_DATA_HOME/mcp-hub/notes.sqlite3`` (``~/.local/share/...``).
"""

from __future__ import annotations

import os
from pathlib import Path

from mcp_hub_servers.notes.server import build_server


def default_db_path() -> Path:
    """Where notes live when NOTES_DB is not set."""
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "mcp-hub" / "notes.sqlite3"


def main() -> None:
    """Build the server from the environment and serve it on stdin/stdout."""
    token = os.environ.pop("NOTES_TOKEN", None)  # keep it out of anything this process spawns
    build_server(token=token, db_path=os.environ.get("NOTES_DB") or default_db_path()).run()


if __name__ == "__main__":
    main()
