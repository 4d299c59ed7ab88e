"""Every `mcp_servers` form of PROTOCOL.md resolves, or yields a coded error."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_hub.errors import RequestError
from mcp_hub.registry import Registry
from mcp_hub.resolution import resolve

HOSTED = {"command": "python -m x"}


@pytest.fixture
def registry() -> Registry:
    return Registry.from_data({"servers": {
        "acme/weather": {"versions": {"1.0.0": HOSTED, "1.2.0": HOSTED, "2.0.0": HOSTED}},
        "acme/search": {"versions": {"0.1.0": {"url": "https://search.example/mcp"}}},
    }})


@pytest.mark.parametrize(
    ("value", "name", "ident"),
    [
        ("acme/weather", "acme/weather", "acme/weather@2.0.0"),
        ("acme/weather@1.2.0", "acme/weather", "acme/weather@1.2.0"),
        ("acme/weather@^1", "acme/weather", "acme/weather@1.2.0"),
        ({"slug": "acme/weather", "version": "v1.0.0"}, "acme/weather", "acme/weather@1.0.0"),
        ({"slug": "acme/weather@1.0.0"}, "acme/weather", "acme/weather@1.0.0"),
        ({"slug": "acme/weather", "version": None}, "acme/weather", "acme/weather@2.0.0"),
        ("https://mcp.example/mcp", "https://mcp.example/mcp", "https://mcp.example/mcp"),
        ({"url": "https://mcp.example/mcp"}, "https://mcp.example/mcp", "https://mcp.example/mcp"),
        ({"name": "wx", "slug": "acme/weather", "version": "~1.2", "credentials": None}, "wx", "acme/weather@1.2.0"),
        ({"name": "remote", "url": "https://mcp.example/sse", "credentials": {"c": "blob"}}, "remote",
         "https://mcp.example/sse"),
        ("acme/search", "acme/search", "acme/search@0.1.0"),
    ],
)
def test_each_form_resolves(registry: Registry, value: Any, name: str, ident: str) -> None:
    for form in (value, [value]):
        targets, errors = resolve(form, registry)
        assert errors == {}
        assert [(t.name, t.ident) for t in targets] == [(name, ident)]


def test_transport_is_guessed_from_url(registry: Registry) -> None:
    targets, _ = resolve(["https://a.example/sse", "https://b.example/mcp", "acme/search"], registry)
    assert [t.version.kind for t in targets] == ["sse", "streamable-http", "streamable-http"]


@pytest.mark.parametrize(
    ("value", "key", "code", "hint"),
    [
        ("acme/wether", "acme/wether", "server_not_found", "acme/weather"),
        ("other/weather", "other/weather", "server_not_found", "acme/weather"),
        ("acme/weather@9.0.0", "acme/weather", "version_not_found", "1.0.0, 1.2.0, 2.0.0"),
        ({"slug": "acme/weather", "version": "^3"}, "acme/weather", "version_not_found", "latest (2.0.0)"),
        ("weather", "weather", "invalid_spec", "acme/weather"),
        ({"name": "x"}, "x", "invalid_spec", "slug"),
        ({"slug": "acme/weather", "url": "https://a/mcp"}, "acme/weather", "invalid_spec", "slug"),
        ({"url": "ftp://a"}, "ftp://a", "invalid_spec", "http"),
        ({"url": "https://a/mcp", "transport": "carrier-pigeon"}, "https://a/mcp", "invalid_spec", "transport"),
        (42, "42", "invalid_spec", "slug"),
        ({"slug": 5}, "{'slug': 5}", "invalid_spec", "slug"),
    ],
)
def test_failures_are_coded_with_recommendations(registry: Registry, value: Any, key: str, code: str, hint: str) -> None:
    targets, errors = resolve([value, "acme/search"], registry)
    assert [t.name for t in targets] == ["acme/search"]  # the rest of the request still resolves
    assert list(errors) == [key]
    entry = errors[key].to_entry()
    assert entry["code"] == code
    assert hint in entry["recommendation"] + entry["message"]


def test_empty_and_null(registry: Registry) -> None:
    assert resolve(None, registry) == ([], {})
    assert resolve([], registry) == ([], {})


def test_same_server_twice_is_deduplicated_but_a_name_clash_is_rejected(registry: Registry) -> None:
    targets, _ = resolve(["acme/weather", {"slug": "acme/weather"}], registry)
    assert len(targets) == 1
    with pytest.raises(RequestError, match="distinct `name`s"):
        resolve([{"name": "a", "slug": "acme/weather"}, {"name": "a", "url": "https://x/mcp"}], registry)
