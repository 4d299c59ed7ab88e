"""Deferred completions: 202 at once, the work in the hub's background, the result fetched by request id."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import httpx2

from mcp_hub.registry import Registry

from .conftest import ROOT, asgi_client, create_key, probe_entry
from .model_fixtures import Reply, ScriptedModel, ToolThenAnswer
from .test_completions import ask, chat_settings

REGISTRY = {"servers": {"test/probe": {**probe_entry(), "limits": {"call_timeout": 5.0}}}}


def registry() -> Registry:
    return Registry.from_data(REGISTRY, root=ROOT)


async def poll(client: httpx2.AsyncClient, request_id: str, headers: dict[str, str] | None = None,
               timeout: float = 15.0) -> tuple[httpx2.Response, list[int]]:
    """GET the deferred completion until it is no longer 202 (bounded); the answer and every status seen."""
    statuses: list[int] = []
    with anyio.fail_after(timeout):
        while True:
            response = await client.get(f"/v1/chat/deferred-completion/{request_id}", headers=headers)
            statuses.append(response.status_code)
            if response.status_code != 202:
                return response, statuses
            await anyio.sleep(0.05)


async def test_deferred_completion_runs_in_the_background(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    acme = await create_key(chat_settings(tmp_path, scripted_model), "acme")
    other = await create_key(chat_settings(tmp_path, scripted_model), "other")
    scripted_model.responder = ToolThenAnswer(tool="__echo", arguments={"text": "deep"}, answer="Got {result}")
    scripted_model.push(Reply.call(("test-probe__echo", {"text": "deep"}), delay=0.3))
    async with asgi_client(chat_settings(tmp_path, scripted_model), registry()) as (client, hub):
        sources: list[str] = []
        execute = hub.execute

        async def recording(calls: Any, servers: Any, *, parallel: bool = True, context: Any = None,
                            **rest: Any) -> Any:
            sources.append(context.source)
            return await execute(calls, servers, parallel=parallel, context=context, **rest)

        hub.execute = recording  # type: ignore[method-assign]
        mine = {"Authorization": f"Bearer {acme}"}
        started = await client.post("/v1/chat/completions", json=ask(mcp_servers="test/probe", deferred=True),
                                    headers=mine)
        assert started.status_code == 202, started.text
        request_id = started.json()["request_id"]
        assert started.json()["status"] == "running" and started.headers["location"].endswith(request_id)
        assert len(scripted_model.requests) <= 1  # answered before the work finished
        theirs = await client.get(f"/v1/chat/deferred-completion/{request_id}",
                                  headers={"Authorization": f"Bearer {other}"})
        assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "deferred_not_found"
        done, statuses = await poll(client, request_id, mine)
        assert statuses[0] == 202 and done.status_code == 200
        body = done.json()
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == 'Got {"result":"deep"}'
        assert body["tools_executed"] == ["echo"] and sources == ["deferred"]
        unknown = await client.get("/v1/chat/deferred-completion/defer_nope", headers=mine)
        assert unknown.status_code == 404
        scripted_model.push(Reply.say("whole"))
        streamed = await client.post("/v1/chat/completions", json=ask(deferred=True, stream=True), headers=mine)
        assert streamed.status_code == 202  # `stream` has no meaning for a result fetched later
        fetched, _ = await poll(client, streamed.json()["request_id"], mine)
        assert fetched.json()["choices"][0]["message"]["content"] == "whole"


async def test_heartbeat_outlives_the_lease_and_failures_are_recorded(tmp_path: Path,
                                                                      scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.say("slow answer", delay=1.0), Reply.fail(500, "upstream exploded"))
    settings = chat_settings(tmp_path, scripted_model, deferred_lease=0.3)
    async with asgi_client(settings, registry()) as (client, _):
        began = time.monotonic()
        request_id = (await client.post("/v1/chat/completions", json=ask(deferred=True))).json()["request_id"]
        done, statuses = await poll(client, request_id)
        assert time.monotonic() - began >= 0.9  # three leases: only the heartbeat kept the record alive
        assert done.status_code == 200 and set(statuses[:-1]) == {202}
        failing = (await client.post("/v1/chat/completions", json=ask(deferred=True))).json()["request_id"]
        failed, _ = await poll(client, failing)
        assert failed.status_code == 502 and failed.json()["error"]["code"] == "provider_error"


async def test_an_idempotent_retry_gets_the_same_request_id(tmp_path: Path, scripted_model: ScriptedModel) -> None:
    scripted_model.push(Reply.say("once"))
    async with asgi_client(chat_settings(tmp_path, scripted_model), registry()) as (client, _):
        headers = {"Idempotency-Key": "deferred-1"}
        first = await client.post("/v1/chat/completions", json=ask(deferred=True), headers=headers)
        retry = await client.post("/v1/chat/completions", json=ask(deferred=True), headers=headers)
        assert retry.status_code == 202 and retry.headers["idempotent-replayed"] == "true"
        assert retry.json()["request_id"] == first.json()["request_id"]
        done, _ = await poll(client, first.json()["request_id"])
        assert done.json()["choices"][0]["message"]["content"] == "once"
        assert len(scripted_model.requests) == 1


async def test_a_hub_that_stops_records_its_running_work_as_interrupted(
        tmp_path: Path, scripted_model: ScriptedModel, redis_state: tuple[str, str]) -> None:
    url, prefix = redis_state
    shared: dict[str, Any] = {"state_url": url, "state_prefix": prefix}
    scripted_model.push(Reply.say("never seen", delay=30))
    async with asgi_client(chat_settings(tmp_path / "b", scripted_model, **shared), registry()) as (reader, _):
        async with asgi_client(chat_settings(tmp_path / "a", scripted_model, **shared), registry()) as (runner, _):
            request_id = (await runner.post("/v1/chat/completions", json=ask(deferred=True))).json()["request_id"]
            running = await reader.get(f"/v1/chat/deferred-completion/{request_id}")
            assert running.status_code == 202  # the other instance sees it
            await scripted_model.wait(1)
        stopped = await reader.get(f"/v1/chat/deferred-completion/{request_id}")
        assert stopped.status_code == 503 and stopped.json()["error"]["code"] == "deferred_interrupted"
