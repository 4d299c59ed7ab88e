"""The `time` MCP server (``python -m mcp_hub_servers.time``)."""
