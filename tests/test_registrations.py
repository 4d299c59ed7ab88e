"""Publishing servers: the registration API, persistence (SQLite and PostgreSQL), server.json import.

A server published through the API must be usable by slug in a completion and in the
gateway, show in the marketplace listing, and have its tools pinned at registration.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_hub.cli import main
from mcp_hub.errors import RequestError
from mcp_hub.hub import Hub
from mcp_hub.registry import Registry
from mcp_hub.server_json import import_server_json
from mcp_hub.settings import Settings

from .conftest import PROBE, ROOT, asgi_client, probe_entry
from .model_fixtures import ScriptedModel, ToolThenAnswer

RUGPULL = ROOT / "tests" / "fixtures" / "rugpull_server.py"
SERVER_JSON = ROOT / "tests" / "fixtures" / "server_json"
PROBE_VERSION = {"version": "1.0.0", "command": ["{python}", str(PROBE)]}


@pytest.fixture(params=["sqlite", "postgresql"])
def market_settings(request: pytest.FixtureRequest, tmp_path: Path, scripted_model: ScriptedModel) -> Settings:
    extra: dict[str, Any] = {}
    if request.param == "postgresql":
        extra["database_url"] = request.getfixturevalue("postgres_url")
    return Settings.load(data_dir=tmp_path / "data", openai_base_url=scripted_model.openai_url, openai_api_key="sk-t",
                         restart_backoff=0.05, **extra)


@pytest.fixture
async def market(market_settings: Settings) -> AsyncIterator[tuple[httpx2.AsyncClient, Hub]]:
    registry = Registry.from_data({"servers": {"test/probe": probe_entry()}}, root=ROOT)
    async with asgi_client(market_settings, registry) as running:
        yield running


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_published_server_is_usable_everywhere(market: tuple[httpx2.AsyncClient, Hub], market_settings: Settings,
                                                     scripted_model: ScriptedModel) -> None:
    http, hub = market
    admin, _ = await hub.keys.create("ops", "admin", "admin")
    created = await http.post("/v1/servers", headers=_auth(admin), json={
        "slug": "acme/probe", "description": "A published probe", "tags": ["published"], "version": PROBE_VERSION})
    assert created.status_code == 201, created.text
    assert created.json()["pinned"] is True and "echo" in created.json()["tools"]
    # Pinned at registration, by the registering key.
    pins = (await http.get("/v1/pins", params={"server": "acme/probe@1.0.0"}, headers=_auth(admin))).json()["data"]
    assert {p["approved_by"] for p in pins} == {f"registration:{(await hub.keys.list())[0].id}"}
    # In the marketplace listing, with where it came from.
    listed = (await http.get("/v1/servers", params={"q": "published"}, headers=_auth(admin))).json()["data"]
    assert [(s["slug"], s["source"], s["latest"]) for s in listed] == [("acme/probe", "registered", "1.0.0")]
    # In a completion, by slug.
    scripted_model.responder = ToolThenAnswer(tool="__echo", arguments={"text": "market"}, answer="got {result}")
    completion = await http.post("/v1/chat/completions", headers=_auth(admin), json={
        "model": "openai/m", "messages": [{"role": "user", "content": "hi"}], "mcp_servers": ["acme/probe"]})
    assert completion.json()["choices"][0]["message"]["content"] == 'got {"result":"market"}', completion.text
    # In the gateway.
    http.headers.update(_auth(admin))
    try:
        async with Client(streamable_http_client("http://127.0.0.1:8000/mcp/acme/probe", http_client=http),
                          mode="legacy") as client:
            assert (await client.call_tool("echo", {"text": "gw"})).structured_content == {"result": "gw"}
    finally:
        del http.headers["authorization"]
    # Persisted: a second hub on the same database resolves it at start.
    async with Hub(market_settings, Registry.from_data({"servers": {}}, root=ROOT)) as other:
        assert other.registry.get("acme/probe") is not None


async def test_the_servers_command_lists_published_servers(market: tuple[httpx2.AsyncClient, Hub],
                                                          market_settings: Settings, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    http, hub = market
    admin, _ = await hub.keys.create("ops", "admin", "admin")
    for slug in ("acme/probe", "acme/hidden"):
        created = await http.post("/v1/servers", headers=_auth(admin), json={
            "slug": slug, "description": "A published probe", "version": PROBE_VERSION})
        assert created.status_code == 201, created.text
    hidden = await http.patch("/v1/servers/acme/hidden", headers=_auth(admin), json={"unlisted": True})
    assert hidden.status_code == 200, hidden.text
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"servers": {"test/probe": probe_entry()}}))
    data = ["--data-dir", str(market_settings.data_dir), "--registry", str(registry)]
    if market_settings.database_url is not None:
        data += ["--database-url", market_settings.database_url.get_secret_value()]

    async def listed(*extra: str) -> list[tuple[str, str]]:
        assert await anyio.to_thread.run_sync(main, ["servers", "--json", *extra, *data]) == 0
        return [(s["slug"], s["source"]) for s in json.loads(capsys.readouterr().out)]

    assert await listed() == [("acme/probe", "registered"), ("test/probe", "registry_file")]
    assert ("acme/hidden", "registered") in await listed("--all")
    assert await anyio.to_thread.run_sync(main, ["servers", *data]) == 0
    rows = [line.split()[:4] for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == [["acme/probe", "1.0.0", "hosted", "registered"], ["test/probe", "1.0.0", "hosted", "file"]]


async def test_versions_are_validated_immutable_deprecatable(market: tuple[httpx2.AsyncClient, Hub]) -> None:
    http, hub = market
    admin = _auth((await hub.keys.create("ops", "admin", "admin"))[0])
    base = {"slug": "acme/probe", "version": PROBE_VERSION}
    assert (await http.post("/v1/servers", headers=admin, json=base)).status_code == 201
    again = await http.post("/v1/servers", headers=admin, json=base)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    yaml_slug = await http.post("/v1/servers", headers=admin, json={**base, "slug": "test/probe"})
    assert yaml_slug.status_code == 409 and "registry file" in yaml_slug.json()["error"]["message"]
    bad_slug = await http.post("/v1/servers", headers=admin, json={**base, "slug": "Acme/Probe!"})
    assert bad_slug.status_code == 400 and bad_slug.json()["error"]["param"] == "slug"
    for slug in ("acme/x\n", "acme/x\r\n", "\nacme/x"):  # `$` matched before a trailing newline
        newline = await http.post("/v1/servers", headers=admin, json={**base, "slug": slug})
        assert newline.status_code == 400 and newline.json()["error"]["param"] == "slug", newline.text
    newline_version = await http.post("/v1/servers", headers=admin, json={"slug": "acme/x", "version": {
        **PROBE_VERSION, "version": "1.0.0\n"}})
    assert newline_version.status_code == 400 and "semantic version" in newline_version.json()["error"]["message"]
    bad_version = await http.post("/v1/servers", headers=admin, json={"slug": "acme/x", "version": {
        **PROBE_VERSION, "version": "one"}})
    assert bad_version.status_code == 400 and "semantic version" in bad_version.json()["error"]["message"]
    both = await http.post("/v1/servers", headers=admin, json={"slug": "acme/y", "version": {
        **PROBE_VERSION, "url": "https://example.com/mcp"}})
    assert both.status_code == 400
    unknown_field = await http.post("/v1/servers", headers=admin, json={**base, "slug": "acme/z", "owner": "me"})
    assert unknown_field.status_code == 400 and unknown_field.json()["error"]["param"] == "owner"

    added = await http.post("/v1/servers/acme/probe/versions", headers=admin, json={**PROBE_VERSION, "version": "1.1.0"})
    assert added.status_code == 201 and added.json()["version"] == "1.1.0"
    same = await http.post("/v1/servers/acme/probe/versions", headers=admin, json={**PROBE_VERSION, "version": "v1.1.0"})
    assert same.status_code == 409
    yaml_version = await http.post("/v1/servers/test/probe/versions", headers=admin, json=PROBE_VERSION)
    assert yaml_version.status_code == 409
    assert hub.registry.get("acme/probe").latest == "1.1.0"  # type: ignore[union-attr]
    deprecated = await http.patch("/v1/servers/acme/probe/versions/1.1.0", headers=admin, json={"deprecated": True})
    assert deprecated.status_code == 200
    entry = hub.registry.get("acme/probe")
    assert entry is not None and entry.latest == "1.0.0" and entry.match("1.1.0") == "1.1.0"  # pinned: still resolves
    immutable = await http.patch("/v1/servers/acme/probe/versions/1.0.0", headers=admin, json={"url": "https://x"})
    assert immutable.status_code == 400
    unlisted = await http.patch("/v1/servers/acme/probe", headers=admin, json={"unlisted": True})
    assert unlisted.status_code == 200
    slugs = [s["slug"] for s in (await http.get("/v1/servers", headers=admin)).json()["data"]]
    assert "acme/probe" not in slugs
    everything = (await http.get("/v1/servers", params={"include_unlisted": "true"}, headers=admin)).json()["data"]
    assert [s["unlisted"] for s in everything if s["slug"] == "acme/probe"] == [True]
    result, servers = await hub.call_tool("acme/probe", "echo", {"text": "still"})
    assert result.result == {"result": "still"} and not servers.errors


async def test_only_admins_and_the_orgs_publishers_write(market: tuple[httpx2.AsyncClient, Hub]) -> None:
    http, hub = market
    member = _auth((await hub.keys.create("acme", "m", "member"))[0])
    publisher = _auth((await hub.keys.create("acme", "p", "publisher"))[0])
    url_version = {"version": "1.0.0", "package": {"registry": "npm", "identifier": "@modelcontextprotocol/server-everything",
                                                   "version": "2026.8.31", "arguments": ["stdio"]}}
    refused = await http.post("/v1/servers", headers=member, json={"slug": "acme/e", "version": url_version})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    other_org = await http.post("/v1/servers", headers=publisher, json={"slug": "globex/e", "version": url_version})
    assert other_org.status_code == 403 and "acme/" in other_org.json()["error"]["message"]
    raw = await http.post("/v1/servers", headers=publisher, json={"slug": "acme/raw", "version": PROBE_VERSION})
    assert raw.status_code == 403 and "command" in raw.json()["error"]["message"]
    own = await http.post("/v1/servers", headers=publisher, json={"slug": "acme/e", "version": url_version})
    assert own.status_code == 201, own.text
    assert "echo" in own.json()["tools"]
    unreachable = await http.post("/v1/servers", headers=publisher, json={"slug": "acme/down", "version": {
        "version": "1.0.0", "url": f"http://127.0.0.1:{_closed_port()}/mcp"}})
    assert unreachable.status_code == 422 and unreachable.json()["error"]["code"] == "server_unreachable"
    assert hub.registry.get("acme/down") is None  # nothing stored


def _closed_port() -> int:
    from .conftest import free_port

    return free_port()


async def test_a_registered_server_that_changes_a_tool_is_caught(market: tuple[httpx2.AsyncClient, Hub]) -> None:
    http, hub = market
    admin = _auth((await hub.keys.create("ops", "admin", "admin"))[0])
    created = await http.post("/v1/servers", headers=admin, json={"slug": "acme/rugpull", "version": {
        "version": "1.0.0", "command": ["{python}", str(RUGPULL)]}})
    assert created.status_code == 201 and sorted(created.json()["tools"]) == ["add", "echo", "rug_pull"]
    result, _ = await hub.call_tool("acme/rugpull", "rug_pull", {})
    assert result.result == {"result": "changed"}
    with anyio.fail_after(15):
        while True:
            servers = hub.open_servers("acme/rugpull")
            tools = await hub.list_tools(servers)
            if "acme/rugpull" in servers.errors:
                break
            await anyio.sleep(0.02)
    assert servers.errors["acme/rugpull"].code == "tool_definitions_changed"
    assert sorted(t.name for t in tools["acme/rugpull"]) == ["echo", "rug_pull"]


async def test_server_json_of_a_remote_server_imports_and_runs(market: tuple[httpx2.AsyncClient, Hub],
                                                             header_url: str) -> None:
    http, hub = market
    admin = _auth((await hub.keys.create("ops", "admin", "admin"))[0])
    document = json.loads((SERVER_JSON / "remote.json").read_text())
    port = header_url.rsplit(":", 1)[1].split("/")[0]
    secret = "srvjson-key-41d"
    imported = await http.post("/v1/servers/import", headers=admin, json={
        "server_json": document, "variables": {"port": port}, "tags": ["imported"],
        "credentials": {"connection_name": "headers", "values": {"api_key": secret}}})
    assert imported.status_code == 201, imported.text
    assert imported.json()["slug"] == "io.github.example/headers" and imported.json()["tools"] == ["headers"]
    detail = (await http.get("/v1/servers/io.github.example/headers", headers=admin)).json()
    assert detail["connections"][0]["name"] == "headers" and detail["connections"][0]["fields"] == ["api_key"]
    assert detail["versions"][0]["transport"] == "streamable-http"
    called = await http.post("/v1/tools/call", headers=admin, json={
        "server": "io.github.example/headers", "tool": "headers",
        "credentials": {"connection_name": "headers", "values": {"api_key": secret}}})
    seen = called.json()["result"]
    assert seen["authorization"] == "[REDACTED]" and seen["x-region"] == "eu-west-1"  # fixed header from its default
    missing = await http.post("/v1/tools/call", headers=admin, json={"server": "io.github.example/headers", "tool": "x"})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_credentials"


def test_server_json_mapping() -> None:
    remote = import_server_json(json.loads((SERVER_JSON / "remote.json").read_text()), variables={"port": "9"})
    assert remote.body["version"] == {"version": "1.2.0", "url": "http://127.0.0.1:9/mcp", "transport": "streamable-http",
                                      "headers": {"X-Region": "eu-west-1"}}
    assert remote.body["connections"]["headers"]["headers"] == {"Authorization": "Bearer {api_key}"}
    assert remote.body["connections"]["headers"]["required"] is True
    npm = import_server_json(json.loads((SERVER_JSON / "npm.json").read_text()))
    assert npm.body["version"]["package"] == {"registry": "npm", "identifier": "@modelcontextprotocol/server-everything",
                                              "version": "2026.8.31", "arguments": ["stdio"]}
    assert npm.body["version"]["env"] == {"LOG_LEVEL": "info"}
    assert npm.body["connections"]["server-everything"] == {
        "description": "EVERYTHING_API_KEY: An optional key", "fields": ["everything_api_key"], "required": False,
        "env": {"EVERYTHING_API_KEY": "{everything_api_key}"}}
    assert any("mcp/everything" in note for note in npm.notes)  # the oci package is skipped, said so
    pypi = import_server_json({"name": "io.github.x/weather", "version": "0.5.0", "packages": [{
        "registry_type": "pypi", "identifier": "weather-mcp", "version": "0.5.0", "runtime_hint": "uvx",
        "package_arguments": [{"type": "named", "name": "--units", "default": "metric"}]}]})
    assert pypi.body["version"]["package"]["arguments"] == ["--units", "metric"]
    with pytest.raises(RequestError, match="port"):
        import_server_json(json.loads((SERVER_JSON / "remote.json").read_text()))  # {port} has no default


def test_server_json_import_takes_the_hubs_network_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mcp_hub.registration_store import build_entry
    from mcp_hub.registrations import RegistrationBody

    document = json.loads((SERVER_JSON / "npm.json").read_text())
    assert "network" not in import_server_json(document).body["version"]  # server.json cannot say it: none
    online = import_server_json(document, network="egress")
    body = RegistrationBody.model_validate(online.body)
    entry = build_entry(body.slug, "", [], {}, body.limits, {body.version.version: body.version.spec()})
    assert entry.versions[body.version.version].network == "egress"
    remote = json.loads((SERVER_JSON / "remote.json").read_text())
    with pytest.raises(Exception, match="prefer: package") as raised:  # a remote runs nothing: refused, not ignored
        import_server_json(remote, variables={"port": "9"}, network="egress")
    assert getattr(raised.value, "param", None) == "network"
    with pytest.raises(Exception, match="none or egress"):
        import_server_json(document, network="internet")
    data = ["--data-dir", str(tmp_path / "data"), "--registry", str(ROOT / "registry.yaml")]
    assert main(["registry", "import", str(SERVER_JSON / "npm.json"), "--network", "egress", "--dry-run", *data]) == 0
    out = capsys.readouterr().out  # notes, then the registration
    assert json.loads(out[out.index("\n{") + 1:])["version"]["network"] == "egress"


async def test_server_json_import_api_refuses_a_bad_network(market: tuple[httpx2.AsyncClient, Hub]) -> None:
    http, hub = market
    admin = _auth((await hub.keys.create("ops", "admin", "admin"))[0])
    document = json.loads((SERVER_JSON / "remote.json").read_text())
    for network, message in [("egress", "prefer: package"), (["egress"], "none or egress")]:
        refused = await http.post("/v1/servers/import", headers=admin, json={
            "server_json": document, "variables": {"port": "9"}, "network": network})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "network", refused.text
        assert message in refused.json()["error"]["message"]


def test_server_json_of_an_npm_package_imports_and_runs_from_the_cli(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # The registry's folder is bound into the sandbox: not pytest's 0700 tmp_path, which would hide what lies below.
    (tmp_path / "registry").mkdir(mode=0o755)
    registry = tmp_path / "registry" / "registry.yaml"
    registry.write_text("servers: {}\n")
    data = ["--data-dir", str(tmp_path / "data"), "--registry", str(registry)]
    # The hub installs the package from the npm registry into its data folder, once, and runs its bin.
    assert main(["registry", "import", str(SERVER_JSON / "npm.json"), "--tag", "npm", *data]) == 0
    out = capsys.readouterr().out
    assert "registered io.github.modelcontextprotocol/server-everything@2026.8.31; pinned" in out and "echo" in out
    assert main(["call", "io.github.modelcontextprotocol/server-everything", "echo", "--args",
                 '{"message": "from npm"}', "--json", *data]) == 0
    assert "from npm" in capsys.readouterr().out
