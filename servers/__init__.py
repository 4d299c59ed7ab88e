"""Hosted MCP servers bundled with mcp-hub."""
