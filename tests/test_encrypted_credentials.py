"""Encrypted credentials end to end: the real `dedalus-labs` SDK against a hub served by uvicorn.

The hub runs as `python -m mcp_hub serve` on a free 127.0.0.1 port, its model is the scripted
upstream server, and its MCP servers are the probe (hosted over stdio, declaring a `probe`
connection delivered as `PROBE_TOKEN`) and the header server (a URL, streamable HTTP) whose
tool reports the HTTP headers it received. The SDK fetches the hub's JWKS (`as_base_url`
points at the hub), encrypts each `SecretValues` and embeds it in its server's spec.
"""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import yaml
from dedalus_labs import Dedalus
from dedalus_labs.lib.crypto import encrypt_credentials, fetch_encryption_key_sync

from .conftest import PROBE, free_port, spawn, stop
from .dedalus_credentials import Connection, SecretValues
from .model_fixtures import Recorded, Reply, ScriptedModel

MODEL = "openai/gpt-test"
PROBE_SECRET = "probe-secret-3b8f0c2a"
HEADER_SECRET = "header-secret-91d7e6f4"


@dataclass
class RunningHub:
    url: str
    data_dir: Path

    def client(self, sent: list[Any] | None = None) -> Dedalus:
        """A Dedalus client on the hub; the JSON bodies it sends are appended to `sent`."""

        def record(request: httpx.Request) -> None:
            if sent is not None and request.method == "POST":
                sent.append(json.loads(request.read()))

        http = httpx.Client(event_hooks={"request": [record]})
        return Dedalus(base_url=self.url, api_key="dsk-client", as_base_url=self.url, max_retries=0, http_client=http)

    def public_key(self) -> Any:
        """The hub's key as the SDK fetches it (`{as_base_url}/.well-known/jwks.json`)."""
        with httpx.Client() as http:
            return fetch_encryption_key_sync(http, self.url)


@pytest.fixture
def hub(tmp_path: Path, scripted_model: ScriptedModel) -> Iterator[RunningHub]:
    registry = tmp_path / "registry.yaml"
    probe = {"description": "probe", "connections": {"probe": {"fields": ["token"], "env": {"PROBE_TOKEN": "{token}"}}},
             "versions": {"1.0.0": {"command": ["{python}", str(PROBE)]}}}
    registry.write_text(yaml.safe_dump({"servers": {"test/probe": probe}}))
    data_dir = tmp_path / "data"
    port = free_port()
    env = {"MCP_HUB_OPENAI_BASE_URL": scripted_model.openai_url, "MCP_HUB_OPENAI_API_KEY": "sk-hub-key",
           "MCP_HUB_RESTART_BACKOFF": "0.05", "MCP_HUB_ENCRYPTION_KEY_GRACE": "3600"}
    proc = spawn([sys.executable, "-m", "mcp_hub", "serve", "--registry", str(registry), "--data-dir", str(data_dir),
                  "--port", str(port)], port, tmp_path / "hub.log", env=env)
    yield RunningHub(f"http://127.0.0.1:{port}", data_dir)
    stop(proc)
    log = (tmp_path / "hub.log").read_text(errors="replace")
    assert PROBE_SECRET not in log and HEADER_SECRET not in log and "PRIVATE KEY" not in log


def call_tools(*suffixes: str) -> Any:
    """A responder: first call every presented tool ending in one of `suffixes`, then answer."""

    def respond(request: Recorded) -> Reply:
        if request.last_tool_result is not None:
            return Reply.say("done")
        names = [name for name in request.tool_names if name.endswith(suffixes)]
        return Reply.call(*[(name, {"name": "PROBE_TOKEN"} if name.endswith("__env") else {}) for name in names])

    return respond


def header_connection(url: str) -> Any:
    """The connection the SDK pairs with a URL server: named after the URL, slashes as hyphens."""
    return Connection(url.replace("/", "-"), secrets={"api_key": "KEY"}, auth_header_name="X-Probe-Key",
                      auth_header_format="Key {api_key}")


def results_by_tool(results: list[Any]) -> dict[str, Any]:
    return {r["tool_name"] if isinstance(r, dict) else r.tool_name: r for r in results}


def received_headers(result: Any) -> dict[str, str]:
    value = result["result"] if isinstance(result, dict) else result.result
    return value.get("result", value)


def test_jwks_is_served_without_auth(hub: RunningHub) -> None:
    response = httpx2.get(f"{hub.url}/.well-known/jwks.json")
    assert response.status_code == 200
    (jwk,) = response.json()["keys"]
    assert (jwk["kty"], jwk["use"], jwk["alg"]) == ("RSA", "enc", "RSA-OAEP-256")
    assert "d" not in jwk and "p" not in jwk and "q" not in jwk
    folder = hub.data_dir / "encryption-keys"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    (pem,) = folder.glob("*.pem")
    assert pem.stem == jwk["kid"] and stat.S_IMODE(pem.stat().st_mode) == 0o600


def test_sdk_round_trip_delivers_each_secret_to_its_own_server(hub: RunningHub, header_url: str,
                                                               scripted_model: ScriptedModel) -> None:
    scripted_model.responder = call_tools("__env", "__headers")
    sent: list[Any] = []
    with hub.client(sent) as client:
        response = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], mcp_servers=["test/probe", header_url],
            credentials=[SecretValues(Connection("test-probe", secrets={"token": "PROBE"}), token=PROBE_SECRET),
                         SecretValues(header_connection(header_url), api_key=HEADER_SECRET)])
    assert response.choices[0].message.content == "done"
    assert not getattr(response, "mcp_server_errors", None)
    results = results_by_tool([r.model_dump() for r in response.mcp_tool_results or []])
    assert results["env"]["server_name"] == "test/probe"
    # The hosted server got its secret as PROBE_TOKEN (the hub scrubs it when the tool echoes it back).
    assert results["env"]["result"] == {"result": "[REDACTED]"}
    headers = received_headers(results["headers"])
    assert headers["x-probe-key"] == "[REDACTED]"  # the URL server got exactly its header (echo scrubbed) ...
    assert not any(PROBE_SECRET in value for value in headers.values())  # ... and nothing of the probe's secret

    # What the SDK sent: no plaintext, and one envelope inside each server's own spec.
    (body,) = sent
    assert PROBE_SECRET not in json.dumps(body) and HEADER_SECRET not in json.dumps(body)
    assert "credentials" not in body
    probe_spec, header_spec = body["mcp_servers"]
    assert probe_spec["slug"] == "test/probe" and list(probe_spec["credentials"]) == ["test-probe"]
    assert header_spec["url"] == header_url and list(header_spec["credentials"]) == [header_url.replace("/", "-")]


def test_tampered_envelope_fails_that_server_only(hub: RunningHub, header_url: str,
                                                  scripted_model: ScriptedModel) -> None:
    public_key = hub.public_key()  # the SDK's own JWKS fetch
    probe = SecretValues(Connection("test-probe", secrets={"token": "PROBE"}), token=PROBE_SECRET)
    header = SecretValues(header_connection(header_url), api_key=HEADER_SECRET)
    good = encrypt_credentials(public_key, header.values_for_encryption())
    raw = bytearray(base64.urlsafe_b64decode(_padded(encrypt_credentials(public_key, probe.values_for_encryption()))))
    raw[-1] ^= 0x01  # the GCM tag
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    scripted_model.responder = call_tools("__env", "__headers")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "mcp_servers": [
        {"slug": "test/probe", "name": "test/probe", "credentials": {"test-probe": tampered}},
        {"url": header_url, "name": header_url, "credentials": {header_url.replace("/", "-"): good}}]}
    response = httpx2.post(f"{hub.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    completion = response.json()
    errors = completion["mcp_server_errors"]
    assert list(errors) == ["test/probe"] and errors["test/probe"]["code"] == "credentials_invalid"
    assert tampered[:32] not in response.text and tampered[-32:] not in response.text
    assert PROBE_SECRET not in response.text
    results = results_by_tool(completion["mcp_tool_results"])
    assert list(results) == ["headers"]  # the probe's tools were never offered; the other server worked
    assert received_headers(results["headers"])["x-probe-key"] == "[REDACTED]"


def test_unmatched_envelope_goes_nowhere_and_the_server_still_needs_its_credential(hub: RunningHub) -> None:
    public_key = hub.public_key()
    secret = SecretValues(Connection("someone-else", secrets={"token": "T"}), token=PROBE_SECRET)
    envelope = encrypt_credentials(public_key, secret.values_for_encryption())
    body = {"server": {"slug": "test/probe", "name": "test/probe", "credentials": {"someone-else": envelope}},
            "tool": "env", "arguments": {"name": "PROBE_TOKEN"}}
    response = httpx2.post(f"{hub.url}/v1/tools/call", json=body, timeout=60)
    assert response.status_code == 400
    assert response.json()["code"] == "missing_credentials" and "'probe'" in response.json()["message"]


def test_rotation_keeps_old_envelopes_working_during_grace(hub: RunningHub, scripted_model: ScriptedModel) -> None:
    old_key = hub.public_key()
    secret = SecretValues(Connection("probe", secrets={"token": "T"}), token=PROBE_SECRET)
    old_envelope = encrypt_credentials(old_key, secret.values_for_encryption())
    old_kid = httpx2.get(f"{hub.url}/.well-known/jwks.json").json()["keys"][0]["kid"]

    rotated = subprocess.run([sys.executable, "-m", "mcp_hub", "rotate-encryption-key", "--data-dir", str(hub.data_dir)],
                             capture_output=True, text=True, timeout=60, check=True)
    new_kid = rotated.stdout.strip()
    assert new_kid and new_kid != old_kid
    assert [k["kid"] for k in httpx2.get(f"{hub.url}/.well-known/jwks.json").json()["keys"]] == [new_kid]

    body = {"server": {"slug": "test/probe", "credentials": {"probe": old_envelope}}, "tool": "env",
            "arguments": {"name": "PROBE_TOKEN"}}
    response = httpx2.post(f"{hub.url}/v1/tools/call", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["result"] == {"result": "[REDACTED]"}  # the retired key still decrypts

    scripted_model.responder = call_tools("__env")  # and the SDK now encrypts to the new key
    with hub.client() as client:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], mcp_servers=["test/probe"],
            credentials=[SecretValues(Connection("test-probe", secrets={"token": "T"}), token=PROBE_SECRET + "-new")])
    (result,) = answer.mcp_tool_results or []
    assert result.result == {"result": "[REDACTED]"}  # delivered (and scrubbed when echoed)


def _padded(text: str) -> str:
    return text + "=" * (-len(text) % 4)
