"""Time in one place, so tests and scheduled jobs can use an injected clock."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """The current UTC time, timezone-aware."""
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime | None = None) -> str:
    """RFC 3339 UTC text with microseconds, e.g. 2026-11-28T16:00:00.123456Z."""
    moment = moment or utcnow()
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> dt.datetime:
    """Parse RFC 3339 text (a trailing Z or an offset is required), or raise ValueError."""
    value = dt.datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("timestamp has no time zone")
    return value.astimezone(dt.UTC)


def iso_at(timestamp: float) -> str:
    """A `time.time()` value as RFC 3339 UTC text."""
    return iso(dt.datetime.fromtimestamp(timestamp, dt.UTC))
