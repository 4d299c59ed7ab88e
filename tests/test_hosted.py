"""Every server of the project's registry.yaml, listed and called through the HTTP API and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from .conftest import ROOT, asgi_client

NOTES = {"connection_name": "notes", "values": {"token": "hosted-test-token"}}

# slug -> (a tool, its arguments, a check of its result)
CASES: dict[str, tuple[str, dict[str, Any], Any]] = {
    "hub/time": ("convert_time", {"time": "2026-01-15T12:00", "source_timezone": "UTC",
                                  "target_timezone": "Asia/Tokyo"}, lambda r: "21:00" in json.dumps(r)),
    "hub/calc": ("evaluate", {"expression": "(2 + 3) * 4"}, lambda r: r["result"] == 20),
    "hub/sql": ("run_query", {"sql": "SELECT COUNT(*) AS n FROM authors"}, lambda r: r["rows"][0][0] > 0),
    "hub/files": ("list_directory", {"path": "."}, lambda r: len(json.dumps(r)) > 20),
    "hub/notes": ("add_note", {"title": "hello", "body": "from the hub"}, lambda r: r["title"] == "hello"),
}


@pytest.fixture
async def project_api(tmp_path: Path) -> AsyncIterator[httpx2.AsyncClient]:
    async with asgi_client(Settings.load(data_dir=tmp_path), Registry.from_file(ROOT / "registry.yaml")) as (client, _):
        yield client


def test_cases_cover_the_registry() -> None:
    assert set(CASES) == {entry.slug for entry in Registry.from_file(ROOT / "registry.yaml").entries()}


@pytest.mark.parametrize("slug", sorted(CASES))
async def test_listed_and_called_through_the_api(project_api: httpx2.AsyncClient, slug: str) -> None:
    tool, arguments, check = CASES[slug]
    detail = (await project_api.get(f"/v1/servers/{slug}")).json()
    if slug == "hub/notes":  # needs a credential: the listing says so instead of starting it
        assert detail["live"]["error"]["code"] == "missing_credentials"
    else:
        assert tool in {t["name"] for t in detail["live"]["tools"]}
    body = {"server": slug, "tool": tool, "arguments": arguments, "credentials": NOTES if slug == "hub/notes" else None}
    response = await project_api.post("/v1/tools/call", json=body)
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["is_error"] is False, record
    assert check(record["result"]), record["result"]
    assert "hosted-test-token" not in response.text


@pytest.mark.parametrize("slug", sorted(CASES))
def test_listed_and_called_through_the_cli(tmp_path: Path, slug: str) -> None:
    tool, arguments, check = CASES[slug]
    base = [sys.executable, "-m", "mcp_hub"]
    common = ["--data-dir", str(tmp_path), "--registry", str(ROOT / "registry.yaml")]
    creds = ["--cred", "notes:token=cli-token"] if slug == "hub/notes" else []
    listed = subprocess.run([*base, "tools", slug, *common, *creds], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert tool in {line.split()[0] for line in listed.stdout.splitlines()[2:]}
    called = subprocess.run([*base, "call", slug, tool, "--args", json.dumps(arguments), "--json", *common, *creds],
                            capture_output=True, text=True, timeout=60)
    assert called.returncode == 0, called.stderr
    assert check(json.loads(called.stdout)["result"])
