"""What the dashboard shows, read fresh from the box on each (live) refresh: offloads, storage
with days left, the upstream link with an estimate of the time to drain its backlog, the latest
recordings and alarms."""

from __future__ import annotations

import shutil
import threading
import time
from collections import deque

from edgebox import catalog

WINDOW_SECONDS = 15 * 60
MIN_SPAN_SECONDS = 10


class DrainMeter:
    """Estimates how fast the upstream backlog shrinks from what successive dashboard reads saw.

    Each read contributes (time, bytes still to send); the rate is the drop over the last
    15 minutes. No estimate while the link is down, the backlog grows, or samples span < 10 s.
    """

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def observe(self, remaining: int, online: bool) -> dict:
        """Add a sample; return {"bytes_per_second", "seconds_left"} (each None if unknown)."""
        now = self._clock()
        with self._lock:
            if not online or remaining == 0:
                self._samples.clear()
                return {"bytes_per_second": None, "seconds_left": 0 if remaining == 0 else None}
            self._samples.append((now, remaining))
            while self._samples and now - self._samples[0][0] > WINDOW_SECONDS:
                self._samples.popleft()
            (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        if t1 - t0 < MIN_SPAN_SECONDS or first <= last:
            return {"bytes_per_second": None, "seconds_left": None}
        rate = (first - last) / (t1 - t0)
        return {"bytes_per_second": round(rate), "seconds_left": round(last / rate)}


def current_transfer(box, upstream: dict) -> dict | None:
    """The last transfer progress record, if its recording still waits for central."""
    transfer = upstream.get("transfer")
    if not transfer:
        return None
    row = box.store.one(
        "SELECT sync_state FROM recordings WHERE id = ?", (transfer.get("recording_id"),)
    )
    return transfer if row and row["sync_state"] not in ("synced", "deleted") else None


def remaining_bytes(upstream: dict, transfer: dict | None) -> int:
    """Backlog bytes minus what the current transfer already delivered."""
    left = upstream["backlog"]["bytes"]
    if transfer:
        left -= min(transfer.get("sent") or 0, transfer.get("size") or 0)
    return max(left, 0)


def days_left(box) -> int | None:
    """Whole days until the disk is full at the rate of the last seven days (None: no intake)."""
    week = box.store.one(
        "SELECT COALESCE(SUM(stored_size), 0) AS n FROM recordings "
        "WHERE received_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-7 days')"
    )["n"]
    if not week:
        return None
    return int(shutil.disk_usage(box.data_dir).free / (week / 7))


def context(box, meter: DrainMeter) -> dict:
    """Everything dashboard.html and dashboard_live.html render."""
    status = box.status()
    upstream = status["upstream"]
    transfer = current_transfer(box, upstream)
    remaining = remaining_bytes(upstream, transfer)
    return {
        "status": status,
        "uploads": box.uploads.in_progress(),
        "cameras": box.pairing.devices(),
        "days_left": days_left(box),
        "transfer": transfer,
        "drain": {
            "remaining": remaining,
            **meter.observe(remaining, upstream["link"].get("state") == "online"),
        },
        "latest": catalog.search(box.store, {"limit": "5"})["items"],
    }


def duration(seconds: int | float | None) -> str:
    """A human duration: '40 s', '12 min', '3 h 20 min', '2 days'."""
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        hours, rest = divmod(seconds, 3600)
        return f"{hours} h {rest // 60} min" if rest >= 60 else f"{hours} h"
    return f"{seconds // 86400} days"
