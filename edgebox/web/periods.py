"""The time filters of the recordings list, as a crew thinks of them: a day and times of day
in the crews' time zone, or one tap for "today", "this shift" or "the last 24 hours". Each
becomes the UTC `from`/`to` pair the catalogue filters on."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from edgebox.errors import N_, EdgeboxError

PRESETS = {"today": N_("Today"), "shift": N_("This shift"), "24h": N_("Last 24 h")}


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def preset(name: str, ui, now: dt.datetime) -> tuple[str, str]:
    """UTC (from, to) of a preset at `now` (an aware time)."""
    zone = ZoneInfo(ui.timezone)
    local = now.astimezone(zone)
    if name == "today":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    elif name == "shift":
        hour, minute = (int(part) for part in ui.shift_start.split(":"))
        start = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        while start > local:
            start -= dt.timedelta(hours=ui.shift_hours)
        while start + dt.timedelta(hours=ui.shift_hours) <= local:
            start += dt.timedelta(hours=ui.shift_hours)
    elif name == "24h":
        start = local - dt.timedelta(hours=24)
    else:
        raise EdgeboxError(N_("unknown time range"), status=400, field="range")
    return _utc(start), _utc(now + dt.timedelta(minutes=1))


def day_range(day: str, from_time: str, to_time: str, ui) -> tuple[str, str]:
    """UTC (from, to) of a local day, optionally narrowed to times of day."""
    zone = ZoneInfo(ui.timezone)
    try:
        date = dt.date.fromisoformat(day)
        begin = dt.time.fromisoformat(from_time) if from_time else dt.time(0, 0)
        end = dt.time.fromisoformat(to_time) if to_time else None
    except ValueError:
        raise EdgeboxError(
            N_("give the day as a date and the times as hours and minutes"),
            status=400,
            field="day",
        ) from None
    start = dt.datetime.combine(date, begin, zone)
    stop = (
        dt.datetime.combine(date, end, zone)
        if end
        else dt.datetime.combine(date + dt.timedelta(days=1), dt.time(0, 0), zone)
    )
    if stop <= start:
        stop += dt.timedelta(days=1)  # a night shift: 19:00 to 07:00 runs into the next day
    return _utc(start), _utc(stop)


def filters(args: dict, ui, now: dt.datetime) -> dict:
    """The catalogue's filters for the page's arguments: `range` or `day` (with times) become
    `from`/`to`; typed `from`/`to` stay as they are."""
    out = {k: v for k, v in args.items() if k not in ("range", "day", "from_time", "to_time")}
    if args.get("range"):
        out["from"], out["to"] = preset(args["range"], ui, now)
    elif args.get("day"):
        out["from"], out["to"] = day_range(
            args["day"], args.get("from_time", ""), args.get("to_time", ""), ui
        )
    return out
