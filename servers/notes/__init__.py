"""The `notes` MCP server (``python -m mcp_hub_servers.notes``)."""
