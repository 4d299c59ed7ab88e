"""Interop: PyPI `mcp-server-time` (an SDK-2 server) through the hub, in both protocol eras.

The hub pins third-party servers to the handshake era by default (`protocol: legacy`);
a registry entry may choose the stateless 2026-07-28 era explicitly or let `auto`
negotiate it. Each case proves which era its session actually negotiated.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from mcp_hub.executor import ToolCall
from mcp_hub.hub import Hub
from mcp_hub.registry import Registry
from mcp_hub.settings import Settings

from ..conftest import ROOT

SLUG = "ext/time"
COMMAND = ["{python}", "-m", "mcp_server_time", "--local-timezone", "UTC"]
ERAS = [("legacy", "2025-11-25"), ("2026-07-28", "2026-07-28"), ("auto", "2026-07-28")]


def registry(protocol: str) -> Registry:
    version = {"command": COMMAND, "protocol": protocol}
    return Registry.from_data({"servers": {SLUG: {"versions": {"2026.10.19": version}}}}, root=ROOT)


@pytest.mark.parametrize(("protocol", "negotiated"), ERAS, ids=[p for p, _ in ERAS])
async def test_time_server_in_each_era(protocol: str, negotiated: str, settings: Settings) -> None:
    async with Hub(settings, registry(protocol)) as hub:
        servers = hub.open_servers(SLUG)
        tools = await hub.list_tools(servers)
        assert servers.errors == {}, servers.error_entries()
        by_name = {tool.name: tool for tool in tools[SLUG]}
        assert set(by_name) == {"get_current_time", "convert_time"}
        assert by_name["convert_time"].input_schema["required"] == ["source_timezone", "time", "target_timezone"]
        assert by_name["get_current_time"].output_schema is not None

        client, _ = await servers.sessions[SLUG].client(5)
        assert client.protocol_version == negotiated

        batch = await hub.execute([
            ToolCall(SLUG, "get_current_time", {"timezone": "UTC"}),
            # Asia/Tokyo keeps no daylight saving time, so the offset is the same on every date.
            ToolCall(SLUG, "convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}),
            ToolCall(SLUG, "get_current_time", {"timezone": "Mars/Olympus_Mons"}),
            ToolCall(SLUG, "convert_time", {"source_timezone": "UTC", "time": "25:99", "target_timezone": "UTC"}),
        ], servers)
        now, converted, bad_zone, bad_time = batch.results

        assert now.is_error is False
        assert now.result["timezone"] == "UTC" and now.result["is_dst"] is False
        assert datetime.fromisoformat(now.result["datetime"]).strftime("%z") == "+0000"

        assert converted.is_error is False
        source, target = converted.result["source"], converted.result["target"]
        assert datetime.fromisoformat(source["datetime"]).strftime("%H:%M%z") == "12:00+0000"
        assert datetime.fromisoformat(target["datetime"]).strftime("%H:%M%z") == "21:00+0900"
        assert (target["timezone"], converted.result["time_difference"]) == ("Asia/Tokyo", "+9.0h")

        # Failures of the tool are results, and the session survives them.
        assert bad_zone.is_error and "Mars/Olympus_Mons" in bad_zone.result[0]["text"]
        assert bad_time.is_error and "HH:MM" in bad_time.result[0]["text"]
        assert servers.errors == {} and hub.pool.sessions()[0].state == "ready"


async def test_both_eras_side_by_side(settings: Settings) -> None:
    """One request naming the same server pinned to each era gets one session per era."""
    both = {"legacy": {"command": COMMAND, "protocol": "legacy"},
            "modern": {"command": COMMAND, "protocol": "2026-07-28"}}
    reg = Registry.from_data({"servers": {f"ext/time-{name}": {"versions": {"1.0.0": version}}
                                          for name, version in both.items()}}, root=ROOT)
    async with Hub(settings, reg) as hub:
        servers = hub.open_servers(["ext/time-legacy", "ext/time-modern"])
        await hub.list_tools(servers)
        assert servers.errors == {}, servers.error_entries()
        versions = {name: (await session.client(5))[0].protocol_version for name, session in servers.sessions.items()}
        assert versions == {"ext/time-legacy": "2025-11-25", "ext/time-modern": "2026-07-28"}
        calls = [ToolCall(name, "convert_time", {"source_timezone": "Asia/Tokyo", "time": "09:30", "target_timezone": "UTC"})
                 for name in versions]
        batch = await hub.execute(calls, servers)
        for result in batch.results:
            assert result.is_error is False
            assert datetime.fromisoformat(result.result["target"]["datetime"]).strftime("%H:%M") == "00:30"
            assert result.result["time_difference"] == "-9.0h"
