"""Redis out of reach: idempotent, deferred and handoff requests answer 503 `state_unavailable`, then recover.

The shared Redis stays up: the hub reaches it through a TCP proxy the test closes and reopens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2

from mcp_hub.registry import Registry

from .conftest import ROOT, asgi_client, probe_entry
from .model_fixtures import Call, Reply, ScriptedModel
from .tcp_proxy import TcpProxy
from .test_completions import ask, chat_settings

WORD: Any = {"type": "function", "function": {"name": "get_word", "parameters": {"type": "object"}}}
REGISTRY = {"servers": {"test/probe": {**probe_entry(), "limits": {"call_timeout": 5.0}}}}


def assert_state_unavailable(response: httpx2.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "state_unavailable" and error["type"] == "server_error"
    assert set(error) == {"message", "type", "param", "code"} and "Redis" in error["message"]


def handoff_turn() -> Reply:
    return Reply(tool_calls=[Call(name="get_word", arguments={}, id="call_word")])


async def requests_of_each_kind(client: httpx2.AsyncClient) -> list[httpx2.Response]:
    idempotent = await client.post("/v1/chat/completions", json=ask(), headers={"Idempotency-Key": f"k-{time.time()}"})
    deferred = await client.post("/v1/chat/completions", json=ask(deferred=True))
    handoff = await client.post("/v1/chat/completions", json=ask("use it", mcp_servers="test/probe", tools=[WORD]))
    resumed = await client.post("/v1/chat/completions", json=ask(correlation_id="corr_unknown", handoff_mode=True))
    return [idempotent, deferred, handoff, resumed]


async def test_redis_out_of_reach_answers_503_and_recovers(
        tmp_path: Path, scripted_model: ScriptedModel, redis_state: tuple[str, str]) -> None:
    url, prefix = redis_state
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    with TcpProxy((parts.hostname, parts.port)) as proxy:
        settings = chat_settings(tmp_path, scripted_model, state_url=f"redis://127.0.0.1:{proxy.port}{parts.path}",
                                 state_prefix=prefix)
        async with asgi_client(settings, Registry.from_data(REGISTRY, root=ROOT)) as (client, _):
            scripted_model.push(Reply.say("fine"))
            assert (await client.post("/v1/chat/completions", json=ask(),
                                      headers={"Idempotency-Key": "before"})).status_code == 200
            proxy.close()
            scripted_model.push(handoff_turn())  # only the handoff reaches the model: the others stop first
            down = await requests_of_each_kind(client)
            for response in down:
                assert_state_unavailable(response)
            polled = await client.get("/v1/chat/deferred-completion/defer_x")
            assert_state_unavailable(polled)

            proxy.open()  # Redis is back: the same requests succeed without a restart
            scripted_model.reset()
            scripted_model.push(Reply.say("one"), handoff_turn(), Reply.say("two"))
            deadline = time.monotonic() + 20
            while True:
                first = await client.post("/v1/chat/completions", json=ask(),
                                          headers={"Idempotency-Key": f"after-{time.monotonic()}"})
                if first.status_code == 200 or time.monotonic() > deadline:
                    break
                assert_state_unavailable(first)  # a connection the pool still held: the next one is fresh
            assert first.status_code == 200, first.text
            handoff = await client.post("/v1/chat/completions", json=ask("use it", mcp_servers="test/probe",
                                                                         tools=[WORD]))
            assert handoff.status_code == 200 and handoff.json()["correlation_id"].startswith("corr_")
            deferred = await client.post("/v1/chat/completions", json=ask(deferred=True))
            assert deferred.status_code == 202, deferred.text
            resumed = await client.post("/v1/chat/completions",
                                        json=ask(correlation_id="corr_unknown", handoff_mode=True))
            assert resumed.status_code == 404 and resumed.json()["error"]["code"] == "handoff_not_found"
            request_id = deferred.json()["request_id"]
            assert (await client.get(f"/v1/chat/deferred-completion/{request_id}")).status_code in (200, 202)




async def test_shared_rate_limits_out_of_reach_answer_503(
        tmp_path: Path, scripted_model: ScriptedModel, redis_state: tuple[str, str]) -> None:
    url, prefix = redis_state
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    with TcpProxy((parts.hostname, parts.port)) as proxy:
        settings = chat_settings(tmp_path, scripted_model, state_url=f"redis://127.0.0.1:{proxy.port}{parts.path}",
                                 state_prefix=prefix, rate_limit_per_minute=600)
        async with asgi_client(settings, Registry.from_data(REGISTRY, root=ROOT)) as (client, _):
            assert (await client.get("/v1/servers")).status_code == 200
            proxy.close()
            assert_state_unavailable(await client.get("/v1/servers"))  # refused, not counted as allowed
            proxy.open()
            deadline = time.monotonic() + 20
            while (response := await client.get("/v1/servers")).status_code != 200 and time.monotonic() < deadline:
                assert_state_unavailable(response)
            assert response.status_code == 200 and "x-ratelimit-remaining-requests" in response.headers
