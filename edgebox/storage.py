"""Disk watermarks: free what the rules allow as the data disk fills; alarm when nothing may go.

Past `storage.high_watermark` (fraction of the data disk in use), or when a clip of
the usual size would be refused, `relieve` frees, in this order, until use is below
`storage.low_watermark`:

1. recordings past their retention rule (the retention sweep);
2. synced copies kept for local review longer than `retention.keep_synced_days`,
   oldest first;
3. while ingest would still refuse a usual clip: younger synced copies too, oldest
   first, until ROOM_CLIPS usual clips fit (central holds them; new footage is only
   on a camera).

Nothing unsynced and nothing on hold is ever freed (`retention.shred` enforces it).
If the disk stays above the high watermark, an alarm is raised in status and the
custody log. New uploads are refused with 507 and Retry-After by the ingest
space check (free - reserve - uploads in progress) on every request, so ingest
resumes by itself as soon as space returns; there is no paused flag to go stale.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from edgebox import custody, retention, vault
from edgebox.clock import iso, utcnow
from edgebox.sync import state
from edgebox.sync.outbox import queue_meta

log = logging.getLogger(__name__)
ALARM_KEY = "storage.alarm"
_relief = threading.Lock()


@dataclass(frozen=True)
class Usage:
    """Size and free space of the data disk (free = what the box may still write)."""

    total_bytes: int
    free_bytes: int

    @property
    def used_fraction(self) -> float:
        """The share of the disk not available to the box (root-reserved blocks count as used)."""
        return 1 - self.free_bytes / self.total_bytes if self.total_bytes else 1.0


def usage(path: Path) -> Usage:
    """Measure the filesystem that holds `path`."""
    disk = shutil.disk_usage(path)
    return Usage(total_bytes=disk.total, free_bytes=disk.free)


def ingest_headroom(box, disk: Usage | None = None) -> int:
    """Bytes a new upload may still take: the ingest space check's own arithmetic."""
    return box.uploads.headroom((disk or usage(box.data_dir)).free_bytes)


def typical_upload(box) -> int:
    """The vault size of a usual clip here (mean of the last 20), at least one segment."""
    row = box.store.one(
        "SELECT AVG(stored_size) AS n FROM "
        "(SELECT stored_size FROM recordings ORDER BY received_at DESC LIMIT 20)"
    )
    one_segment = box.config.vault.segment_size + vault.HEADER_AREA + vault.TAG
    return max(int(row["n"] or 0), one_segment)


def refusing_uploads(box, headroom: int) -> bool:
    """Whether a clip of the usual size would now be refused with 507."""
    return headroom < typical_upload(box)


@dataclass
class Relief:
    """What one watermark check found and freed."""

    at: str
    before: float
    after: float = 0.0
    freed: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    kept_past_rule: list[dict] = field(default_factory=list)
    alarm: bool = False

    @property
    def freed_bytes(self) -> int:
        """Bytes of vault files removed."""
        return sum(item["stored_size"] for item in self.freed)

    def to_dict(self) -> dict:
        """Plain data for the job registry and logs."""
        return {
            "at": self.at,
            "used_before": round(self.before, 4),
            "used_after": round(self.after, 4),
            "freed": len(self.freed),
            "freed_bytes": self.freed_bytes,
            "freed_by_reason": _count(item["reason"] for item in self.freed),
            "failed": self.failed,
            "kept_past_rule": len(self.kept_past_rule),
            "alarm": self.alarm,
        }


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def relieve(box, now: dt.datetime | None = None) -> Relief:
    """The watermark check: free space if past the high watermark, then raise or clear the alarm."""
    now = now or utcnow()
    settings = box.config.storage
    with _relief:
        disk = usage(box.data_dir)
        result = Relief(at=iso(now), before=disk.used_fraction)
        pressed = disk.used_fraction >= settings.high_watermark
        if pressed or refusing_uploads(box, ingest_headroom(box, disk)):
            swept = retention.sweep(box, now)
            result.freed += swept.deleted
            result.failed += swept.failed
            result.kept_past_rule = swept.kept_past_rule
            _free_old_copies(box, now, settings.low_watermark, result)
            _make_room(box, now, result)
        disk = usage(box.data_dir)
        result.after = disk.used_fraction
        headroom = ingest_headroom(box, disk)
        result.alarm = disk.used_fraction >= settings.high_watermark or refusing_uploads(
            box, headroom
        )
        _set_alarm(box, result, headroom, now)
    if result.freed:
        log.warning(
            "disk pressure at %.1f%% used: freed %d recordings (%d bytes), now %.1f%%",
            result.before * 100,
            len(result.freed),
            result.freed_bytes,
            result.after * 100,
        )
    return result


def _free_old_copies(box, now: dt.datetime, low: float, result: Relief) -> None:
    """Shred synced copies past `keep_synced_days`, oldest first, until below `low`."""
    policy = retention.Policy.from_config(box.config.retention)
    cutoff = iso(now - dt.timedelta(days=policy.keep_synced_days))
    _shred_oldest_synced(
        box,
        now,
        result,
        "AND COALESCE(started_at, received_at) <= ?",
        (cutoff,),
        (retention.REASON_PRESSURE, retention.old_synced_copy),
        lambda: usage(box.data_dir).used_fraction < low,
    )


# A refused upload is told to come back after this; the refusal brings the watermark check
# forward to 10 s later (`edgebox.scheduler.refused_for_room`), which leaves it 20 s to make
# room (shredding many small synced copies took the soak up to 15 s).
RETRY_AFTER_FULL_SECONDS = 30
ROOM_CLIPS = 20  # when new footage is refused, room is made for this many usual clips


def _make_room(box, now: dt.datetime, result: Relief) -> None:
    """When ingest still refuses a usual clip, shred synced copies younger than
    `keep_synced_days` too, oldest first, until ROOM_CLIPS usual clips fit (or none is
    left): a copy central holds gives way to footage that exists only on a camera."""
    if not refusing_uploads(box, ingest_headroom(box, usage(box.data_dir))):
        return
    wanted = ROOM_CLIPS * typical_upload(box)
    _shred_oldest_synced(
        box,
        now,
        result,
        "",
        (),
        (retention.REASON_ROOM, retention.synced_copy_for_room),
        lambda: ingest_headroom(box, usage(box.data_dir)) >= wanted,
    )


def _shred_oldest_synced(box, now, result: Relief, where: str, params, why, enough) -> None:
    """Shred synced, unheld copies (narrowed by `where`), oldest first, until `enough()`;
    `why` is the custody reason and the shred check that must agree."""
    reason, check = why
    policy = retention.Policy.from_config(box.config.retention)
    candidates = box.store.query(
        f"SELECT id FROM recordings WHERE {retention.LIVE} AND sync_state = 'synced' "  # noqa: S608
        f"AND legal_hold = 0 {where} ORDER BY COALESCE(started_at, received_at), id",
        params,
    )
    for rec in candidates:
        if enough():
            return
        report = retention.SweepReport(at=result.at)
        retention.try_shred(box, rec["id"], report, reason, now, "box", policy, check)
        result.freed += report.deleted
        result.failed += report.failed


def _set_alarm(box, result: Relief, headroom: int, now: dt.datetime) -> None:
    """Persist alarm transitions (raised, cleared) in sync_state, custody and upstream."""
    try:
        previous = state.get(box.store, ALARM_KEY)
        if result.alarm and previous is None:
            details = {
                "used_fraction": round(result.after, 4),
                "high_watermark": box.config.storage.high_watermark,
                "ingest_headroom_bytes": headroom,
                "kept": kept(box, now),
            }
            with box.store.write() as db:
                state.put(box.store, ALARM_KEY, {"since": iso(), **details})
                custody.append(db, "storage.alarm_raised", "box", None, details)
                queue_meta(box.store, {"type": "storage.alarm", "state": "raised", **details})
            log.error("storage alarm: %s", alarm_message(box))
        elif not result.alarm and previous is not None:
            details = {"used_fraction": round(result.after, 4), "since": previous["since"]}
            with box.store.write() as db:
                db.execute("DELETE FROM sync_state WHERE key = ?", [ALARM_KEY])
                custody.append(db, "storage.alarm_cleared", "box", None, details)
                queue_meta(box.store, {"type": "storage.alarm", "state": "cleared", **details})
            log.warning("storage alarm cleared: disk at %.1f%%", result.after * 100)
    except sqlite3.Error as exc:  # a disk too full for the database: the live status still shows it
        log.error("could not record the storage alarm: %s", exc)


def kept(box, now: dt.datetime) -> dict:
    """What the disk holds that may not be freed now: unsynced, on hold, recent synced copies."""
    recent = iso(now - dt.timedelta(days=box.config.retention.keep_synced_days))
    row = box.store.one(
        "SELECT "  # noqa: S608 - a constant clause; values are bound
        "COALESCE(SUM(sync_state != 'synced'), 0) AS unsynced, "
        "COALESCE(SUM(CASE WHEN sync_state != 'synced' THEN stored_size END), 0) AS unsynced_b, "
        "COALESCE(SUM(legal_hold != 0), 0) AS held, "
        "COALESCE(SUM(CASE WHEN legal_hold != 0 THEN stored_size END), 0) AS held_b, "
        "COALESCE(SUM(sync_state = 'synced' AND legal_hold = 0 "
        "  AND COALESCE(started_at, received_at) > ?), 0) AS recent, "
        "COALESCE(SUM(CASE WHEN sync_state = 'synced' AND legal_hold = 0 "
        "  AND COALESCE(started_at, received_at) > ? THEN stored_size END), 0) AS recent_b "
        f"FROM recordings WHERE {retention.LIVE}",
        (recent, recent),
    )
    return {
        "not_synced": {"n": row["unsynced"], "bytes": row["unsynced_b"]},
        "legal_hold": {"n": row["held"], "bytes": row["held_b"]},
        "recent_synced": {"n": row["recent"], "bytes": row["recent_b"]},
    }


def _level(box, disk: Usage) -> str:
    settings = box.config.storage
    if disk.used_fraction >= settings.high_watermark:
        return "above_high"
    if disk.used_fraction >= settings.low_watermark:
        return "above_low"
    return "ok"


def report(box) -> dict:
    """The `storage` block of `edgebox status`: usage, watermarks, ingest state, alarm."""
    disk = usage(box.data_dir)
    headroom = ingest_headroom(box, disk)
    alarm = _live_alarm(box, disk, headroom)
    return {
        "total_bytes": disk.total_bytes,
        "free_bytes": disk.free_bytes,
        "used_fraction": round(disk.used_fraction, 4),
        "low_watermark": box.config.storage.low_watermark,
        "high_watermark": box.config.storage.high_watermark,
        "level": _level(box, disk),
        "ingest": "refusing" if refusing_uploads(box, headroom) else "accepting",
        "ingest_headroom_bytes": max(headroom, 0),
        "kept": kept(box, utcnow()),
        "alarm": alarm,
    }


def _live_alarm(box, disk: Usage, headroom: int) -> dict | None:
    # Shown while it is still true now: raised by the last check (nothing more may be
    # freed), or ingest already refusing; it disappears the moment space returns.
    refusing = refusing_uploads(box, headroom)
    above = disk.used_fraction >= box.config.storage.high_watermark
    raised = state.get(box.store, ALARM_KEY)
    if not (refusing or (raised and above)):
        return None
    return {
        "since": raised["since"] if raised else None,
        "message": _message(box, disk, refusing),
    }


def alarm_message(box) -> str:
    """One line for logs and the dashboard describing the current disk situation."""
    disk = usage(box.data_dir)
    return _message(box, disk, refusing_uploads(box, ingest_headroom(box, disk)))


def _message(box, disk: Usage, refusing: bool) -> str:
    parts = []
    if disk.used_fraction >= box.config.storage.high_watermark:
        held = kept(box, utcnow())
        parts.append(
            f"data disk {disk.used_fraction:.0%} full (high watermark "
            f"{box.config.storage.high_watermark:.0%}) and nothing more may be freed: "
            f"{held['not_synced']['n']} recordings await central's confirmation, "
            f"{held['legal_hold']['n']} are on legal hold, "
            f"{held['recent_synced']['n']} synced copies are younger than "
            f"{box.config.retention.keep_synced_days} days"
        )
    if refusing:
        parts.append(
            f"new uploads are refused (507, cameras keep their copies) until space returns: "
            f"{disk.free_bytes // 2**20} MiB free, a usual clip takes "
            f"{typical_upload(box) // 2**20 + 1} MiB, "
            f"{box.config.ingest.reserve_free_bytes // 2**20} MiB reserved for the database"
        )
    return "; ".join(parts)


def alarms(box) -> list[dict]:
    """Storage alarms for the status `alarms` list (empty when all is well)."""
    disk = usage(box.data_dir)
    alarm = _live_alarm(box, disk, ingest_headroom(box, disk))
    if alarm is None:
        return []
    return [{"source": "storage", "severity": "critical", **alarm}]
