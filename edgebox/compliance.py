"""The compliance report: which recordings break a rule, and which cameras went silent.

One query module behind the page (/compliance), the API (GET /api/v1/compliance) and the CLI
(`edgebox compliance`). Five checks (docs/compliance.md):

- `pre_event`: the camera kept less than `compliance.min_pre_event_seconds` before activation
  (or reported none);
- `warning`: no valid answer to "was the filmed person warned?": unanswered, or not warned
  without an exemption reason (`edgebox.exemptions`);
- `at_risk`: not yet confirmed by central and either its sync failed, or it nears the
  retention floor (`compliance.at_risk_days` before `retention.floor_days`), or the data disk
  is past `storage.high_watermark`;
- `legal_hold`: on legal hold, with who placed it, when and why;
- `silent_camera`: a paired camera with no contact for `compliance.silent_camera_hours`.

Filters (all optional, validated, bound as parameters): `from`/`to` (the recording's start,
else its arrival), `camera` (serial), `user` (the camera wearer), `category`, `check` (a
comma list of the checks above) and `limit` (rows shown per check). Counts are exact; each
check is read through its own index (migrations m004 and m116), newest first.

Per-user statistics (counts grouped by wearer) are given only when the organisation type
allows staff evaluation: never for fire and ambulance services, nor for an unspecified type.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from edgebox import storage
from edgebox.clock import iso, parse_rfc3339, utcnow
from edgebox.errors import N_, EdgeboxError

CHECKS = ("pre_event", "warning", "at_risk", "legal_hold", "silent_camera")
RECORDING_CHECKS = CHECKS[:4]
LIMIT_DEFAULT, LIMIT_MAX = 100, 1000
PER_USER_ALLOWED = ("police", "rail", "security", "other")
ARGS = ("from", "to", "camera", "user", "category", "check", "limit")
UNSYNCED = ("pending", "sending", "rejected", "damaged")
_INDEXES = {  # the index each check reads (db.py: m004, m116)
    "pre_event": "recordings_pre_event",
    "warning": "recordings_gap_answer",
    "at_risk": "recordings_sync_received",
    "legal_hold": "recordings_held",
}
_PERIOD = "COALESCE(started_at, received_at)"
_NEWEST_FIRST = " ORDER BY received_at DESC, id DESC"
_COLUMNS = (
    "id, serial, user_id, started_at, received_at, category, pre_event_seconds, warned, "
    "exemption, sync_state, legal_hold, size"
)


def _bad(field: str, message: str) -> EdgeboxError:
    return EdgeboxError(message, status=400, field=field)


@dataclass(frozen=True)
class Filters:
    """The validated filters of one report; `limit` None means every row (exports)."""

    start: str | None = None
    end: str | None = None
    camera: str | None = None
    user: str | None = None
    category: str | None = None
    checks: tuple[str, ...] = CHECKS
    limit: int | None = LIMIT_DEFAULT

    def to_dict(self) -> dict:
        """The filters under their query-argument names (for display and the custody log)."""
        return {
            "from": self.start,
            "to": self.end,
            "camera": self.camera,
            "user": self.user,
            "category": self.category,
            "check": ",".join(self.checks),
            "limit": self.limit,
        }


def parse_filters(args: Mapping[str, str]) -> Filters:
    """Validate query arguments into Filters; anything unknown or malformed is a 400."""
    unknown = sorted(k for k in args if k not in ARGS and k != "csrf_token")
    if unknown:
        raise _bad(unknown[0], f"unknown filter {unknown[0]!r}; use {', '.join(ARGS)}")
    values = {k: str(v).strip() for k, v in args.items() if v is not None and str(v).strip()}
    start, end = _time(values, "from"), _time(values, "to")
    if start and end and end <= start:
        raise _bad("to", "to must be after from")
    checks = CHECKS
    if "check" in values:
        checks = tuple(c.strip() for c in values["check"].split(",") if c.strip())
        wrong = [c for c in checks if c not in CHECKS]
        if wrong or not checks:
            raise _bad("check", f"check must be a comma list of {', '.join(CHECKS)}")
        checks = tuple(c for c in CHECKS if c in checks)
    limit = LIMIT_DEFAULT
    if "limit" in values:
        if not values["limit"].isdigit() or not 1 <= int(values["limit"]) <= LIMIT_MAX:
            raise _bad("limit", f"limit must be a whole number from 1 to {LIMIT_MAX}")
        limit = int(values["limit"])
    return Filters(
        start=start,
        end=end,
        camera=_name(values, "camera"),
        user=_name(values, "user"),
        category=_name(values, "category"),
        checks=checks,
        limit=limit,
    )


def _time(values: dict, name: str) -> str | None:
    if name not in values:
        return None
    try:
        return iso(parse_rfc3339(values[name]))
    except (ValueError, OverflowError):
        raise _bad(name, f"{name} must be an RFC 3339 time, e.g. 2026-11-28T00:00:00Z") from None


def _name(values: dict, name: str) -> str | None:
    value = values.get(name)
    if value is not None and (len(value) > 128 or not value.isprintable()):
        raise _bad(name, f"{name} must be printable text of at most 128 characters")
    return value


@dataclass(frozen=True)
class Rules:
    """The configured thresholds the checks apply, and the moment they were applied."""

    min_pre_event_seconds: float
    silent_camera_hours: int
    at_risk_days: int
    floor_days: int
    high_watermark: float
    organisation_type: str
    now: str

    @property
    def per_user_statistics(self) -> bool:
        """Whether counts per camera wearer may be shown (never for fire or ambulance crews)."""
        return self.organisation_type in PER_USER_ALLOWED


def rules_of(config, now: dt.datetime) -> Rules:
    """The report's rules from the box configuration."""
    return Rules(
        min_pre_event_seconds=config.compliance.min_pre_event_seconds,
        silent_camera_hours=config.compliance.silent_camera_hours,
        at_risk_days=config.compliance.at_risk_days,
        floor_days=config.retention.floor_days,
        high_watermark=config.storage.high_watermark,
        organisation_type=config.compliance.organisation_type,
        now=iso(now),
    )


def build(box, filters: Filters, now: dt.datetime | None = None) -> dict:
    """The report for `filters`: counts and rows per check, per-camera (and, where allowed,
    per-user) counts, the rules applied and the disk's state."""
    now = now or utcnow()
    rules = rules_of(box.config, now)
    disk = storage.usage(box.data_dir)
    disk_full = disk.used_fraction >= rules.high_watermark
    sections, by_camera, by_user = {}, {}, {}
    for check in filters.checks:
        if check == "silent_camera":
            sections[check] = _silent_cameras(box.store, filters, rules, now)
            continue
        predicate, params = _predicate(check, rules, now, disk_full)
        sections[check], groups = _section(box.store, check, predicate, params, filters, rules, now)
        by_camera[check] = _grouped(groups, "serial")
        if rules.per_user_statistics:
            by_user[check] = _grouped(groups, "user_id")
    return {
        "box_id": box.config.box.box_id,
        "organisation": box.config.box.organisation,
        "site": box.config.box.site,
        "generated_at": rules.now,
        "filters": filters.to_dict(),
        "rules": asdict(rules),
        "disk": {
            "used_fraction": round(disk.used_fraction, 4),
            "free_bytes": disk.free_bytes,
            "near_full": disk_full,
        },
        "counts": {check: section["count"] for check, section in sections.items()},
        "sections": sections,
        "by_camera": by_camera,
        "by_user": by_user if rules.per_user_statistics else None,
        "per_user_statistics": (
            "shown"
            if rules.per_user_statistics
            else f"withheld for organisation type {rules.organisation_type!r} "
            "(footage of fire and ambulance crews is not for staff evaluation)"
        ),
    }


def everything(filters: Filters) -> Filters:
    """The same filters without a row limit (for exports)."""
    return replace(filters, limit=None)


def _predicate(check: str, rules: Rules, now: dt.datetime, disk_full: bool) -> tuple[str, list]:
    """The WHERE term of one recording check; the warning and hold terms are the WHERE of
    their partial indexes (m116), written identically so SQLite uses them."""
    if check == "pre_event":
        return "(pre_event_seconds IS NULL OR pre_event_seconds < ?)", [rules.min_pre_event_seconds]
    if check == "warning":
        return "exemption IS NULL AND COALESCE(warned, 0) = 0", []
    if check == "legal_hold":
        return "legal_hold = 1", []
    cutoff = now - dt.timedelta(days=rules.floor_days - rules.at_risk_days)
    states = ", ".join(f"'{s}'" for s in UNSYNCED)
    return (
        f"sync_state IN ({states}) AND (sync_state IN ('rejected', 'damaged') "
        f"OR {_PERIOD} < ? OR ?)",
        [iso(cutoff), int(disk_full)],
    )


def _filter_terms(filters: Filters) -> tuple[list[str], list]:
    # Unary + marks the filters as tests on the check's index entries, never a way into
    # the table (each check reads its own index, see _section).
    terms, params = [], []
    if filters.start:
        terms.append(f"{_PERIOD} >= ?")
        params.append(filters.start)
    if filters.end:
        terms.append(f"{_PERIOD} < ?")
        params.append(filters.end)
    for column, value in (
        ("serial", filters.camera),
        ("user_id", filters.user),
        ("category", filters.category),
    ):
        if value is not None:
            terms.append(f"+{column} = ?")
            params.append(value)
    return terms, params


def _section(store, check, predicate, params, filters, rules, now) -> tuple[dict, list[dict]]:
    """One check: its exact count and newest rows, and the count per (camera, wearer).

    Both queries read the check's own index (`INDEXED BY`, migrations m004 and m116): left to
    itself, SQLite without statistics prefers an index in GROUP BY or ORDER BY order and reads
    a whole table's worth of it. The counts come from the index alone; only the rows shown
    are read from the table.
    """
    terms, values = _filter_terms(filters)
    where = " AND ".join([predicate, *terms])
    source = f"recordings INDEXED BY {_INDEXES[check]}"
    # The terms and index names come from the fixed tables above; values are bound parameters.
    groups = store.query(
        f"SELECT serial, user_id, count(*) AS n FROM {source} WHERE {where} "  # noqa: S608
        "GROUP BY serial, user_id",
        (*params, *values),
    )
    # The page's positions are picked from the index first, so a sort carries index entries,
    # not whole rows (the same shape as `catalog.search_sql` with a time filter).
    rows = store.query(
        f"SELECT {_COLUMNS} FROM recordings WHERE rowid IN (SELECT rowid FROM {source} "  # noqa: S608
        f"WHERE {where}{_NEWEST_FIRST} LIMIT ?){_NEWEST_FIRST}",
        (*params, *values, -1 if filters.limit is None else filters.limit),
    )
    for row in rows:
        row.update(_finding(store, check, row, rules, now))
    count = sum(g["n"] for g in groups)
    return {"count": count, "items": rows, "truncated": len(rows) < count}, groups


def _grouped(groups: list[dict], column: str) -> dict:
    counts: Counter = Counter()
    for group in groups:
        counts["" if group[column] is None else str(group[column])] += group["n"]
    return dict(sorted(counts.items()))


def said(message: str, **values) -> dict:
    """A finding as English text (`finding`, for the API and CSV) and as its message id and
    values (`finding_msg`, `finding_values`), which the page shows in the reader's language."""
    return {"finding": message % values, "finding_msg": message, "finding_values": values}


def _finding(store, check: str, row: dict, rules: Rules, now: dt.datetime) -> dict:
    """What is wrong with the row under `check` (see `said`)."""
    if check == "pre_event":
        seconds = row["pre_event_seconds"]
        if seconds is None:
            return said(N_("the camera reported no pre-event length"))
        return said(
            N_("pre-event %(seconds)s s, below the required %(minimum)s s"),
            seconds=f"{seconds:g}",
            minimum=f"{rules.min_pre_event_seconds:g}",
        )
    if check == "warning":
        if row["warned"] is None:
            return said(N_("not answered"))
        return said(N_("not warned, and no exemption reason given"))
    if check == "legal_hold":
        return _hold_reason(store, row["id"])
    return _risk(row, rules, now)


def _risk(row: dict, rules: Rules, now: dt.datetime) -> dict:
    if row["sync_state"] in ("rejected", "damaged"):
        return said(N_("not confirmed by central: sync %(state)s"), state=row["sync_state"])
    start = parse_rfc3339(row["started_at"] or row["received_at"])
    floor = start + dt.timedelta(days=rules.floor_days)
    if floor - now <= dt.timedelta(days=rules.at_risk_days):
        return said(
            N_("not yet confirmed by central; the retention floor is reached at %(floor)s"),
            floor=iso(floor),
        )
    return said(N_("not yet confirmed by central while the data disk is near full"))


def _hold_reason(store, recording_id: str) -> dict:
    entry = store.one(
        "SELECT ts, actor, details FROM custody WHERE subject = ? "
        "AND event = 'recording.hold_placed' ORDER BY seq DESC LIMIT 1",
        (recording_id,),
    )
    if entry is None:
        return said(N_("on hold (no hold entry in the custody log)"))
    reason = json.loads(entry["details"]).get("reason", "")
    return said(
        N_("placed by %(actor)s at %(time)s: %(reason)s"),
        actor=entry["actor"],
        time=entry["ts"],
        reason=reason,
    )


def _silent_cameras(store, filters: Filters, rules: Rules, now: dt.datetime) -> dict:
    cutoff = iso(now - dt.timedelta(hours=rules.silent_camera_hours))
    where, params = ["revoked_at IS NULL", "COALESCE(last_seen_at, paired_at) < ?"], [cutoff]
    if filters.camera is not None:
        where.append("serial = ?")
        params.append(filters.camera)
    clause = " AND ".join(where)
    count = store.one(f"SELECT count(*) AS n FROM devices WHERE {clause}", params)["n"]  # noqa: S608
    limit = -1 if filters.limit is None else filters.limit
    rows = store.query(
        "SELECT id, serial, model, paired_at, last_seen_at, "  # noqa: S608
        "(SELECT max(received_at) FROM recordings r WHERE r.serial = d.serial) "
        f"AS last_recording_at FROM devices d WHERE {clause} "
        "ORDER BY COALESCE(last_seen_at, paired_at), id LIMIT ?",
        (*params, limit),
    )
    for row in rows:
        since = row["last_seen_at"] or row["paired_at"]
        row.update(
            said(
                N_("no contact since %(since)s (over %(hours)s h)"),
                since=since,
                hours=rules.silent_camera_hours,
            )
            if row["last_seen_at"]
            else said(N_("paired at %(since)s, never heard from since"), since=since)
        )
    return {"count": count, "items": rows, "truncated": len(rows) < count}
