"""No leaks (issue 4, item 4): a planted secret appears in none of the hub's outputs, logs or files.

Every test plants fresh, unique secrets (`leak-<uuid>`): a plaintext credential delivered as
an environment variable to the hosted probe server (whose `env` tool echoes it back), a header
credential for the header server over streamable HTTP (whose `headers` tool echoes it back),
the hub's configured provider key and a caller's `X-Provider-Key` (which the scripted model
quotes back in its 401s, as OpenAI does). The tests then drive every path: tool success, tool
error, server crash, a hosted server printing its secret to stderr, a server dying at start-up
with the secret in its stderr, provider errors, streaming with tool events, the non-streaming
body, `mcp_tool_results`, idempotent replays, `/v1/tools/call` and `mcp-hub call --cred`.

What is searched: every HTTP response body and SSE text, everything logged in this process
(a handler on the root logger at DEBUG, exception tracebacks included), this process's
stdout/stderr (`capfd`: uvicorn's own handlers and `logging.lastResort` write there), the
tool results the hub hands to the model, and then every file under the test's tmp dir, which
holds the hub's data dir (sqlite, encryption keys, hosted servers' stderr logs). The secret
is looked for raw and in its base64 forms. Out of scope: what an MCP server does with its
own secret, the scripted model's records, and the provider key in the hub's request headers
to the provider (it must carry it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import httpx2
import pytest
import yaml
from dedalus_labs.lib.crypto import encrypt_credentials, fetch_encryption_key_sync
from pydantic import SecretStr

from mcp_hub.credentials import Binding, Credential, bind
from mcp_hub.envelopes import ApiKeySecret, OAuth2Secret, Unsealed
from mcp_hub.registry import Registry
from mcp_hub.scrubbing import REDACTED, Scrubber
from mcp_hub.settings import Settings

from .conftest import PROBE, ROOT
from .dedalus_credentials import Connection, SecretValues
from .hub_server import HubServer
from .model_fixtures import Reply, ScriptedModel

MODEL = "openai/gpt-test"


# -- the planted secrets and the search for them ------------------------------------------------


@dataclass
class Planted:
    """Fresh secrets for one test: each is searched for everywhere."""

    cred: str = field(default_factory=lambda: f"leak-cred-{uuid4().hex}")  # env credential of the probe
    header: str = field(default_factory=lambda: f"leak-header-{uuid4().hex}")  # header credential
    provider: str = field(default_factory=lambda: f"leak-provider-{uuid4().hex}")  # the hub's configured key
    byok: str = field(default_factory=lambda: f"leak-byok-{uuid4().hex}")  # a caller's X-Provider-Key

    def all(self) -> list[str]:
        return [self.cred, self.header, self.provider, self.byok]


def encoded_forms(secret: str) -> list[bytes]:
    """The secret as bytes, and as it would show inside any base64 or URL-encoded text."""
    raw = secret.encode()
    forms = [raw, urllib.parse.quote(secret, safe="").encode()]
    for offset in range(3):  # wherever the secret starts, one of these aligned runs is in the encoding
        chunk = raw[offset:]
        chunk = chunk[:len(chunk) - len(chunk) % 3]
        forms += [base64.b64encode(chunk), base64.urlsafe_b64encode(chunk)]
    return forms


class Collected(logging.Handler):
    """Every log record of the process, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a record that cannot format itself is still searched
            text = f"{record.name} {record.msg!r} {record.args!r}"
        self.lines.append(f"[{record.name}] {text}")


@dataclass
class Watch:
    """What the hub emitted during one test, and the search through it."""

    planted: Planted
    tmp_path: Path
    logs: Collected
    outputs: list[tuple[str, str]] = field(default_factory=list)

    def add(self, label: str, text: str) -> str:
        self.outputs.append((label, text))
        return text

    def response(self, label: str, response: httpx2.Response) -> httpx2.Response:
        self.add(f"{label} body", response.text)
        self.add(f"{label} headers", json.dumps(dict(response.headers)))
        return response

    def assert_clean(self, capfd: pytest.CaptureFixture[str] | None = None, *, files: bool = True) -> None:
        """No planted secret in any output, log line, captured stdio or file under the tmp dir."""
        found: list[str] = []
        texts = [*self.outputs, *(("log", line) for line in self.logs.lines)]
        if capfd is not None:
            out, err = capfd.readouterr()
            texts += [("stdout", out), ("stderr", err)]
            sys.stdout.write(out)  # keep it visible when the test fails
            sys.stderr.write(err)
        walked = [path for path in self.tmp_path.rglob("*") if path.is_file() and not path.is_symlink()]
        assert walked or not files, "the hub wrote no files: the walk would prove nothing"
        for secret in self.planted.all():
            forms = encoded_forms(secret)
            for label, text in texts:
                data = text.encode()
                if any(form in data for form in forms):
                    found.append(f"{secret[:12]}... in {label}: {_around(text, secret)}")
            for path in walked:
                data = path.read_bytes()
                if any(form in data for form in forms):
                    found.append(f"{secret[:12]}... in file {path.relative_to(self.tmp_path)}: "
                                 f"{_around(data.decode('utf-8', 'replace'), secret)}")
        assert not found, "secrets leaked:\n" + "\n".join(found)


def _around(text: str, secret: str) -> str:
    at = text.find(secret)
    start = text.rfind("\n", 0, max(at, 0)) + 1  # from the start of its line (a log line names its logger)
    return repr(text[max(start, at - 300, 0):at + len(secret) + 80]) if at >= 0 else "(encoded form)"


@pytest.fixture
def logs() -> Iterator[Collected]:
    """Every record of every logger (root at DEBUG) while the test runs."""
    handler = Collected()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def watch(tmp_path: Path, logs: Collected) -> Watch:
    return Watch(Planted(), tmp_path, logs)


# -- servers ----------------------------------------------------------------------------------------


def _wrapped_probe(before: str) -> list[str]:
    """A hosted command that runs `before` (Python) and then the probe server."""
    return ["{python}", "-c", f"import os, sys; {before}; exec(open({str(PROBE)!r}).read())"]


def leak_registry(header_url: str) -> dict[str, Any]:
    token = {"probe": {"fields": ["token"], "env": {"PROBE_TOKEN": "{token}"}}}
    return {"servers": {
        "test/probe": {"description": "probe", "connections": token,
                       "versions": {"1.0.0": {"command": ["{python}", str(PROBE)]}},
                       "limits": {"call_timeout": 20.0}},
        # prints its secret to stderr at start-up: the hub's log of it must be scrubbed
        "test/noisy": {"description": "noisy probe", "connections": token, "versions": {"1.0.0": {
            "command": _wrapped_probe("print('starting with token', os.environ['PROBE_TOKEN'], file=sys.stderr, "
                                      "flush=True)")}}},
        # dies at start-up quoting its secret: the connect error carries a stderr tail
        "test/dies": {"description": "dying probe", "connections": token, "versions": {"1.0.0": {
            "command": _wrapped_probe("print('fatal: token', os.environ['PROBE_TOKEN'], 'rejected', file=sys.stderr, "
                                      "flush=True); sys.exit(1)")}}},
        "test/headers": {"description": "header echo", "versions": {"1.0.0": {"url": header_url}},
                         "connections": {"headers": {"fields": ["token"],
                                                     "headers": {"Authorization": "Bearer {token}"}}}},
    }}


@contextlib.contextmanager
def serve_hub(watch: Watch, model: ScriptedModel, header_url: str) -> Iterator[HubServer]:
    settings = Settings.load(data_dir=watch.tmp_path / "data", openai_base_url=model.openai_url,
                             openai_api_key=watch.planted.provider, restart_backoff=0.05, connect_timeout=20,
                             log_level="debug")
    registry = Registry.from_data(leak_registry(header_url), root=ROOT)
    with HubServer.serve(settings, registry) as server:
        yield server


def credentials(planted: Planted) -> list[dict[str, Any]]:
    return [{"connection_name": "probe", "values": {"token": planted.cred}},
            {"connection_name": "headers", "values": {"token": planted.header}}]


def tool_results_sent_to_model(model: ScriptedModel) -> list[str]:
    """The `tool` messages the hub gave the model (the hub's output too)."""
    return [json.dumps(message) for record in model.requests for message in record.messages
            if message.get("role") == "tool"]


# -- the types that hold secrets ------------------------------------------------------------------


def test_secret_holders_cannot_print_themselves(watch: Watch) -> None:
    secret = watch.planted.cred
    cred = Credential(connection_name="probe", values={"token": secret})
    registry = Registry.from_data(leak_registry("http://127.0.0.1:1/mcp"), root=ROOT)
    entry = registry.get("test/probe")
    binding = bind(entry, "test/probe", [cred])
    assert binding.env == {"PROBE_TOKEN": secret} and secret in binding.secrets()  # it does hold the secret
    api_key = ApiKeySecret(type="api_key", api_key=SecretStr(secret))
    oauth = OAuth2Secret(type="oauth2", access_token=SecretStr(secret))
    unsealed = Unsealed(credentials=[cred], headers=dict([api_key.header()]), raw=(secret,))
    settings = Settings.load(data_dir=watch.tmp_path / "data", openai_api_key=secret, anthropic_api_key=secret,
                             providers={"extra": {"base_url": "https://example.invalid/v1", "api_key": secret}})
    holders: list[Any] = [cred, cred.values["token"], binding, Binding(env={"X": secret}, headers={"Y": secret},
                                                                        raw=(secret,)),
                          api_key, oauth, unsealed, settings, settings.providers["extra"], Scrubber([secret])]
    for holder in holders:
        watch.add(f"repr {type(holder).__name__}", repr(holder))
        watch.add(f"str {type(holder).__name__}", str(holder))
        watch.add(f"format {type(holder).__name__}", f"{holder}")
    for model in (cred, api_key, oauth, settings):
        watch.add(f"json {type(model).__name__}", model.model_dump_json())
        watch.add(f"dump {type(model).__name__}", repr(model.model_dump()))
    logging.getLogger("mcp_hub.test").debug("holders: %s %r %s", cred, binding, settings)
    assert cred.values["token"].get_secret_value() == secret
    watch.assert_clean(files=False)


# -- /v1/tools/call ---------------------------------------------------------------------------------


def test_tool_call_paths(watch: Watch, scripted_model: ScriptedModel, header_url: str,
                         capfd: pytest.CaptureFixture[str]) -> None:
    planted = watch.planted
    creds = credentials(planted)

    with serve_hub(watch, scripted_model, header_url) as hub, httpx2.Client(base_url=hub.url, timeout=60) as http:
        def call(label: str, server: Any, tool: str, arguments: dict[str, Any], creds: Any = creds) -> dict[str, Any]:
            response = watch.response(label, http.post("/v1/tools/call", json={
                "server": server, "tool": tool, "arguments": arguments, "credentials": creds}))
            return {"status": response.status_code, **response.json()}

        # success: the server echoes its secret back (env var, caller-sent argument, request header)
        sha = call("env_sha256", "test/probe", "env_sha256", {"name": "PROBE_TOKEN"})
        assert sha["result"] == {"result": hashlib.sha256(planted.cred.encode()).hexdigest()}  # it did arrive
        env = call("env", "test/probe", "env", {"name": "PROBE_TOKEN"})
        assert env["status"] == 200 and env["result"] == {"result": REDACTED} and not env["is_error"]
        echo = call("echo", "test/probe", "echo", {"text": f"my token is {planted.cred}!"})
        assert echo["result"] == {"result": f"my token is {REDACTED}!"}
        assert echo["arguments"] == {"text": f"my token is {REDACTED}!"}
        headers = call("headers", "test/headers", "headers", {})
        assert headers["status"] == 200 and not headers["is_error"], headers
        assert headers["result"]["authorization"] == REDACTED

        # tool error, with the secret in the error message
        failed = call("fail", "test/probe", "fail", {"message": f"refused {planted.cred}"})
        assert failed["is_error"] and failed["arguments"] == {"message": f"refused {REDACTED}"}

        # the server crashes mid-call, then the next call runs on a fresh child
        crashed = call("crash", "test/probe", "crash", {})
        assert crashed["is_error"] and crashed["result"]["error"]["code"], crashed
        again = call("env after crash", "test/probe", "env", {"name": "PROBE_TOKEN"})
        assert again["result"] == {"result": REDACTED}

        # a hosted server that prints its secret to stderr, and one that dies quoting it
        noisy = call("noisy", "test/noisy", "env", {"name": "PROBE_TOKEN"})
        assert noisy["result"] == {"result": REDACTED}
        dies = call("dies", "test/dies", "echo", {"text": "x"})
        assert dies["is_error"] and "test/dies" in dies.get("mcp_server_errors", {}), dies
        assert "rejected" in json.dumps(dies), dies  # the stderr tail is there, its secret masked

        # bad requests that carry the secret
        shape = call("bad credential shape", "test/probe", "env", {"name": "PROBE_TOKEN"},
                     creds={"connection_name": "probe", "values": {"token": {"nested": planted.cred}}})
        assert shape["status"] == 400
        missing = call("missing credential", "test/probe", "env", {"name": "PROBE_TOKEN"},
                       creds={"connection_name": "other", "values": {"token": planted.cred}})
        assert missing["status"] == 400 and missing["code"] == "missing_credentials"
        bad_json = watch.response("bad json", http.post("/v1/tools/call", content=f'{{"tool": "{planted.cred}"',
                                                        headers={"content-type": "application/json"}))
        assert bad_json.status_code == 400

    noisy_logs = list((watch.tmp_path / "data" / "logs").glob("*noisy*"))
    assert noisy_logs and "starting with token [REDACTED]" in noisy_logs[0].read_text()
    watch.assert_clean(capfd)


# -- chat completions ---------------------------------------------------------------------------------


def tool_turn(planted: Planted) -> Reply:
    """A turn calling every echoing tool; the model also puts the secret in `fail`'s arguments."""
    return Reply.call(("test-probe__env", {"name": "PROBE_TOKEN"}), ("test-headers__headers", {}),
                      ("test-noisy__env", {"name": "PROBE_TOKEN"}),
                      ("test-probe__fail", {"message": f"refused {planted.cred}"}),
                      ("test-probe__echo", {"text": planted.cred}), ("test-dies__echo", {"text": "x"}))


def ask(planted: Planted, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "use the tools"}],
            "mcp_servers": ["test/probe", "test/headers", "test/noisy", "test/dies"],
            "credentials": credentials(planted), **fields}


def check_completion(body: dict[str, Any]) -> None:
    results = {r["tool_name"] + "@" + r["server_name"]: r for r in body["mcp_tool_results"]}
    assert results["env@test/probe"]["result"] == {"result": REDACTED}
    assert results["env@test/noisy"]["result"] == {"result": REDACTED}
    assert results["headers@test/headers"]["result"]["authorization"] == REDACTED
    assert results["fail@test/probe"]["is_error"] and results["fail@test/probe"]["arguments"] == {
        "message": f"refused {REDACTED}"}
    assert results["echo@test/probe"]["result"] == {"result": REDACTED}
    assert "test/dies" in body["mcp_server_errors"]


def test_chat_completion_paths(watch: Watch, scripted_model: ScriptedModel, header_url: str,
                               capfd: pytest.CaptureFixture[str]) -> None:
    planted = watch.planted
    with serve_hub(watch, scripted_model, header_url) as hub, httpx2.Client(base_url=hub.url, timeout=60) as http:
        # non-streaming, with an idempotent replay
        scripted_model.push(tool_turn(planted), Reply.say("done"))
        first = watch.response("completion", http.post("/v1/chat/completions", json=ask(planted),
                                                       headers={"idempotency-key": "k1"}))
        assert first.status_code == 200, first.text
        check_completion(first.json())
        replay = watch.response("replay", http.post("/v1/chat/completions", json=ask(planted),
                                                    headers={"idempotency-key": "k1"}))
        assert replay.headers.get("idempotent-replayed") == "true" and replay.content == first.content

        # streaming with tool events and usage, replayed as well
        scripted_model.push(tool_turn(planted), Reply.say("done streaming", chunk_size=3))
        streamed = ask(planted, stream=True, stream_options={"include_tool_events": True, "include_usage": True})
        sse = watch.response("stream", http.post("/v1/chat/completions", json=streamed,
                                                 headers={"idempotency-key": "k2"}))
        assert sse.status_code == 200 and "tool_call.completed" in sse.text and "[DONE]" in sse.text
        final = [json.loads(line[6:]) for line in sse.text.splitlines()
                 if line.startswith("data: {") and '"mcp_tool_results"' in line]
        assert len(final) == 1
        check_completion(final[0])
        replayed = watch.response("stream replay", http.post("/v1/chat/completions", json=streamed,
                                                            headers={"idempotency-key": "k2"}))
        assert replayed.text == sse.text

        # the server crashes mid-call inside the loop
        scripted_model.push(Reply.call(("test-probe__crash", {})), Reply.say("after the crash"))
        crash = watch.response("crash", http.post("/v1/chat/completions", json=ask(planted)))
        assert crash.status_code == 200
        (crashed,) = crash.json()["mcp_tool_results"]
        assert crashed["tool_name"] == "crash" and crashed["is_error"]

    sent = tool_results_sent_to_model(scripted_model)
    assert sent and any(REDACTED in message for message in sent)
    for message in sent:
        watch.add("tool message to the model", message)
    watch.assert_clean(capfd)


def test_provider_errors(watch: Watch, scripted_model: ScriptedModel, header_url: str,
                         capfd: pytest.CaptureFixture[str]) -> None:
    planted = watch.planted
    with serve_hub(watch, scripted_model, header_url) as hub, httpx2.Client(base_url=hub.url, timeout=60) as http:
        def post(label: str, body: dict[str, Any], **headers: str) -> httpx2.Response:
            return watch.response(label, http.post("/v1/chat/completions", json=body, headers=headers))

        # a 500 that quotes the hub's key
        scripted_model.push(Reply.fail(500, f"internal error handling key {planted.provider}"))
        failed = post("500", ask(planted))
        assert failed.status_code >= 500 and failed.json()["code"], failed.text

        # 401s quoting the configured key and a caller's own key (BYOK), plain and streaming
        scripted_model.require_key = f"sk-other-{uuid4().hex}"
        for stream in (False, True):
            configured = post(f"401 configured stream={stream}", ask(planted, stream=stream))
            assert configured.status_code in (401, 502), configured.text
            byok = post(f"401 byok stream={stream}", ask(planted, stream=stream), **{"x-provider-key": planted.byok})
            assert byok.status_code in (401, 502), byok.text
        quoted = [r for r in scripted_model.requests if r.api_key in (planted.provider, planted.byok)]
        # both keys really reached the model, which quoted them back
        assert {r.api_key for r in quoted} == {planted.provider, planted.byok}
        scripted_model.require_key = None

        # a provider failure after tools ran, mid-stream, kept for the idempotent retry
        scripted_model.push(tool_turn(planted), Reply.fail(500, f"boom with {planted.provider}"))
        body = ask(planted, stream=True, stream_options={"include_tool_events": True})
        mid = post("mid-stream failure", body, **{"idempotency-key": "k3"})
        assert mid.status_code == 200 and "event: error" in mid.text and "tool_call.completed" in mid.text
        again = post("mid-stream failure replay", body, **{"idempotency-key": "k3"})
        assert again.text == mid.text

        # a non-streaming failure after tools ran, with its stored record replayed
        scripted_model.push(tool_turn(planted), Reply.fail(500, f"boom again with {planted.provider}"))
        late = post("late failure", ask(planted), **{"idempotency-key": "k4"})
        assert late.status_code >= 500
        late_again = post("late failure replay", ask(planted), **{"idempotency-key": "k4"})
        assert late_again.json() == late.json()  # (the stored copy is formatted differently: chat_api.py)

        # models listing with a key the model rejects
        scripted_model.require_key = f"sk-other-{uuid4().hex}"
        watch.response("models", http.get("/v1/models", headers={"x-provider-key": planted.byok}))
        scripted_model.require_key = None
    watch.assert_clean(capfd)


def test_model_quoting_a_secret_is_scrubbed(watch: Watch, scripted_model: ScriptedModel, header_url: str,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    """The model repeats a credential (e.g. the user pasted it): content, unexecuted and client calls."""
    planted = watch.planted
    client_tool = {"type": "function", "function": {"name": "local", "parameters": {"type": "object"}}}
    with serve_hub(watch, scripted_model, header_url) as hub, httpx2.Client(base_url=hub.url, timeout=60) as http:
        scripted_model.push(Reply.say(f"your token is {planted.cred}"))
        said = watch.response("content", http.post("/v1/chat/completions", json=ask(planted)))
        assert said.json()["choices"][0]["message"]["content"] == f"your token is {REDACTED}"

        scripted_model.push(Reply.say(f"your token is {planted.cred}", chunk_size=4))
        streamed = watch.response("streamed content", http.post("/v1/chat/completions", json=ask(planted, stream=True)))
        pieces = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
        text = "".join(p["choices"][0]["delta"].get("content") or "" for p in pieces if p["choices"])
        assert text == f"your token is {REDACTED}"

        scripted_model.push(Reply.call(("test-probe__echo", {"text": planted.cred})))
        exhausted = watch.response("unexecuted", http.post("/v1/chat/completions", json=ask(planted, max_turns=1)))
        assert exhausted.json()["turns_exhausted"] is True

        scripted_model.push(Reply.call(("local", {"token": planted.cred})))
        client = watch.response("client call", http.post("/v1/chat/completions", json=ask(planted, tools=[client_tool])))
        assert client.json()["choices"][0]["finish_reason"] == "tool_calls"
    watch.assert_clean(capfd)


# -- encrypted credentials --------------------------------------------------------------------------


def test_encrypted_credentials(watch: Watch, scripted_model: ScriptedModel, header_url: str,
                               capfd: pytest.CaptureFixture[str]) -> None:
    planted = watch.planted
    with serve_hub(watch, scripted_model, header_url) as hub, httpx2.Client(base_url=hub.url, timeout=60) as http:
        with httpx.Client() as sdk_http:
            public_key = fetch_encryption_key_sync(sdk_http, hub.url)
        probe = encrypt_credentials(public_key, SecretValues(Connection("test-probe", secrets={"token": "T"}),
                                                             token=planted.cred).values_for_encryption())
        header = encrypt_credentials(public_key, SecretValues(
            Connection(header_url.replace("/", "-"), secrets={"api_key": "K"}, auth_header_name="X-Probe-Key",
                       auth_header_format="Key {api_key}"), api_key=planted.header).values_for_encryption())
        env = watch.response("envelope env", http.post("/v1/tools/call", json={
            "server": {"slug": "test/probe", "credentials": {"test-probe": probe}}, "tool": "env",
            "arguments": {"name": "PROBE_TOKEN"}}))
        assert env.json()["result"] == {"result": REDACTED}, env.text
        headers = watch.response("envelope headers", http.post("/v1/tools/call", json={
            "server": {"url": header_url, "name": header_url, "credentials": {header_url.replace("/", "-"): header}},
            "tool": "headers", "arguments": {}}))
        assert headers.json()["result"]["x-probe-key"] == REDACTED, headers.text
        tampered = probe[:-6] + ("AAAAAA" if not probe.endswith("AAAAAA") else "BBBBBB")
        bad = watch.response("tampered envelope", http.post("/v1/tools/call", json={
            "server": {"slug": "test/probe", "credentials": {"test-probe": tampered}}, "tool": "env",
            "arguments": {"name": "PROBE_TOKEN"}}))
        assert bad.status_code >= 400 or bad.json().get("is_error"), bad.text
    watch.assert_clean(capfd)


# -- the CLI ------------------------------------------------------------------------------------------


def test_cli_call_with_cred(watch: Watch, header_url: str) -> None:
    planted = watch.planted
    registry = watch.tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump(leak_registry(header_url)))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "mcp_hub", "call", "--registry", str(registry), "--data-dir",
                                 str(watch.tmp_path / "data"), "--log-level", "debug", *args],
                                capture_output=True, text=True, timeout=120, cwd=watch.tmp_path)
        watch.add(f"cli {args[:2]} stdout", result.stdout)
        watch.add(f"cli {args[:2]} stderr", result.stderr)
        return result

    cred = f"probe:token={planted.cred}"
    env = run("test/probe", "env", "--args", '{"name": "PROBE_TOKEN"}', "--cred", cred)
    assert env.returncode == 0, env.stderr
    assert json.loads(env.stdout) == {"result": REDACTED}
    failed = run("test/probe", "fail", "--args", json.dumps({"message": f"refused {planted.cred}"}), "--cred", cred)
    assert failed.returncode == 1  # the probe answers "Error executing tool fail" (no message)
    crashed = run("test/probe", "crash", "--cred", cred)
    assert crashed.returncode != 0
    noisy = run("test/noisy", "env", "--args", '{"name": "PROBE_TOKEN"}', "--cred", cred)
    assert noisy.returncode == 0 and json.loads(noisy.stdout) == {"result": REDACTED}
    dies = run("test/dies", "echo", "--args", '{"text": "x"}', "--cred", cred)
    assert dies.returncode != 0 and "rejected" in dies.stdout + dies.stderr
    headers = run("test/headers", "headers", "--cred", f"headers:token={planted.header}", "--json")
    assert headers.returncode == 0, headers.stderr
    watch.assert_clean()


def test_the_search_finds_a_planted_leak(watch: Watch) -> None:
    """The search itself works: raw, base64 and URL-encoded forms in outputs, logs and files."""
    secret = watch.planted.header
    cases: list[Any] = [
        lambda: watch.add("output", f"x{secret}y"),
        lambda: logging.getLogger("mcp_hub.test").debug("a %s", base64.b64encode(f"ab{secret}".encode()).decode()),
        lambda: (watch.tmp_path / "file.bin").write_bytes(base64.urlsafe_b64encode(f"a{secret}".encode())),
    ]
    for plant in cases:
        watch.outputs.clear()
        watch.logs.lines.clear()
        (watch.tmp_path / "file.bin").write_bytes(b"clean")
        plant()
        with pytest.raises(AssertionError, match="secrets leaked"):
            watch.assert_clean()
    watch.outputs.clear()
    watch.logs.lines.clear()
    (watch.tmp_path / "file.bin").write_bytes(b"clean")
    watch.assert_clean()


def test_a_misplaced_secret_in_a_malformed_credential(watch: Watch, scripted_model: ScriptedModel,
                                                      header_url: str) -> None:
    planted = watch.planted
    with serve_hub(watch, scripted_model, header_url) as hub, httpx2.Client(base_url=hub.url, timeout=60) as http:
        response = watch.response("extra credential field", http.post("/v1/tools/call", json={
            "server": "test/probe", "tool": "env", "arguments": {"name": "PROBE_TOKEN"},
            "credentials": {"connection_name": "probe", "values": {"token": "x" * 8}, planted.cred: 1}}))
        assert response.status_code == 400
    watch.assert_clean()


# -- control characters and escaped secrets ---------------------------------------------------------


def test_control_characters_in_a_header_credential_are_refused(watch: Watch, scripted_model: ScriptedModel,
                                                               header_url: str,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    planted = watch.planted
    values = [f"{planted.header}\r\nX-Injected: 1", f"{planted.header}\n", f"x\x00{planted.header}"]
    with serve_hub(watch, scripted_model, header_url) as hub, httpx2.Client(base_url=hub.url, timeout=60) as http:
        for index, value in enumerate(values):
            creds = [{"connection_name": "headers", "values": {"token": value}}]
            response = watch.response(f"control characters {index}", http.post("/v1/tools/call", json={
                "server": "test/headers", "tool": "headers", "arguments": {}, "credentials": creds}))
            body = response.json()
            assert response.status_code == 400 and body["error"]["code"] == "credentials_invalid", body
            assert "'headers'" in body["error"]["message"] and "'token'" in body["error"]["message"]
        scripted_model.push(Reply.say("done"))
        chat = watch.response("control characters in a completion", http.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "mcp_servers": ["test/headers"],
            "credentials": [{"connection_name": "headers", "values": {"token": values[0]}}]}))
        assert chat.status_code == 200, chat.text
        assert chat.json()["mcp_server_errors"]["test/headers"]["code"] == "credentials_invalid"
        records = watch.response("audit", http.get("/v1/audit/tool-calls"))
        assert "credentials_invalid" in records.text
    watch.assert_clean(capfd)


@pytest.mark.parametrize("escape", [
    lambda s: json.dumps(s)[1:-1],
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    lambda s: repr(s)[1:-1],
    lambda s: repr(s.encode())[2:-1],
    lambda s: urllib.parse.quote(s, safe=""),
    lambda s: urllib.parse.quote_plus(s),
], ids=["json", "json-unicode", "repr", "repr-bytes", "percent", "percent-plus"])
def test_the_scrubber_catches_escaped_secrets(escape: Any) -> None:
    secret = 'tok"en\r\n\t\\/é+ =&' + uuid4().hex
    escaped = escape(secret)
    assert escaped != secret  # the form differs from the raw secret
    scrubbed = Scrubber([secret]).text(f"connect failed: header value {escaped}!")
    assert scrubbed == f"connect failed: header value {REDACTED}!"
    assert Scrubber([secret]).value({"k": [escaped]}) == {"k": [REDACTED]}
