"""A browser page cannot drive a keyless hub: JSON bodies only, Host/Origin checked, anonymous is no admin.

The attack (issue 13): a page posts `text/plain` cross-site to http://127.0.0.1:8000/v1/servers
(no CORS preflight for that type) and the keyless hub, taking the anonymous caller for an admin,
registers a raw `command`. Each of the three defences below stops it alone; revoking the last key
must not open the hub again (tests/test_apikeys.py, SQLite and PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from mcp_hub.app import ROUTES
from mcp_hub.cli import build_parser, serve_settings
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import PROBE, asgi_client, create_key
from .test_api import assert_error

RAW_COMMAND = {"slug": "evil/probe", "description": "x", "version": {"version": "1.0.0", "command": ["{python}", str(PROBE)]}}
FOREIGN_PAGE = {"origin": "https://evil.example", "content-type": "text/plain"}


def body_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the API that takes a body, with its path parameters filled in."""
    found = []
    for route in ROUTES:
        path = getattr(route, "path", "")
        for method in sorted(getattr(route, "methods", None) or ()):
            if method in ("POST", "PUT", "PATCH") and not path.startswith("/mcp/"):
                found.append((method, path.replace("{org}", "test").replace("{name}", "probe")
                              .replace("{version}", "1.0.0")))
    return found


def test_every_body_route_is_covered() -> None:
    routes = body_routes()
    assert ("POST", "/v1/chat/completions") in routes and ("PATCH", "/v1/servers/test/probe") in routes
    assert len(routes) >= 8


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None, "application/jsonp", "json"])
async def test_bodies_that_are_not_json_are_415_on_every_route(api: httpx2.AsyncClient, content_type: str | None) -> None:
    for method, path in body_routes():
        headers = {} if content_type is None else {"content-type": content_type}
        response = await api.request(method, path, content=b'{"server": "test/probe", "tool": "echo"}', headers=headers)
        body = assert_error(response, 415, "unsupported_media_type")
        assert body["param"] == "content-type", (method, path)


async def test_a_method_no_route_takes_stays_405_whatever_the_body(api: httpx2.AsyncClient) -> None:
    for method, path in [("PUT", "/v1/models"), ("PATCH", "/metrics"), ("POST", "/healthz")]:
        assert_error(await api.request(method, path, content=b"x", headers={"content-type": "text/plain"}), 405,
                     "method_not_allowed")
    assert_error(await api.post("/v1/nothing", content=b"x"), 404, "not_found")


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON",
                                          "application/merge-patch+json", "application/vnd.api+json;charset=UTF-8"])
async def test_json_types_with_parameters_are_accepted(api: httpx2.AsyncClient, content_type: str) -> None:
    response = await api.post("/v1/tools/call", content=b'{"server": "test/probe", "tool": "echo", "arguments": {"text": "hi"}}',
                              headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    assert response.json()["result"] == {"result": "hi"}


async def test_the_gateway_refuses_text_plain_too(api: httpx2.AsyncClient) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    accept = {"accept": "application/json, text/event-stream"}
    response = await api.post("/mcp/test/probe", json=init, headers={**accept, "content-type": "text/plain"})
    assert response.status_code in (400, 415) and "mcp-session-id" not in response.headers
    assert (await api.post("/mcp/test/probe", json=init, headers=accept)).status_code == 200  # the same, as JSON


async def test_a_cross_site_page_cannot_publish_a_raw_command(settings: Settings, registry: Registry) -> None:
    admin_settings = settings.model_copy(update={"anonymous_admin": True})  # even with the dangerous flag on
    async with asgi_client(admin_settings, registry) as (http, hub):
        page = await http.post("/v1/servers", content=str(RAW_COMMAND).encode(), headers=FOREIGN_PAGE)
        assert_error(page, 403, "forbidden_origin")
        rebinding = await http.post("/v1/servers", json=RAW_COMMAND, headers={"host": "evil.example:8000"})
        assert_error(rebinding, 403, "forbidden_host")
        same_origin_text = await http.post("/v1/servers", content=b"{}", headers={"content-type": "text/plain"})
        assert_error(same_origin_text, 415, "unsupported_media_type")
        assert "evil/probe" not in hub.registry


HOSTS_SERVED = ["127.0.0.1", "127.0.0.1:8000", "localhost", "localhost:3000", "[::1]", "[::1]:8000", "LOCALHOST:8000"]
HOSTS_REFUSED = ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost:8000.evil", "localhost:x", ""]
ORIGINS_SERVED = ["http://127.0.0.1:8000", "http://localhost:5173", "https://localhost", "http://[::1]:8000"]
ORIGINS_REFUSED = ["https://evil.example", "null", "http://localhost.evil.example", "http://127.0.0.1:8000.evil", "file://"]


@pytest.mark.parametrize("path", ["/v1/servers", "/healthz", "/console", "/v1/models", "/v1/audit/verify", "/nowhere"])
async def test_a_keyless_loopback_hub_checks_host_and_origin_on_every_route(api: httpx2.AsyncClient, path: str) -> None:
    for host in HOSTS_SERVED:
        assert (await api.get(path, headers={"host": host})).status_code not in (403, 421), host
    for origin in ORIGINS_SERVED:
        assert (await api.get(path, headers={"origin": origin})).status_code != 403, origin
    for host in HOSTS_REFUSED:
        assert_error(await api.get(path, headers={"host": host}), 403, "forbidden_host")
    for origin in ORIGINS_REFUSED:
        assert_error(await api.get(path, headers={"origin": origin}), 403, "forbidden_origin")


async def test_with_keys_the_host_check_stays_on_the_gateway_only(settings: Settings, registry: Registry) -> None:
    key = await create_key(settings, "acme")
    async with asgi_client(settings, registry) as (http, _):
        foreign = {"host": "hub.example.com", "authorization": f"Bearer {key}"}
        assert (await http.get("/v1/servers", headers=foreign)).status_code == 200  # a keyed hub behind a proxy
        assert_error(await http.get("/v1/servers", headers={"host": "hub.example.com"}), 401, "invalid_api_key")
        assert_error(await http.post("/mcp/test/probe", json={}, headers=foreign), 403, "forbidden_host")


async def test_configured_hosts_and_origins_are_served(settings: Settings, registry: Registry) -> None:
    configured = settings.model_copy(update={"gateway_allowed_hosts": ["hub.internal:*"],
                                             "gateway_allowed_origins": ["https://app.example"]})
    async with asgi_client(configured, registry) as (http, _):
        assert (await http.get("/v1/servers", headers={"host": "hub.internal:9000"})).status_code == 200
        assert (await http.get("/v1/servers", headers={"origin": "https://app.example"})).status_code == 200
        assert_error(await http.get("/v1/servers", headers={"host": "hub.internal"}), 403, "forbidden_host")


async def test_anonymous_callers_are_no_admins(api: httpx2.AsyncClient) -> None:
    refused = await api.post("/v1/servers", json=RAW_COMMAND)
    body = assert_error(refused, 403, "forbidden")
    assert "role" in body["message"]
    assert_error(await api.get("/metrics"), 403, "forbidden")
    assert_error(await api.post("/v1/pins/approve", json={"server": "test/probe@1.0.0"}), 403, "forbidden")
    listed = await api.get("/v1/servers")  # what a member may do still works
    assert listed.status_code == 200 and "test/probe" in {s["slug"] for s in listed.json()["data"]}


async def test_the_operator_may_make_anonymous_callers_admins(settings: Settings, registry: Registry) -> None:
    async with asgi_client(settings.model_copy(update={"anonymous_admin": True}), registry) as (http, hub):
        created = await http.post("/v1/servers", json=RAW_COMMAND)
        assert created.status_code == 201, created.text
        assert (await http.get("/metrics")).status_code == 200
        key, _ = await hub.keys.create("acme")  # once a key exists, anonymous is nobody, flag or not
        assert_error(await http.get("/metrics"), 401, "invalid_api_key")
        assert_error(await http.get("/metrics", headers={"authorization": f"Bearer {key}"}), 403, "forbidden")


def test_the_cli_flag_sets_anonymous_admin(tmp_path: Path) -> None:
    def loaded(*flags: str) -> Settings:
        return serve_settings(build_parser().parse_args(["serve", "--data-dir", str(tmp_path), *flags]))

    assert loaded().anonymous_admin is False
    assert loaded("--anonymous-admin").anonymous_admin is True
