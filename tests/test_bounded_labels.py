"""Caller text never becomes a metrics label, and is capped (URL secrets redacted) in the audit trail."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from mcp_hub.audit.record import MAX_NAME, instance_name, short
from mcp_hub.settings import Settings

HUGE = "n" * (1 << 20)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A keyless hub whose anonymous caller may read /metrics (an admin route)."""
    return Settings.load(data_dir=tmp_path / "data", connect_timeout=20, restart_backoff=0.05, anonymous_admin=True)


async def test_huge_instance_names_and_url_secrets_stay_out_of_metrics(api: httpx2.AsyncClient, probe_http: str) -> None:
    for index in range(20):
        response = await api.post("/v1/tools/call", json={"server": {"slug": "test/probe", "name": f"{HUGE}{index}"},
                                                          "tool": "echo", "arguments": {"text": "x"}})
        assert response.status_code == 200 and response.json()["is_error"] is False, response.text[:300]
    unknown = await api.post("/v1/tools/call", json={"server": "test/probe", "tool": "t" * 256, "arguments": {}})
    assert unknown.status_code == 200 and unknown.json()["is_error"] is True
    secret_url = probe_http.replace("127.0.0.1", "user:hunter2pass@127.0.0.1") + "?key=sekret-query-value"
    query_url = probe_http + "?key=sekret-query-value#frag-sekret"
    for url in (secret_url, query_url):
        response = await api.post("/v1/tools/call", json={"server": url, "tool": "echo", "arguments": {"text": "x"}})
        assert response.status_code in (200, 403), response.text[:300]
    scrape = await api.get("/metrics")
    assert scrape.status_code == 200
    text = scrape.text
    assert len(text) < 64 * 1024
    assert "nnnnnnnn" not in text and "tttt" not in text
    assert "hunter2pass" not in text and "sekret" not in text and "127.0.0.1" not in text
    assert 'mcp_hub_tool_calls_total{outcome="ok",server="test/probe",tool="echo"} 20.0' in text
    assert 'mcp_hub_tool_calls_total{outcome="error",server="test/probe",tool="other"} 1.0' in text
    assert 'server="url",tool="other"' in text  # the query URL reached the probe: an ad-hoc server
    weird = await api.request("NNNNNNNNNNNNNNNNNNNNNNNN", "/v1/servers")
    assert weird.status_code == 405
    assert "NNNNNNNN" not in (await api.get("/metrics")).text

    records = (await api.get("/v1/audit/tool-calls", params={"limit": "100"})).json()["data"]
    assert records and all(len(r["server_name"]) < MAX_NAME + 64 for r in records)
    assert all(len(r["tool_name"] or "") < MAX_NAME + 64 for r in records)
    assert any(r["server_name"].endswith(f"[truncated: {len(HUGE) + 1} characters]") for r in records)
    listed = str(records)
    assert "hunter2pass" not in listed and "sekret" not in listed
    assert any("[REDACTED]" in r["server_name"] and r["server_name"].startswith("http://") for r in records)


def test_audit_names_are_short_and_url_secrets_redacted() -> None:
    assert short("abc") == "abc" and short(None) is None
    cut = short("x" * 1000)
    assert cut is not None and cut.startswith("x" * MAX_NAME) and cut.endswith("[truncated: 1000 characters]")
    assert instance_name("https://u:p4ss@example.com:8443/mcp?api_key=k3y#f") == \
        "https://[REDACTED]@example.com:8443/mcp?[REDACTED]#[REDACTED]"
    assert instance_name("https://example.com/mcp") == "https://example.com/mcp"
    assert instance_name("notes") == "notes"
    assert "s3cret" not in instance_name("http://[::1:s3cret/")  # unparseable: nothing after the scheme
