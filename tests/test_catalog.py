"""`CatalogCache`: requests naming the same servers share one tool catalog until a server lists again."""

from __future__ import annotations

import mcp.types as types

from mcp_hub.catalog import CatalogCache


def tools(*names: str) -> list[types.Tool]:
    return [types.Tool(name=name, input_schema={"type": "object"}) for name in names]


def test_the_same_listings_share_a_catalog() -> None:
    cache = CatalogCache()
    a, b = tools("echo", "add"), tools("now")
    first = cache.catalog({"org/a": a, "org/b": b}, [])
    assert cache.catalog({"org/b": b, "org/a": a}, []) is first
    assert first.provider_tools() is first.provider_tools()
    assert [t["function"]["name"] for t in first.provider_tools()] == ["org-a__add", "org-a__echo", "org-b__now"]


def test_a_new_listing_or_client_tools_make_a_new_catalog() -> None:
    cache = CatalogCache()
    a = tools("echo")
    first = cache.catalog({"org/a": a}, [])
    relisted = cache.catalog({"org/a": tools("echo", "extra")}, [])
    assert relisted is not first and relisted.mcp("org-a__extra") is not None
    client = [{"type": "function", "function": {"name": "local", "parameters": {"type": "object"}}}]
    with_client = cache.catalog({"org/a": a}, client)
    assert with_client is not first and with_client.is_client("local") and not first.is_client("local")
    assert cache.catalog({"org/a": a}, client) is not with_client


def test_the_cache_forgets_the_oldest_past_its_size() -> None:
    cache = CatalogCache(size=2)
    listings = [tools("echo") for _ in range(3)]
    catalogs = [cache.catalog({"org/a": listing}, []) for listing in listings]
    assert cache.catalog({"org/a": listings[2]}, []) is catalogs[2]
    assert cache.catalog({"org/a": listings[1]}, []) is catalogs[1]
    assert cache.catalog({"org/a": listings[0]}, []) is not catalogs[0]  # evicted, built again
