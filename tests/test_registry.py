"""Registry parsing, validation messages, and version selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_hub.errors import ConfigError
from mcp_hub.registry import Entry, Registry

ROOT = Path(__file__).resolve().parent.parent



def found(registry: Registry, slug: str) -> Entry:
    entry = registry.get(slug)
    assert entry is not None, slug
    return entry

def entry(versions: dict[str, dict]) -> dict:
    return {"servers": {"acme/tool": {"versions": versions}}}


HOSTED = {"command": "python -m something"}


def test_project_registry_loads_and_every_hosted_server_is_a_module() -> None:
    registry = Registry.from_file(ROOT / "registry.yaml")
    assert len(registry) >= 5
    for item in registry.entries():
        for version in item.versions.values():
            assert version.hosted or version.url


def test_command_string_is_split_like_a_shell() -> None:
    registry = Registry.from_data(entry({"1.0.0": {"command": "node 'my server.js' --flag"}}))
    assert found(registry, "acme/tool").versions["1.0.0"].command == ("node", "my server.js", "--flag")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (entry({"1.0.0": {}}), "servers['acme/tool'].versions['1.0.0']: give exactly one of `command`"),
        (entry({"1.0.0": {"command": "x", "url": "https://a/mcp"}}), "give exactly one of"),
        (entry({"one": HOSTED}), "version 'one' is not a semantic version"),
        (entry({}), "at least one version is required"),
        (entry({"1.0.0": {"url": "ftp://a"}}), "`url` must start with http"),
        (entry({"1.0.0": {**HOSTED, "protocol": "2019"}}), "versions['1.0.0'].protocol"),
        (entry({"1.0.0": {**HOSTED, "colour": "red"}}), "versions['1.0.0'].colour: Extra inputs are not permitted"),
        ({"servers": {"NoSlash": {"versions": {"1.0.0": HOSTED}}}}, "servers['NoSlash'].slug: slug must look like org/name"),
        ({"servers": {"acme/x\n": {"versions": {"1.0.0": HOSTED}}}}, "slug must look like org/name"),
        (entry({"1.0.0\n": HOSTED}), "is not a semantic version"),
        ({"servers": {"a/b": {"versions": {"1.0.0": HOSTED}, "limits": {"call_timeout": -1}}}}, "limits.call_timeout"),
        ({"servers": {"a/b": {"versions": {"1.0.0": HOSTED},
                              "connections": {"c": {"fields": ["token"], "env": {"X": "{tok}"}}}}}}, "uses {tok}"),
        ({"servers": []}, "expected a mapping"),
        ({"servers": {}, "extra": 1}, "unknown top-level key"),
    ],
)
def test_invalid_registry_names_entry_and_field(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Registry.from_data(data, source="registry.yaml")
    assert fragment in str(info.value)
    assert str(info.value).startswith("registry.yaml")


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("servers: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Registry.from_file(bad)
    with pytest.raises(ConfigError, match="cannot read registry"):
        Registry.from_file(tmp_path / "absent.yaml")


@pytest.fixture
def versions() -> Registry:
    keys = ["1.0.0", "1.2.0", "1.2.5", "1.3.0", "2.0.0", "2.1.0-beta.1", "v3.0.0"]
    data = entry({key: dict(HOSTED) for key in keys})
    data["servers"]["acme/tool"]["versions"]["v3.0.0"]["deprecated"] = True
    return Registry.from_data(data)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, "2.0.0"),           # latest skips prereleases and deprecated versions
        ("latest", "2.0.0"),
        ("1.2.0", "1.2.0"),
        ("v1.2.0", "1.2.0"),
        ("3.0.0", "v3.0.0"),       # a deprecated version still resolves when pinned
        ("^1.2", "1.3.0"),
        ("~1.2.3", "1.2.5"),
        ("~1.2", "1.2.5"),
        (">=1,<2", "1.3.0"),
        (">=1.0.0 <1.2.1", "1.2.0"),
        ("1.x", "1.3.0"),
        ("2.1.0-beta.1", "2.1.0-beta.1"),
        ("^4", None),
        ("9.9.9", None),
        ("not a range", None),
    ],
)
def test_version_matching(versions: Registry, spec: str | None, expected: str | None) -> None:
    assert found(versions, "acme/tool").match(spec) == expected


def test_suggest_close_slugs() -> None:
    registry = Registry.from_data({"servers": {s: {"versions": {"1.0.0": HOSTED}} for s in
                                               ["hub/time", "hub/calc", "hub/notes", "other/thing"]}})
    assert registry.suggest("hub/tmie")[0] == "hub/time"
    assert "hub/notes" in registry.suggest("acme/notes")
    assert registry.suggest("zzz/qqq") == []


def test_a_slug_with_a_trailing_newline_in_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text('servers:\n  "acme/x\\n":\n    versions:\n      "1.0.0": {url: "https://example.com/mcp"}\n')
    with pytest.raises(ConfigError, match="slug must look like org/name"):
        Registry.from_file(path)
