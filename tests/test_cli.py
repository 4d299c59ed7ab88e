"""The `mcp-hub` terminal commands, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mcp_hub.cli import parse_cred_flags, table
from mcp_hub.errors import ConfigError, HubError
from mcp_hub.settings import Settings

from .conftest import probe_entry


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    entry = probe_entry()
    entry["connections"] = {"probe": {"fields": ["token"], "required": False, "env": {"PROBE_TOKEN": "{token}"}}}
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"servers": {"test/probe": entry}}))
    return path


def run(registry_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcp_hub", *args[:1], "--registry", str(registry_file),
                           "--data-dir", str(registry_file.parent / "data"), *args[1:]],
                          capture_output=True, text=True, timeout=60)


def test_servers_table_and_json(registry_file: Path) -> None:
    result = run(registry_file, "servers")
    assert result.returncode == 0, result.stderr
    header, rule, row = result.stdout.splitlines()
    assert header.split() == ["SLUG", "LATEST", "KIND", "SOURCE", "CONNECTIONS", "DESCRIPTION"]
    assert row.split()[:5] == ["test/probe", "1.0.0", "hosted", "file", "probe"]
    listed = json.loads(run(registry_file, "servers", "--json").stdout)
    assert listed[0]["slug"] == "test/probe"


def test_tools_lists_live_tools(registry_file: Path) -> None:
    result = run(registry_file, "tools", "test/probe")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()[2:]]
    assert {"echo", "sleep", "pid"} <= set(names)
    assert any(line.split()[:2] == ["echo", "text"] for line in result.stdout.splitlines())


def test_call_prints_the_result_and_exit_code(registry_file: Path) -> None:
    result = run(registry_file, "call", "test/probe", "echo", "--args", '{"text": "from the terminal"}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"result": "from the terminal"}
    assert "ok in" in result.stderr
    failed = run(registry_file, "call", "test/probe", "fail", "--args", '{"message": "x"}')
    assert failed.returncode == 1
    assert "Error executing tool fail" in failed.stdout


def test_call_passes_credentials(registry_file: Path) -> None:
    result = run(registry_file, "call", "test/probe", "env", "--args", '{"name": "PROBE_TOKEN"}',
                 "--cred", "probe:token=t0ken", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["result"] == {"result": "[REDACTED]"}  # delivered; never echoed back


def test_errors_are_readable(registry_file: Path) -> None:
    unknown = run(registry_file, "call", "test/prob", "echo")
    assert unknown.returncode == 1
    assert "server_not_found" in unknown.stderr and "test/probe" in unknown.stderr
    bad_args = run(registry_file, "call", "test/probe", "echo", "--args", "{oops")
    assert bad_args.returncode == 2 and "--args is not valid JSON" in bad_args.stderr
    for output in (unknown, bad_args):
        assert "Traceback" not in output.stderr


def test_cred_flag_parsing() -> None:
    creds = parse_cred_flags(["a:token=x", "a:user=u", "b:key=k=v"])
    assert [(c.connection_name, sorted(c.values)) for c in creds] == [("a", ["token", "user"]), ("b", ["key"])]
    assert creds[1].values["key"].get_secret_value() == "k=v"
    assert "k=v" not in repr(creds)
    with pytest.raises(HubError, match="--cred must look like CONNECTION:FIELD=VALUE"):
        parse_cred_flags(["token=x"])


def test_table_alignment() -> None:
    assert table([["a", "bb"], ["ccc", "d"]], ["X", "Y"]).splitlines() == ["X    Y", "---  --", "a    bb", "ccc  d"]


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('port = 9001\ncall_timeout = 5\nlog_level = "debug"\n')
    monkeypatch.setenv("MCP_HUB_CALL_TIMEOUT", "7")
    settings = Settings.load(config, port=None, data_dir=tmp_path)
    assert (settings.port, settings.call_timeout, settings.log_level) == (9001, 7.0, "debug")
    assert Settings.load(config, port=9002).port == 9002
    yaml_config = tmp_path / "hub.yaml"
    yaml_config.write_text("max_children: 3\n")
    assert Settings.load(yaml_config).max_children == 3
    assert Settings().max_children == 32  # the config file choice does not leak into the class
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(tmp_path / "absent.toml")
    monkeypatch.setenv("MCP_HUB_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="port"):
        Settings.load()
    assert os.environ["MCP_HUB_PORT"] == "not-a-port"
