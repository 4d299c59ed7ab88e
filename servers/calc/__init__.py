"""The `calc` MCP server (``python -m mcp_hub_servers.calc``)."""
