"""The `files` MCP server (``python -m mcp_hub_servers.files``)."""
