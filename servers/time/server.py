"""The `time` MCP server: current time, zone conversion, zone search, durations.

All tools are read-only and need no network: zone rules come from the IANA
database (`tzdata`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_hub_servers.time.zones import ZoneCatalog, format_offset, parse_datetime

_READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
# The clock moves, so current_time is read-only but not idempotent.
_CLOCK = ToolAnnotations(read_only_hint=True, idempotent_hint=False, open_world_hint=False)

ZoneArg = Annotated[
    str,
    Field(description="IANA time zone name, e.g. 'Europe/Paris', 'America/New_York', 'Asia/Tokyo' or 'UTC'."),
]

OptionalZoneArg = Annotated[
    str | None,
    Field(description="IANA time zone name; omit for the server's default zone (UTC unless configured)."),
]
# Tool signatures are evaluated against module globals (postponed annotations),
# so every annotation a tool uses must be defined at module level.


class TimeInfo(BaseModel):
    """A moment as seen on the clocks of one time zone."""

    timezone: str = Field(description="IANA zone name")
    datetime: str = Field(description="ISO 8601 local date-time with UTC offset")
    date: str
    time: str
    day_of_week: str
    utc_offset: str = Field(description="offset from UTC, e.g. '+02:00'")
    abbreviation: str = Field(description="zone abbreviation in effect, e.g. 'CEST'")
    is_dst: bool = Field(description="whether daylight-saving time is in effect")
    unix_timestamp: float


class Conversion(BaseModel):
    """One wall-clock time expressed in two zones."""

    source: TimeInfo
    target: TimeInfo
    offset_difference: str = Field(description="target offset minus source offset, e.g. '+07:00'")
    note: str | None = Field(default=None, description="daylight-saving remark, if any")


class ZoneList(BaseModel):
    """Zone names matching a search."""

    count: int = Field(description="number of matching zones (before the limit)")
    timezones: list[str]
    truncated: bool


class Duration(BaseModel):
    """The signed time between two instants."""

    start: str = Field(description="start instant, ISO 8601 in UTC")
    end: str = Field(description="end instant, ISO 8601 in UTC")
    total_seconds: float = Field(description="end minus start; negative if end is earlier")
    total_hours: float
    total_days: float
    days: int = Field(description="whole days of the absolute difference")
    hours: int
    minutes: int
    seconds: float
    human: str = Field(description="e.g. '3 days, 4 hours, 5 minutes' (prefixed with '-' if negative)")


def describe(moment: datetime) -> TimeInfo:
    """Build a `TimeInfo` for an aware datetime carrying a `ZoneInfo`."""
    zone = moment.tzinfo
    dst = moment.dst()
    return TimeInfo(
        timezone=getattr(zone, "key", "UTC"),
        datetime=moment.isoformat(timespec="seconds"),
        date=moment.date().isoformat(),
        time=moment.strftime("%H:%M:%S"),
        day_of_week=moment.strftime("%A"),
        utc_offset=format_offset(moment.utcoffset()),
        abbreviation=moment.tzname() or "",
        is_dst=bool(dst and dst.total_seconds()),
        unix_timestamp=moment.timestamp(),
    )


def _duration(start: datetime, end: datetime) -> Duration:
    # Subtracting two datetimes that share a tzinfo compares wall clocks and
    # ignores DST changes in between, so both sides go to UTC first.
    total = (end.astimezone(UTC) - start.astimezone(UTC)).total_seconds()
    remaining = abs(total)
    days, remaining = divmod(remaining, 86400)
    hours, remaining = divmod(remaining, 3600)
    minutes, seconds = divmod(remaining, 60)
    parts = [
        f"{int(v)} {unit}{'' if int(v) == 1 else 's'}"
        for v, unit in ((days, "day"), (hours, "hour"), (minutes, "minute"))
        if int(v)
    ]
    if seconds or not parts:
        parts.append(f"{seconds:g} second{'' if seconds == 1 else 's'}")
    return Duration(
        start=start.astimezone(UTC).isoformat(),
        end=end.astimezone(UTC).isoformat(),
        total_seconds=total,
        total_hours=total / 3600,
        total_days=total / 86400,
        days=int(days),
        hours=int(hours),
        minutes=int(minutes),
        seconds=seconds,
        human=("-" if total < 0 else "") + ", ".join(parts),
    )


def build_server(
    *,
    default_timezone: str = "UTC",
    clock: Callable[[], datetime] | None = None,
) -> MCPServer:
    """Build the time server.

    Args:
        default_timezone: zone used when a call leaves the zone out.
        clock: returns the current aware UTC datetime (tests pin it).

    Raises:
        ValueError: if `default_timezone` is not a known zone.
    """
    catalog = ZoneCatalog()
    try:
        default_zone = catalog.resolve(default_timezone)
    except ToolError as exc:
        raise ValueError(str(exc)) from None
    now = clock or (lambda: datetime.now(UTC))

    def zone_or_default(name: str | None) -> ZoneInfo:
        return default_zone if name is None or not name.strip() else catalog.resolve(name)

    server = MCPServer(
        "time",
        version="1.0.0",
        instructions=(
            "Time-zone aware clock. Use IANA zone names (Europe/Paris, America/New_York). "
            f"When a zone is omitted, {default_zone.key} is used."
        ),
    )

    @server.tool(annotations=_CLOCK)
    def current_time(
        timezone: OptionalZoneArg = None,
    ) -> TimeInfo:
        """Get the current date and time in a time zone, with its UTC offset, abbreviation and DST status."""
        return describe(now().astimezone(zone_or_default(timezone)))

    @server.tool(annotations=_READ_ONLY)
    def convert_time(
        time: Annotated[
            str,
            Field(
                description=(
                    "Wall-clock time in the source zone: 'HH:MM' (today), 'YYYY-MM-DD HH:MM' "
                    "or an ISO 8601 date-time. A value with its own offset ('...Z', '+02:00') is taken as that instant."
                )
            ),
        ],
        source_timezone: ZoneArg,
        target_timezone: ZoneArg,
    ) -> Conversion:
        """Convert a time from one time zone to another (handles daylight saving for the given date).

        Times that do not exist in the source zone (skipped by a spring-forward change) are refused;
        times that occur twice use the first occurrence and say so in `note`.
        """
        source_zone, target_zone = catalog.resolve(source_timezone), catalog.resolve(target_timezone)
        moment, note = parse_datetime(time, source_zone, now())
        converted = moment.astimezone(target_zone)
        difference = converted.utcoffset() - moment.utcoffset()  # type: ignore[operator]
        return Conversion(
            source=describe(moment),
            target=describe(converted),
            offset_difference=format_offset(difference),
            note=note,
        )

    @server.tool(annotations=_READ_ONLY)
    def list_timezones(
        query: Annotated[
            str | None,
            Field(description="Case-insensitive substring, e.g. 'europe/', 'york', 'kolkata'. Omit to list all."),
        ] = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="Maximum names to return.")] = 100,
    ) -> ZoneList:
        """List or search IANA time zone names (about 600 zones). Use it to find the exact name of a zone."""
        matches = catalog.search(query)
        return ZoneList(count=len(matches), timezones=matches[:limit], truncated=len(matches) > limit)

    @server.tool(annotations=_READ_ONLY)
    def time_difference(
        start: Annotated[str, Field(description="ISO 8601 date or date-time, or 'now'.")],
        end: Annotated[str, Field(description="ISO 8601 date or date-time, or 'now'.")],
        timezone: OptionalZoneArg = None,
    ) -> Duration:
        """Compute the elapsed time between two instants (end minus start), in seconds, hours, days and words.

        Daylight-saving changes between the two are accounted for (a day across a DST change can be 23 or 25 hours).
        """
        zone = zone_or_default(timezone)
        current = now()
        start_at, _ = parse_datetime(start, zone, current)
        end_at, _ = parse_datetime(end, zone, current)
        return _duration(start_at, end_at)

    return server
