"""mcp-hub: host, route and execute Model Context Protocol servers."""

from __future__ import annotations

__version__ = "0.1.0"
