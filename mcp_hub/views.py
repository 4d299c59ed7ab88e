"""JSON views of registry entries and tools, shared by the HTTP API and the CLI."""

from __future__ import annotations

from typing import Any

import mcp.types as types

from .registry import Entry, Registry, Version


def _version_view(key: str, version: Version) -> dict[str, Any]:
    view: dict[str, Any] = {"version": key, "kind": "hosted" if version.hosted else "remote",
                            "transport": version.kind, "deprecated": version.deprecated}
    if version.url:
        view["url"] = version.url
    return view


def entry_summary(entry: Entry) -> dict[str, Any]:
    """One line of `GET /v1/servers`."""
    latest = entry.versions[entry.latest]
    return {
        "slug": entry.slug,
        "description": entry.description,
        "tags": list(entry.tags),
        "latest": entry.latest,
        "kind": "hosted" if latest.hosted else "remote",
        "versions": sorted(entry.versions),
        "connections": sorted(entry.connections),
    }


def with_source(registry: Registry, view: dict[str, Any]) -> dict[str, Any]:
    """`view` of an entry plus where it comes from (the registry file or the API) and whether it is unlisted."""
    slug = view["slug"]
    return {**view, "source": "registered" if registry.is_registered(slug) else "registry_file",
            "unlisted": slug in registry.unlisted}


def entry_detail(entry: Entry) -> dict[str, Any]:
    """`GET /v1/servers/{org}/{name}` without the live part."""
    return {
        **entry_summary(entry),
        "versions": [_version_view(key, version) for key, version in sorted(entry.versions.items())],
        "connections": [
            {"name": name, "fields": list(conn.fields), "required": conn.required, "description": conn.description}
            for name, conn in sorted(entry.connections.items())
        ],
        "limits": entry.limits.model_dump(),
    }


def tool_view(tool: types.Tool) -> dict[str, Any]:
    """A tool as listed by its server: name, description, schemas, annotations."""
    return tool.model_dump(mode="json", by_alias=True, exclude_none=True,
                           include={"name", "title", "description", "input_schema", "output_schema", "annotations"})
