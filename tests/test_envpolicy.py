"""Environment variables of hosted servers: names that change how a runtime or loader behaves are refused.

The review's worst finding: a publisher key could run any command on the hub's machine with
`NODE_OPTIONS=--import=data:...` in a package version's `env` (accepted, 201), through a
server.json's `environmentVariables`, a connection's `env` template, `env.PATH` (choosing
which `npx` ran) or `LD_PRELOAD`. Each route now answers 422 `env_not_allowed`, naming the
variable, and stores nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcp_hub.cli import main
from mcp_hub.envpolicy import denied_reason, env_problems
from mcp_hub.errors import ConfigError
from mcp_hub.hub import Hub
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import PROBE, ROOT, asgi_client, probe_entry

NODE_IMPORT = "--import=data:text/javascript,require('child_process').execSync('id > /tmp/pwned')"
PACKAGE = {"registry": "npm", "identifier": "@modelcontextprotocol/server-everything", "version": "2026.8.31"}

DANGEROUS = ["NODE_OPTIONS", "node_options", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE", "LD_PRELOAD", "LD_LIBRARY_PATH",
             "LD_AUDIT", "DYLD_INSERT_LIBRARIES", "PATH", "Path", "BASH_ENV", "ENV", "SHELLOPTS", "PS4", "IFS",
             "PYTHONPATH", "PYTHONSTARTUP", "PYTHONWARNINGS", "PYTHONHOME", "PERL5OPT", "PERL5LIB", "RUBYOPT",
             "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "GCONV_PATH", "LOCPATH", "MALLOC_CHECK_",
             "GLIBC_TUNABLES", "npm_config_registry", "NPM_CONFIG_USERCONFIG", "UV_INDEX_URL", "PIP_INDEX_URL", "HOME",
             "TMPDIR", "HTTP_PROXY", "https_proxy", "ALL_PROXY", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR",
             "NODE_EXTRA_CA_CERTS", "MCP_HUB_DATA_DIR", "GIT_SSH_COMMAND", "GIT_CONFIG_GLOBAL", "OPENSSL_CONF",
             "XDG_CONFIG_HOME", "BROWSER", "LESSOPEN", "COVERAGE_PROCESS_START", "CORECLR_PROFILER_PATH",
             "DOTNET_STARTUP_HOOKS", "LUA_INIT", "ELECTRON_RUN_AS_NODE", "HOSTALIASES", "CLASSPATH"]
ORDINARY = ["API_BASE_URL", "TIMEZONE", "TZ", "LOG_LEVEL", "NODE_ENV", "OPENAI_API_KEY", "GITHUB_TOKEN",
            "EVERYTHING_API_KEY", "SQL_MAX_ROWS", "NOTES_DB", "LANG", "X", "_private"]


@pytest.mark.parametrize("name", DANGEROUS)
def test_runtime_and_loader_variables_are_refused(name: str) -> None:
    assert denied_reason(name) is not None


@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_application_variables_pass(name: str) -> None:
    assert denied_reason(name) is None


@pytest.mark.parametrize(("env", "what"), [
    ({"BAD NAME": "x"}, "variable name"), ({"1ST": "x"}, "variable name"), ({"A\n": "x"}, "variable name"),
    ({"A" * 129: "x"}, "variable name"), ({"ÄPI": "x"}, "variable name"), ({"API_URL": "a\x00b"}, "control"),
    ({"API_URL": "a\nINJECTED=1"}, "control"), ({"API_URL": "x" * 20_000}, "longer"),
    ({f"V{i}": "x" for i in range(200)}, "at most"),
])
def test_names_and_values_must_be_plain(env: dict[str, str], what: str) -> None:
    problems = list(env_problems(env, "version"))
    assert problems and what in problems[0][1]


def test_registry_file_refuses_them_naming_entry_and_field() -> None:
    entry = probe_entry(env={"LD_PRELOAD": "/tmp/evil.so"})
    with pytest.raises(ConfigError, match=r"servers\['acme/x'\]\.versions\.1\.0\.0\.env\.LD_PRELOAD: .*LD_PRELOAD"):
        Registry.from_data({"servers": {"acme/x": entry}})
    connection = {**probe_entry(), "connections": {"c": {"fields": ["token"], "env": {"PATH": "{token}"}}}}
    with pytest.raises(ConfigError, match=r"servers\['acme/y'\]\.connections\.c\.env\.PATH"):
        Registry.from_data({"servers": {"acme/y": connection}})
    # The operator may run such an entry outside the sandbox; only the registry file can say so.
    unsandboxed = Registry.from_data({"servers": {"acme/x": {**entry, "sandbox": False}}})
    assert unsandboxed.get("acme/x").versions["1.0.0"].env == {"LD_PRELOAD": "/tmp/evil.so"}  # type: ignore[union-attr]
    assert len(Registry.from_file(ROOT / "registry.yaml")) >= 5  # the shipped file keeps validating


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(data_dir=tmp_path / "data", openai_api_key="sk-t")


@pytest.fixture
async def market(settings: Settings) -> AsyncIterator[tuple[httpx2.AsyncClient, Hub]]:
    registry = Registry.from_data({"servers": {"test/probe": probe_entry()}}, root=ROOT)
    async with asgi_client(settings, registry) as running:
        yield running


async def _publisher(hub: Hub) -> dict[str, str]:
    return {"authorization": f"Bearer {(await hub.keys.create('acme', 'p', 'publisher'))[0]}"}


def _refused(response: httpx2.Response, name: str, param: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "env_not_allowed" and name in error["message"] and error["param"] == param, error
    assert NODE_IMPORT not in response.text  # the value is never echoed


@pytest.mark.parametrize(("name", "value"), [("NODE_OPTIONS", NODE_IMPORT), ("PATH", "/tmp/evil-bin:/usr/bin"),
                                             ("LD_PRELOAD", "/tmp/evil.so"), ("node_options", NODE_IMPORT)])
async def test_a_version_env_that_takes_over_the_runtime_is_refused(market: tuple[httpx2.AsyncClient, Hub], name: str,
                                                                   value: str) -> None:
    http, hub = market
    publisher = await _publisher(hub)
    version = {"version": "1.0.0", "package": PACKAGE, "env": {"LOG_LEVEL": "info", name: value}}
    _refused(await http.post("/v1/servers", headers=publisher, json={"slug": "acme/evil", "version": version}),
             name, f"version.env.{name}")
    assert hub.registry.get("acme/evil") is None and not hub.packages.root.exists()  # nothing stored or installed


async def test_a_new_version_and_a_connection_template_are_held_to_it(market: tuple[httpx2.AsyncClient, Hub]) -> None:
    http, hub = market
    admin = {"authorization": f"Bearer {(await hub.keys.create('ops', 'a', 'admin'))[0]}"}
    created = await http.post("/v1/servers", headers=admin, json={"slug": "acme/probe", "version": {
        "version": "1.0.0", "command": ["{python}", str(PROBE)], "env": {"API_BASE_URL": "https://api.example"}}})
    assert created.status_code == 201, created.text  # ordinary variables still work
    _refused(await http.post("/v1/servers/acme/probe/versions", headers=admin, json={
        "version": "1.1.0", "command": ["{python}", str(PROBE)], "env": {"NODE_OPTIONS": NODE_IMPORT}}),
        "NODE_OPTIONS", "version.env.NODE_OPTIONS")
    assert list(hub.registry.get("acme/probe").versions) == ["1.0.0"]  # type: ignore[union-attr]
    templated = await http.post("/v1/servers", headers=await _publisher(hub), json={
        "slug": "acme/templated", "connections": {"api": {"fields": ["token"], "env": {"LD_PRELOAD": "{token}"}}},
        "version": {"version": "1.0.0", "package": PACKAGE}})
    _refused(templated, "LD_PRELOAD", "connections.api.env.LD_PRELOAD")


def _server_json(env: list[dict[str, Any]]) -> dict[str, Any]:
    document = json.loads((ROOT / "tests" / "fixtures" / "server_json" / "npm.json").read_text())
    document["packages"][0]["environmentVariables"] = env
    return document


async def test_server_json_environment_variables_are_held_to_it(market: tuple[httpx2.AsyncClient, Hub]) -> None:
    http, hub = market
    publisher = await _publisher(hub)
    fixed = _server_json([{"name": "NODE_OPTIONS", "value": NODE_IMPORT}])
    _refused(await http.post("/v1/servers/import", headers=publisher, json={
        "server_json": fixed, "slug": "acme/everything"}), "NODE_OPTIONS", "version.env.NODE_OPTIONS")
    supplied = _server_json([{"name": "PATH", "isSecret": True}])  # becomes a connection template
    _refused(await http.post("/v1/servers/import", headers=publisher, json={
        "server_json": supplied, "slug": "acme/everything"}), "PATH", "connections.server-everything.env.PATH")
    assert hub.registry.get("acme/everything") is None


def test_server_json_import_from_the_cli_is_held_to_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = tmp_path / "server.json"
    document.write_text(json.dumps(_server_json([{"name": "LD_PRELOAD", "value": "/tmp/evil.so"}])))
    registry = tmp_path / "registry.yaml"
    registry.write_text("servers: {}\n")
    assert main(["registry", "import", str(document), "--data-dir", str(tmp_path / "data"),
                 "--registry", str(registry)]) != 0
    err = capsys.readouterr().err
    assert "LD_PRELOAD" in err and "not allowed" in err and "Traceback" not in err
    assert not (tmp_path / "data" / "packages").exists()
