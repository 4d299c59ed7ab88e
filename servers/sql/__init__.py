"""The `sql` MCP server (``python -m mcp_hub_servers.sql``)."""
