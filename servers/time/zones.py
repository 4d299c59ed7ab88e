"""IANA time-zone lookup and date-time parsing for the time server.

`ZoneCatalog` owns the list of zone names (read lazily from the `tzdata`
package / system database) and turns user spellings into `ZoneInfo` objects,
with "did you mean" suggestions when a name is unknown.
"""

from __future__ import annotations

import difflib
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, available_timezones

from mcp.server.mcpserver.exceptions import ToolError

# Spellings that are not IANA keys but that everybody means as UTC.
_UTC_ALIASES = frozenset({"utc", "z", "zulu", "gmt", "utc+0", "utc+00:00", "+00:00", "etc/utc"})
# Entries of the zone database that are not places: "localtime" is the host's own setting.
_NOT_ZONES = frozenset({"Factory", "localtime"})


class ZoneCatalog:
    """Resolves zone names; the name list is loaded on first use and kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: tuple[str, ...] | None = None
        self._by_lower: dict[str, str] = {}
        self._by_city: dict[str, list[str]] = {}

    def names(self) -> tuple[str, ...]:
        """All known IANA zone names, sorted."""
        with self._lock:
            if self._names is None:
                names = tuple(sorted(available_timezones() - _NOT_ZONES))
                by_city: dict[str, list[str]] = {}
                for name in names:
                    by_city.setdefault(name.rsplit("/", 1)[-1].lower(), []).append(name)
                self._by_lower = {n.lower(): n for n in names}
                self._by_city = by_city
                self._names = names
            return self._names

    def search(self, query: str | None) -> list[str]:
        """Zone names containing `query` (case-insensitive; spaces match underscores)."""
        names = self.names()
        if not query or not query.strip():
            return list(names)
        needle = query.strip().lower().replace(" ", "_")
        return [n for n in names if needle in n.lower()]

    def resolve(self, name: str) -> ZoneInfo:
        """Return the zone for `name` or raise `ToolError` with the closest known names.

        Accepts exact IANA keys, the same keys in any letter case, common UTC
        spellings, and a bare city name when exactly one zone ends with it
        ("tokyo" -> "Asia/Tokyo").
        """
        key = name.strip()
        self.names()
        lowered = key.lower().replace(" ", "_")
        if lowered in _UTC_ALIASES:
            return ZoneInfo("UTC")
        canonical = self._by_lower.get(lowered)
        if canonical is None:
            canonical = _same_zone(self._by_city.get(lowered, []))
        if canonical is None:
            raise ToolError(self._unknown_message(key))
        return ZoneInfo(canonical)

    def _unknown_message(self, key: str) -> str:
        lowered = key.lower().replace(" ", "_")
        suggestions = list(self._by_city.get(lowered, []))
        close = difflib.get_close_matches(lowered, list(self._by_lower), n=5, cutoff=0.6)
        close += difflib.get_close_matches(lowered, list(self._by_city), n=3, cutoff=0.75)
        for match in close:
            for candidate in self._by_city.get(match, [self._by_lower.get(match, "")]):
                if candidate and candidate not in suggestions:
                    suggestions.append(candidate)
        hint = f" Did you mean: {', '.join(suggestions[:6])}?" if suggestions else ""
        return (
            f"Unknown time zone {key!r}. Use an IANA name such as 'Europe/Paris' or 'America/New_York'."
            f"{hint} The list_timezones tool searches all names."
        )


def _same_zone(candidates: list[str]) -> str | None:
    """The first candidate if all of them keep the same clock (links such as
    Europe/Istanbul and Asia/Istanbul), else None."""
    if not candidates:
        return None
    probes = [datetime(2025, 1, 15, tzinfo=UTC), datetime(2025, 7, 15, tzinfo=UTC)]
    offsets = {tuple(p.astimezone(ZoneInfo(c)).utcoffset() for p in probes) for c in candidates}
    return candidates[0] if len(offsets) == 1 else None


def parse_datetime(text: str, zone: ZoneInfo, now: datetime) -> tuple[datetime, str | None]:
    """Parse an ISO 8601 date/time (or HH:MM, or "now") as an aware datetime in `zone`.

    A bare time means that time today in `zone`; a bare date means midnight.
    A value carrying its own UTC offset is taken as that instant. Returns the
    datetime and an optional note about daylight-saving ambiguity.
    """
    raw = text.strip()
    if raw.lower() == "now":
        return now.astimezone(zone), None
    value = _parse_iso(raw, zone, now)
    if value.tzinfo is not None:
        return value.astimezone(zone), None
    return localize(value, zone)


def _parse_iso(raw: str, zone: ZoneInfo, now: datetime) -> datetime:
    candidate = raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw
    try:
        return datetime.fromisoformat(candidate)
    except ValueError:
        pass
    for fmt in ("%H:%M", "%H:%M:%S", "%I:%M %p", "%I %p", "%I:%M%p", "%I%p"):
        try:
            parsed = datetime.strptime(raw.upper(), fmt)
        except ValueError:
            continue
        today = now.astimezone(zone)
        return datetime(today.year, today.month, today.day, parsed.hour, parsed.minute, parsed.second)
    raise ToolError(
        f"Cannot read the time {raw!r}. Use 24-hour 'HH:MM', a date 'YYYY-MM-DD', "
        "an ISO 8601 date-time like '2025-03-14T15:30', or 'now'."
    )


def localize(naive: datetime, zone: ZoneInfo) -> tuple[datetime, str | None]:
    """Attach `zone` to a wall-clock time, rejecting times skipped by a DST change."""
    aware = naive.replace(tzinfo=zone, fold=0)
    round_trip = aware.astimezone(UTC).astimezone(zone)
    if round_trip.replace(tzinfo=None) != naive:
        raise ToolError(
            f"{naive.isoformat()} does not exist in {zone.key}: the clocks skip over it "
            "(daylight-saving change). Pick a time outside the gap."
        )
    later = naive.replace(tzinfo=zone, fold=1)
    if later.utcoffset() != aware.utcoffset():
        return aware, (
            f"{naive.isoformat()} occurs twice in {zone.key} (clocks go back); "
            f"the first occurrence (UTC offset {format_offset(aware.utcoffset())}) was used."
        )
    return aware, None


def format_offset(offset: timedelta | None) -> str:
    """Render a UTC offset as '+HH:MM' (seconds only when present)."""
    seconds = int((offset or timedelta()).total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{sign}{hours:02d}:{minutes:02d}" + (f":{secs:02d}" if secs else "")
