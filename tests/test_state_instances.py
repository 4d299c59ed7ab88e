"""Two hubs sharing one Redis behave as one: idempotent retries and rate limits span them."""

from __future__ import annotations

from pathlib import Path

from mcp_hub.registry import Registry

from .conftest import ROOT, asgi_client, probe_entry
from .model_fixtures import ScriptedModel, ToolThenAnswer
from .test_completions import ask, chat_settings

REGISTRY = {"servers": {"test/probe": {**probe_entry(), "limits": {"call_timeout": 2.0}}}}


async def test_a_retry_on_the_other_instance_is_not_run_again(
        tmp_path: Path, scripted_model: ScriptedModel, redis_state: tuple[str, str]) -> None:
    url, prefix = redis_state
    registry = Registry.from_data(REGISTRY, root=ROOT)
    scripted_model.responder = ToolThenAnswer(tool="__echo", arguments={"text": "once"})
    request, headers = ask(mcp_servers="test/probe"), {"Idempotency-Key": "shared-key"}
    async with asgi_client(chat_settings(tmp_path / "a", scripted_model, state_url=url, state_prefix=prefix),
                           registry) as (one, _), \
            asgi_client(chat_settings(tmp_path / "b", scripted_model, state_url=url, state_prefix=prefix),
                        registry) as (two, _):
        first = await one.post("/v1/chat/completions", json=request, headers=headers)
        assert first.status_code == 200 and first.json()["tools_executed"] == ["echo"]
        retry = await two.post("/v1/chat/completions", json=request, headers=headers)
        assert retry.status_code == 200 and retry.headers.get("idempotent-replayed") == "true"
        assert retry.json() == first.json()
        assert len(scripted_model.requests) == 2  # one tool turn and one answer, on the first hub only
        other = await two.post("/v1/chat/completions", json=ask("different"), headers=headers)
        assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"


async def test_a_rate_limit_counts_across_instances(
        tmp_path: Path, scripted_model: ScriptedModel, redis_state: tuple[str, str]) -> None:
    url, prefix = redis_state
    registry = Registry.from_data(REGISTRY, root=ROOT)
    limits = {"state_url": url, "state_prefix": prefix, "rate_limit_per_minute": 1, "rate_limit_burst": 3}
    async with asgi_client(chat_settings(tmp_path / "a", scripted_model, **limits), registry) as (one, _), \
            asgi_client(chat_settings(tmp_path / "b", scripted_model, **limits), registry) as (two, _):
        remaining = []
        for http in (one, two, one):
            response = await http.get("/v1/servers")
            assert response.status_code == 200
            remaining.append(response.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["2", "1", "0"]
        refused = await two.get("/v1/servers")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 59  # one request a minute
