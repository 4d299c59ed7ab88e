"""The `time` server: current time, conversions across DST, zone search, durations."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer

from mcp_hub_servers.time.server import build_server
from tests.servers.conftest import StdioCall, data, error_text, hints

# 2025-03-30 00:30 UTC: Europe switches to summer time 30 minutes later.
PINNED = datetime(2025, 3, 30, 0, 30, tzinfo=UTC)


def pinned_server(default_timezone: str = "UTC") -> MCPServer:
    return build_server(default_timezone=default_timezone, clock=lambda: PINNED)


async def test_tools_are_listed_with_schemas_and_hints() -> None:
    async with Client(pinned_server()) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"current_time", "convert_time", "list_timezones", "time_difference"}
    for tool in tools.values():
        assert tool.description and tool.output_schema is not None
        assert tool.annotations is not None and hints(tool).read_only_hint is True
    assert hints(tools["convert_time"]).idempotent_hint is True
    assert hints(tools["current_time"]).idempotent_hint is False  # the clock moves
    assert set(tools["convert_time"].input_schema["required"]) == {"time", "source_timezone", "target_timezone"}


async def test_current_time_in_a_zone() -> None:
    async with Client(pinned_server()) as client:
        tokyo = data(await client.call_tool("current_time", {"timezone": "Asia/Tokyo"}))
        default = data(await client.call_tool("current_time", {}))
    assert tokyo["datetime"] == "2025-03-30T09:30:00+09:00"
    assert tokyo["utc_offset"] == "+09:00" and tokyo["abbreviation"] == "JST" and tokyo["is_dst"] is False
    assert tokyo["day_of_week"] == "Sunday"
    assert tokyo["unix_timestamp"] == PINNED.timestamp()
    assert default["timezone"] == "UTC" and default["time"] == "00:30:00"


async def test_configured_default_zone_and_lenient_spellings() -> None:
    async with Client(pinned_server(default_timezone="America/New_York")) as client:
        default = data(await client.call_tool("current_time", {}))
        lowercase = data(await client.call_tool("current_time", {"timezone": "europe/paris"}))
        city = data(await client.call_tool("current_time", {"timezone": "tokyo"}))
    assert default["timezone"] == "America/New_York" and default["utc_offset"] == "-04:00" and default["is_dst"]
    assert lowercase["timezone"] == "Europe/Paris"
    assert city["timezone"] == "Asia/Tokyo"


def test_unknown_default_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="Unknown time zone"):
        build_server(default_timezone="Mars/Olympus_Mons")


async def test_unknown_zone_error_suggests_close_names() -> None:
    async with Client(pinned_server()) as client:
        result = await client.call_tool("current_time", {"timezone": "Europe/Pariss"})
    message = error_text(result)
    assert "Unknown time zone 'Europe/Pariss'" in message
    assert "Europe/Paris" in message and "list_timezones" in message


async def test_convert_time_uses_the_offset_of_that_date() -> None:
    async with Client(pinned_server()) as client:
        winter = data(
            await client.call_tool(
                "convert_time",
                {"time": "2025-01-15 09:00", "source_timezone": "America/New_York", "target_timezone": "Europe/Berlin"},
            )
        )
        summer = data(
            await client.call_tool(
                "convert_time",
                {"time": "2025-07-15T09:00", "source_timezone": "America/New_York", "target_timezone": "Europe/Berlin"},
            )
        )
        india = data(
            await client.call_tool(
                "convert_time", {"time": "15:00", "source_timezone": "UTC", "target_timezone": "Asia/Kolkata"}
            )
        )
    assert winter["target"]["datetime"] == "2025-01-15T15:00:00+01:00"
    assert winter["offset_difference"] == "+06:00"
    assert summer["target"]["datetime"] == "2025-07-15T15:00:00+02:00"
    assert summer["source"]["abbreviation"] == "EDT" and summer["target"]["is_dst"] is True
    assert india["source"]["date"] == "2025-03-30"  # a bare time means today in the source zone
    assert india["target"]["time"] == "20:30:00" and india["offset_difference"] == "+05:30"


async def test_convert_time_handles_instants_with_offsets() -> None:
    async with Client(pinned_server()) as client:
        result = data(
            await client.call_tool(
                "convert_time",
                {"time": "2025-06-01T12:00:00Z", "source_timezone": "UTC", "target_timezone": "Australia/Sydney"},
            )
        )
    assert result["target"]["datetime"] == "2025-06-01T22:00:00+10:00"


async def test_convert_time_refuses_a_skipped_time_and_flags_a_repeated_one() -> None:
    async with Client(pinned_server()) as client:
        skipped = await client.call_tool(
            "convert_time", {"time": "2025-03-30 02:30", "source_timezone": "Europe/Berlin", "target_timezone": "UTC"}
        )
        repeated = data(
            await client.call_tool(
                "convert_time",
                {"time": "2025-10-26 02:30", "source_timezone": "Europe/Berlin", "target_timezone": "UTC"},
            )
        )
        garbage = await client.call_tool(
            "convert_time", {"time": "half past nine", "source_timezone": "UTC", "target_timezone": "UTC"}
        )
    assert "does not exist in Europe/Berlin" in error_text(skipped)
    assert repeated["target"]["time"] == "00:30:00"  # first occurrence, still CEST (+02:00)
    assert repeated["note"] and "occurs twice" in repeated["note"]
    assert "Cannot read the time" in error_text(garbage)


async def test_list_timezones_searches_and_limits() -> None:
    async with Client(pinned_server()) as client:
        york = data(await client.call_tool("list_timezones", {"query": "new york"}))
        europe = data(await client.call_tool("list_timezones", {"query": "Europe/", "limit": 5}))
        everything = data(await client.call_tool("list_timezones", {"limit": 1000}))
    assert york["timezones"] == ["America/New_York"] and york["truncated"] is False
    assert len(europe["timezones"]) == 5 and europe["truncated"] is True and europe["count"] > 30
    assert all(name.startswith("Europe/") for name in europe["timezones"])
    assert everything["count"] > 400 and "UTC" in everything["timezones"]
    assert "localtime" not in everything["timezones"]


async def test_time_difference_counts_real_elapsed_time_across_dst() -> None:
    async with Client(pinned_server()) as client:
        spring = data(
            await client.call_tool(
                "time_difference", {"start": "2025-03-29T12:00", "end": "2025-03-30T12:00", "timezone": "Europe/Berlin"}
            )
        )
        backwards = data(await client.call_tool("time_difference", {"start": "now", "end": "2025-03-28"}))
        mixed = data(
            await client.call_tool(
                "time_difference", {"start": "2025-01-01T00:00:00+00:00", "end": "2025-01-02T01:02:03.5+00:00"}
            )
        )
    assert spring["total_hours"] == 23  # the clocks skipped an hour
    assert spring["human"] == "23 hours"
    assert backwards["total_seconds"] == -(2 * 86400 + 30 * 60)
    assert backwards["human"] == "-2 days, 30 minutes"
    assert (mixed["days"], mixed["hours"], mixed["minutes"], mixed["seconds"]) == (1, 1, 2, 3.5)


async def test_served_over_stdio(call_over_stdio: StdioCall) -> None:
    result, tools = await call_over_stdio("time", "current_time", {}, env={"TIME_DEFAULT_TIMEZONE": "Asia/Tokyo"})
    assert "convert_time" in tools
    now = data(result)
    assert now["timezone"] == "Asia/Tokyo" and now["utc_offset"] == "+09:00"
    assert abs(now["unix_timestamp"] - datetime.now(UTC).timestamp()) < 120
