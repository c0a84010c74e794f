"""The recordings catalogue: filtered, paged queries and the crew's and supervisors' edits.

Every filter is validated and bound as a parameter (never pasted into SQL). Edits
(tags, legal holds) are logged in the custody chain and queued for central.
"""

from __future__ import annotations

import re

from edgebox import custody, exemptions
from edgebox.axis.groups import group_summaries, recording_group
from edgebox.clock import parse_rfc3339
from edgebox.errors import N_, EdgeboxError, NotFound
from edgebox.sync.outbox import queue_meta

PAGE_MAX = 500
REQUIRED_PRE_EVENT = 30
SYNC_STATES = ("pending", "sending", "synced", "rejected", "damaged", "deleted")
GAPS = ("warning", "pre_event")
_CURSOR = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+Z)~([0-9a-f]{32})$")
_TEXT_LIMITS = {"incident": 64, "category": 64, "exemption": 500, "notes": 2000}


def _bad(field: str, message: str) -> EdgeboxError:
    return EdgeboxError(message, status=400, field=field)


def _time(args: dict, name: str) -> str | None:
    if not args.get(name):
        return None
    try:
        return parse_rfc3339(args[name]).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        raise _bad(name, f"{name} must be an RFC 3339 time, e.g. 2026-11-28T00:00:00Z") from None


_COLUMNS = (
    "id, serial, user_id, started_at, stopped_at, received_at, category, incident, warned, "
    "exemption, pre_event_seconds, size, evidence_sha256, sync_state, sealed, legal_hold, "
    "axis_recording"
)
_NEWEST_FIRST = " ORDER BY received_at DESC, id DESC LIMIT ?"


def search(store, args: dict, min_pre_event: float = REQUIRED_PRE_EVENT) -> dict:
    """Recordings matching the filters, newest first, one page; `next` is the next cursor.
    `gap=pre_event` lists pre-events shorter than `min_pre_event` seconds (the box passes
    `compliance.min_pre_event_seconds`)."""
    sql, params, limit = search_sql(args, min_pre_event)
    rows = store.query(sql, params)
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = f"{rows[-1]['received_at']}~{rows[-1]['id']}" if more and rows else None
    groups = group_summaries(store, [r["axis_recording"] for r in rows if r["axis_recording"]])
    for row in rows:
        row["axis"] = groups.get(row["axis_recording"]) if row["axis_recording"] else None
    return {"items": rows, "next": cursor}


def search_sql(args: dict, min_pre_event: float = REQUIRED_PRE_EVENT) -> tuple[str, tuple, int]:
    """The SQL of `search` for `args`: (sql, bound parameters, page size); it reads one row more
    than the page to tell whether another page follows.

    Every page is read in index order (migration m004: received_at, id, after at most one
    equality filter), so neither the table's size nor the page's depth costs a sort or a scan;
    the cursor is a keyset (received_at, id), never an OFFSET. A time filter (on started_at)
    cannot share that order: it picks its rows' positions from the covering index
    (started_at, received_at, id) first and reads only the page's rows from the table.
    """
    where, params = _filters(args, min_pre_event)
    try:
        limit = int(args.get("limit", 50))
    except ValueError:
        raise _bad("limit", "limit must be a whole number") from None
    if not 1 <= limit <= PAGE_MAX:
        raise _bad("limit", f"limit must be 1 to {PAGE_MAX}")
    clause = " WHERE " + " AND ".join(where) if where else ""
    # Column names and operators come from the fixed tables above; values are bound parameters.
    if args.get("from") or args.get("to"):
        sql = (
            f"SELECT {_COLUMNS} FROM recordings WHERE rowid IN "  # noqa: S608
            f"(SELECT rowid FROM recordings{clause}{_NEWEST_FIRST})"
            " ORDER BY received_at DESC, id DESC"
        )
    else:
        sql = f"SELECT {_COLUMNS} FROM recordings{clause}{_NEWEST_FIRST}"  # noqa: S608
    return sql, (*params, limit + 1), limit


def _filters(args: dict, min_pre_event: float) -> tuple[list[str], list]:
    """WHERE terms and their parameters for the filters in `args` (validated). Only listed
    rows: an Axis recording's clips other than its lead, and its key objects, bookmarks and
    GNSS track, are shown inside the lead (`detail`), not as recordings of their own."""
    where, params = ["listed = 1"], []
    for name, column, op in (("from", "started_at", ">="), ("to", "started_at", "<")):
        value = _time(args, name)
        if value:
            where.append(f"{column} {op} ?")
            params.append(value)
    for name, column in (
        ("camera", "serial"),
        ("user", "user_id"),
        ("category", "category"),
        ("incident", "incident"),
    ):
        if args.get(name):
            where.append(f"{column} = ?")
            params.append(str(args[name])[:128])
    if args.get("sync"):
        if args["sync"] not in SYNC_STATES:
            raise _bad("sync", f"sync must be one of {', '.join(SYNC_STATES)}")
        where.append("sync_state = ?")
        params.append(args["sync"])
    if args.get("gap"):
        if args["gap"] not in GAPS:
            raise _bad("gap", f"gap must be one of {', '.join(GAPS)}")
        # These two terms are the WHERE of the partial index recordings_gap_warning (m004).
        where.append(
            "warned IS NULL AND exemption IS NULL"
            if args["gap"] == "warning"
            else "COALESCE(pre_event_seconds, 0) < ?"
        )
        if args["gap"] == "pre_event":
            params.append(min_pre_event)
    if args.get("hold") in ("1", "true"):
        where.append("legal_hold = 1")
    if args.get("cursor"):
        match = _CURSOR.match(str(args["cursor"]))
        if not match:
            raise _bad("cursor", N_("cursor is not one this box handed out"))
        where.append("(received_at, id) < (?, ?)")
        params.extend(match.groups())
    return where, params


def detail(store, recording_id: str) -> dict:
    """One recording with its camera metadata and custody trail."""
    rec = store.one("SELECT * FROM recordings WHERE id = ?", (recording_id,))
    if rec is None:
        raise NotFound(f"no recording {recording_id}")
    rec["custody"] = store.query(
        "SELECT seq, ts, event, actor, details, hash FROM custody WHERE subject = ? ORDER BY seq",
        (recording_id,),
    )
    rec["axis"] = recording_group(store, rec["axis_recording"]) if rec["axis_recording"] else None
    return rec


def _group_ids(store, rec: dict) -> list[str]:
    """The recording and, for an Axis recording's lead, every vault file of its group: a hold
    or a tag on what people see as one recording applies to all of its parts."""
    if not rec.get("axis_recording"):
        return [rec["id"]]
    rows = store.query(
        "SELECT id FROM recordings WHERE axis_recording = ? ORDER BY listed DESC, id",
        (rec["axis_recording"],),
    )
    return [r["id"] for r in rows]


def tag(store, recording_id: str, changes: dict, actor: str) -> dict:
    """Set incident, category, warned / exemption and notes; logged and sent upstream."""
    unknown = set(changes) - {*_TEXT_LIMITS, "warned"}
    if unknown:
        raise _bad(sorted(unknown)[0], f"{sorted(unknown)[0]} cannot be tagged")
    clean = {}
    for name, limit in _TEXT_LIMITS.items():
        if name in changes:
            value = changes[name]
            if value is not None and (not isinstance(value, str) or len(value) > limit):
                raise _bad(name, f"{name} must be text of at most {limit} characters")
            clean[name] = value or None
    if "exemption" in clean:
        clean["exemption"] = exemptions.parse(clean["exemption"])
    if "warned" in changes:
        if changes["warned"] not in (True, False, None):
            raise _bad("warned", "warned must be true, false or null")
        clean["warned"] = None if changes["warned"] is None else int(changes["warned"])
    rec = detail(store, recording_id)
    merged = {k: clean.get(k, rec[k]) for k in (*_TEXT_LIMITS, "warned")}
    if merged["warned"] == 1 and merged["exemption"]:
        raise _bad("exemption", N_("a warned subject needs no exemption; clear one of them"))
    if not clean:
        raise _bad("changes", N_("nothing to change"))
    ids = _group_ids(store, rec)
    with store.write() as db:
        for rid in ids:
            old = rec if rid == recording_id else db["recordings"].get(rid)
            db["recordings"].update(rid, clean)
            custody.append(
                db,
                "recording.tagged",
                actor,
                rid,
                {"changes": clean, "before": {k: old[k] for k in clean}},
            )
    for rid in ids:
        queue_meta(store, {"type": "recording.tagged", "recording_id": rid, "changes": clean})
    return detail(store, recording_id)


def set_hold(store, recording_id: str, hold: bool, reason: str, actor: str) -> dict:
    """Place or lift a legal hold (a hold stops every deletion)."""
    if not isinstance(reason, str) or not 3 <= len(reason) <= 500:
        raise _bad("reason", N_("give a reason of 3 to 500 characters"))
    rec = detail(store, recording_id)
    if bool(rec["legal_hold"]) == hold:
        raise EdgeboxError(f"the hold is already {'on' if hold else 'off'}", status=409)
    event = "recording.hold_placed" if hold else "recording.hold_lifted"
    ids = _group_ids(store, rec)
    with store.write() as db:
        for rid in ids:
            db["recordings"].update(rid, {"legal_hold": int(hold)})
            custody.append(db, event, actor, rid, {"reason": reason})
    for rid in ids:
        queue_meta(store, {"type": event, "recording_id": rid, "reason": reason}, priority=50)
    return detail(store, recording_id)
