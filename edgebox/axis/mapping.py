"""Axis metadata -> EdgeBox recording columns (docs/axis.md has the table).

Times come as epoch seconds (`TriggerOnTime`) and RFC 3339 (`TriggerOnTimeISO`); the ISO
form wins when both are given. A time outside 2000..(now + 1 day) is out of bounds: the spec
answers those with 400 (the recording stays on the controller as "not transferred").
"""

from __future__ import annotations

import datetime as dt
import re

from edgebox.axis.names import bad, meta_get
from edgebox.clock import parse_rfc3339, utcnow

_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
_EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_SLACK = dt.timedelta(days=1)  # a controller's clock may run a little ahead


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def axis_time(meta: dict, key: str) -> dt.datetime | None:
    """`key`ISO (RFC 3339) or else `key` (epoch seconds) as a UTC time; 400 when malformed
    or out of bounds; None when neither is given."""
    iso_text, epoch_text = meta_get(meta, f"{key}ISO"), meta_get(meta, key)
    try:
        if iso_text:
            moment = parse_rfc3339(iso_text)
        elif epoch_text:
            moment = dt.datetime.fromtimestamp(float(epoch_text), tz=dt.UTC)
        else:
            return None
    except (ValueError, OverflowError, OSError):
        raise bad(f"{key} is neither an RFC 3339 time nor epoch seconds", key) from None
    if not _EARLIEST <= moment <= utcnow() + _SLACK:
        raise bad(f"{key} {moment.isoformat()} is out of bounds", key)
    return moment


def location(text: str | None) -> str | None:
    """`<lat><long><accuracy><epoch>` as EdgeBox's 'lat,lon' (None when it does not read as
    one: the raw text stays in the recording's metadata)."""
    if not text:
        return None
    numbers = _NUMBER.findall(text)
    if len(numbers) < 2:
        return None
    lat, lon = float(numbers[0]), float(numbers[1])
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return f"{lat:.6f},{lon:.6f}"


def clip_columns(container_meta: dict, clip_meta: dict) -> dict:
    """Columns of one clip's recording row: its own start and stop, the recording's triggers."""
    start, stop = axis_time(clip_meta, "StartTime"), axis_time(clip_meta, "StopTime")
    if start and stop and stop <= start:
        raise bad("the clip has no duration: StopTime is not after StartTime", "StopTime")
    trigger_on = axis_time(container_meta, "TriggerOnTime")
    pre = (trigger_on - start).total_seconds() if trigger_on and start else None
    return {
        "started_at": _stamp(start) if start else None,
        "stopped_at": _stamp(stop) if stop else None,
        "trigger_on": meta_get(container_meta, "TriggerOn"),
        "trigger_off": meta_get(container_meta, "TriggerOff"),
        "pre_event_seconds": max(pre, 0.0) if pre is not None else None,
        "gps": location(meta_get(container_meta, "TriggerOnLocation")),
    }


def tags(bookmarks: list[dict]) -> dict[str, str]:
    """Every bookmark's `Tags` (`key:value;key:value`) merged; a later bookmark wins."""
    merged: dict[str, str] = {}
    for meta in bookmarks:
        for item in (meta_get(meta, "Tags") or "").split(";"):
            key, sep, value = item.partition(":")
            if key.strip():
                merged[key.strip()] = value.strip() if sep else ""
    return merged


def recording_columns(container_meta: dict, clips: list[dict], bookmarks: list[dict]) -> dict:
    """The listed recording's columns once the Axis recording is Complete: from the first
    clip's start to the trigger off (or the last clip's stop), pre-buffer = TriggerOnTime -
    first StartTime, category from the last bookmark that names one."""
    starts = [t for t in (axis_time(m, "StartTime") for m in clips) if t]
    stops = [t for t in (axis_time(m, "StopTime") for m in clips) if t]
    trigger_on = axis_time(container_meta, "TriggerOnTime")
    trigger_off = axis_time(container_meta, "TriggerOffTime")
    first = min(starts) if starts else trigger_on
    last = trigger_off or (max(stops) if stops else None)
    pre = (trigger_on - first).total_seconds() if trigger_on and first else None
    categories = [meta_get(m, "CategoryName") or meta_get(m, "CategoryID") for m in bookmarks]
    category = next((c for c in reversed(categories) if c), None)
    return {
        "started_at": _stamp(first) if first else None,
        "stopped_at": _stamp(last) if last else None,
        "trigger_on": meta_get(container_meta, "TriggerOn"),
        "trigger_off": meta_get(container_meta, "TriggerOff"),
        "pre_event_seconds": max(pre, 0.0) if pre is not None else None,
        "gps": location(meta_get(container_meta, "TriggerOnLocation")),
        "category": category[:64] if category else None,
    }
