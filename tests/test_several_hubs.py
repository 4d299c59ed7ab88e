"""Two real hub processes on one Redis behind a real nginx (round robin) behave as one hub.

Each hub is `python -m mcp_hub serve` on its own port, with the same registry file, the
same data_dir (the SQLite records database with the API keys, the encryption keys) and the same `state_url`; nginx from Debian's
packages balances them, as in README "Deployment: several hubs". Every flow goes through
nginx, and the `x-hub-instance` header shows which hub answered.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import yaml

from mcp_hub.settings import Settings

from .conftest import REDIS_URL, create_key_now, free_port, probe_entry, spawn, stop
from .model_fixtures import Call, Reply, ScriptedModel, ToolThenAnswer
from .test_completions import ECHO, MODEL

WORD: Any = {"type": "function", "function": {"name": "get_word", "parameters": {"type": "object"}}}
NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    upstream hubs {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 5m;
        location / {{
            proxy_pass http://hubs;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def redis_or_skip() -> None:
    import redis
    from redis.exceptions import RedisError

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} is unreachable in CI: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    finally:
        client.close()


def forget_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@dataclass
class Cluster:
    """Two hubs and nginx in front of them; `url` is nginx, `hubs` name -> (port, process)."""

    url: str
    model: ScriptedModel
    keys: dict[str, str]
    hubs: dict[str, tuple[int, subprocess.Popen[bytes]]] = field(default_factory=dict)

    def headers(self, tenant: str = "acme", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}", **extra}

    def kill(self, name: str) -> None:
        _, proc = self.hubs[name]
        os.killpg(proc.pid, 9)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def nginx() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/sbin/nginx") if Path(p).exists()), None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (.ci/run installs it)")
        pytest.skip("nginx is not installed (apt-get install -y nginx)")
    return found


def start_cluster(stack: ExitStack, root: Path, nginx: str, model: ScriptedModel) -> Cluster:
    redis_or_skip()
    prefix = f"mcp-hub-test:{uuid.uuid4().hex}:"
    stack.callback(forget_prefix, prefix)
    data = root / "data"
    data.mkdir(parents=True)
    keys = {tenant: create_key_now(Settings.load(data_dir=data), tenant) for tenant in ("acme", "other")}
    registry = root / "registry.yaml"
    registry.write_text(yaml.safe_dump({"servers": {"test/probe": {**probe_entry(), "limits": {"call_timeout": 10}}}}))
    env = {"OPENAI_BASE_URL": model.openai_url, "OPENAI_API_KEY": "sk-hub", "MCP_HUB_STATE_URL": REDIS_URL,
           "MCP_HUB_STATE_PREFIX": prefix, "MCP_HUB_RATE_LIMIT_PER_MINUTE": "60", "MCP_HUB_RATE_LIMIT_BURST": "1000",
           "MCP_HUB_DEFERRED_LEASE": "1.5", "MCP_HUB_RESTART_BACKOFF": "0.05",
           "MCP_HUB_FORWARDED_ALLOW_IPS": "127.0.0.1"}  # nginx, on loopback: its X-Forwarded-For is believed
    hubs: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    for name in ("hub-a", "hub-b"):  # one after the other: the first creates what the data_dir lacks
        port = free_port()
        proc = spawn([sys.executable, "-m", "mcp_hub", "serve", "--port", str(port), "--registry", str(registry),
                      "--data-dir", str(data), "--log-level", "warning"], port, root / f"{name}.log",
                     env={**env, "MCP_HUB_INSTANCE_NAME": name})
        stack.callback(stop, proc)
        hubs[name] = (port, proc)
    conf_dir = root / "nginx"
    (conf_dir / "tmp").mkdir(parents=True)
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{hub_port};" for hub_port, _ in hubs.values())
    (conf_dir / "nginx.conf").write_text(NGINX_CONF.format(dir=conf_dir, port=port, servers=servers))
    proxy = spawn([nginx, "-p", str(conf_dir), "-e", str(conf_dir / "error.log"), "-c", str(conf_dir / "nginx.conf"),
                   "-g", "daemon off;"], port, root / "nginx.out")
    stack.callback(stop, proxy)
    return Cluster(url=f"http://127.0.0.1:{port}", model=model, keys=keys, hubs=hubs)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, nginx: str) -> Iterator[Cluster]:
    with ExitStack() as stack:
        model = stack.enter_context(ScriptedModel.serve())
        yield start_cluster(stack, tmp_path_factory.mktemp("cluster"), nginx, model)


@pytest.fixture
def hubs(cluster: Cluster) -> Cluster:
    cluster.model.reset()
    return cluster


def mixed_turn() -> Reply:
    return Reply(tool_calls=[Call(name=ECHO, arguments={"text": "now"}, id="call_ready"),
                             Call(name="get_word", arguments={}, id="call_word"),
                             Call(name=ECHO, arguments={"text": {"$ref": "get_word"}}, id="call_later")])


def begin() -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "mcp_servers": "test/probe",
            "tools": [WORD]}


def follow_up(first: dict[str, Any], **fields: Any) -> dict[str, Any]:
    calls = first["choices"][0]["message"]["tool_calls"]
    return {**begin(), "messages": [{"role": "user", "content": "go"},
                                    {"role": "assistant", "content": None, "tool_calls": calls},
                                    *({"role": "tool", "tool_call_id": c["id"], "content": "kiwi"} for c in calls)],
            **fields}


def client(cluster: Cluster, base: str | None = None) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=base or cluster.url, timeout=30)


async def test_a_handoff_begun_on_one_hub_resumes_on_the_other(hubs: Cluster) -> None:
    hubs.model.push(mixed_turn(), Reply.say("done"))
    async with client(hubs) as http:
        first = await http.post("/v1/chat/completions", json=begin(), headers=hubs.headers())
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["deferred"][0]["blocked_by"] == ["call_word"]
        # The Dedalus runner's way: neither correlation_id nor deferred_calls, just the tool results.
        final = await http.post("/v1/chat/completions", json=follow_up(body), headers=hubs.headers())
    assert final.status_code == 200, final.text
    assert {first.headers["x-hub-instance"], final.headers["x-hub-instance"]} == {"hub-a", "hub-b"}
    assert final.json()["choices"][0]["message"]["content"] == "done"
    assert [r["arguments"]["text"] for r in final.json()["mcp_tool_results"]] == ["now", "kiwi"]
    seen = hubs.model.requests[1].messages
    assert [c["id"] for c in seen[1]["tool_calls"]] == ["call_ready", "call_word", "call_later"]


async def test_a_deferred_completion_is_read_from_the_other_hub(hubs: Cluster) -> None:
    hubs.model.push(Reply.say("later", delay=0.5))
    async with client(hubs) as http:
        started = await http.post("/v1/chat/completions", json={**begin(), "tools": None, "deferred": True},
                                  headers=hubs.headers())
        assert started.status_code == 202, started.text
        path = f"/v1/chat/deferred-completion/{started.json()['request_id']}"
        answered_by: set[str] = set()
        with anyio.fail_after(15):
            while True:
                response = await http.get(path, headers=hubs.headers())
                answered_by.add(response.headers["x-hub-instance"])
                if response.status_code != 202:
                    break
                await anyio.sleep(0.05)
        assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "later"
        assert answered_by - {started.headers["x-hub-instance"]}  # the other hub answered the GET
        for _ in range(2):  # both hubs refuse another tenant
            theirs = await http.get(path, headers=hubs.headers("other"))
            assert theirs.status_code == 404


async def test_an_idempotent_retry_on_the_other_hub_does_not_run_again(hubs: Cluster) -> None:
    hubs.model.responder = ToolThenAnswer(tool="__echo", arguments={"text": "once"})
    hubs.model.push(Reply.call((ECHO, {"text": "once"}), delay=0.5))  # the first is still running at the retry
    request = {**begin(), "tools": None}
    headers = hubs.headers(**{"Idempotency-Key": f"key-{uuid.uuid4().hex}"})
    responses: list[httpx2.Response] = []
    async with client(hubs) as http:
        async def send() -> None:
            responses.append(await http.post("/v1/chat/completions", json=request, headers=headers))

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await hubs.model.wait(1)  # the first attempt reached the model
            tg.start_soon(send)
    first, retry = responses if "idempotent-replayed" not in responses[0].headers else responses[::-1]
    assert first.status_code == retry.status_code == 200
    assert retry.headers["idempotent-replayed"] == "true" and retry.json() == first.json()
    assert {first.headers["x-hub-instance"], retry.headers["x-hub-instance"]} == {"hub-a", "hub-b"}
    assert len(hubs.model.requests) == 2  # one tool turn and one answer: the tool ran once
    assert first.json()["tools_executed"] == ["echo"]


async def test_the_rate_limit_counts_on_both_hubs(hubs: Cluster) -> None:
    async with client(hubs) as http:
        seen = []
        for _ in range(6):
            response = await http.get("/v1/servers", headers=hubs.headers("other"))
            assert response.status_code == 200
            seen.append((response.headers["x-hub-instance"], int(response.headers["x-ratelimit-remaining-requests"])))
    assert {name for name, _ in seen} == {"hub-a", "hub-b"}
    remaining = [left for _, left in seen]
    assert all(later == earlier - 1 for earlier, later in zip(remaining, remaining[1:], strict=False)), seen


async def test_killing_a_hub_mid_request_loses_no_saved_state(tmp_path: Path, nginx: str) -> None:
    with ExitStack() as stack:
        model = stack.enter_context(ScriptedModel.serve())
        cluster = start_cluster(stack, tmp_path, nginx, model)
        slow = Reply.say("never answered", delay=60)
        model.push(mixed_turn(), slow, slow, Reply.say("recovered"))
        async with client(cluster) as http:
            first = await http.post("/v1/chat/completions", json=begin(), headers=cluster.headers())
            assert first.status_code == 200, first.text
            began_on = first.headers["x-hub-instance"]
            port, _ = cluster.hubs[began_on]
            async with client(cluster, f"http://127.0.0.1:{port}") as direct, anyio.create_task_group() as tg:
                # The same hub runs a deferred completion, and takes the resume; it dies waiting for the model.
                deferred = await direct.post("/v1/chat/completions", json={**begin(), "tools": None, "deferred": True},
                                             headers=cluster.headers())
                assert deferred.status_code == 202
                await model.wait(2)
                failed: list[BaseException] = []

                async def doomed() -> None:
                    try:
                        await direct.post("/v1/chat/completions", json=follow_up(first.json()), headers=cluster.headers())
                    except httpx2.TransportError as exc:
                        failed.append(exc)

                tg.start_soon(doomed)
                await model.wait(3)
                cluster.kill(began_on)
            assert failed  # the connection died with the hub
            for _ in range(3):  # the client retries as the SDKs do on a 502 from the balancer
                final = await http.post("/v1/chat/completions", json=follow_up(first.json()), headers=cluster.headers())
                if final.status_code != 502:
                    break
            assert final.status_code == 200, final.text
            assert final.headers["x-hub-instance"] != began_on
            assert final.json()["choices"][0]["message"]["content"] == "recovered"
            assert [r["arguments"]["text"] for r in final.json()["mcp_tool_results"]] == ["now", "kiwi"]
            # The dead hub's deferred completion is not "running" forever: its lease lapses, then 404.
            path = f"/v1/chat/deferred-completion/{deferred.json()['request_id']}"
            with anyio.fail_after(10):
                while (lapsed := await http.get(path, headers=cluster.headers())).status_code == 202:
                    await anyio.sleep(0.1)
            assert lapsed.status_code == 404, lapsed.text
