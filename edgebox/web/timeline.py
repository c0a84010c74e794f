"""The recordings of one incident on one time axis: a row per recording (all cameras), each
bar placed by its camera's start and stop, so a reviewer sees who filmed what, when, side by
side. Positions are fractions of 1000 for an SVG viewBox (the CSP allows no inline style)."""

from __future__ import annotations

from edgebox import catalog
from edgebox.clock import parse_rfc3339

WIDTH = 1000


def incident(store, incident_id: str | None, current: str) -> dict | None:
    """The incident's timeline (None without an incident or with one recording only)."""
    if not incident_id:
        return None
    items = catalog.search(store, {"incident": incident_id, "limit": 100})["items"]
    timed = []
    for rec in items:
        try:
            timed.append((parse_rfc3339(rec["started_at"]), parse_rfc3339(rec["stopped_at"]), rec))
        except (TypeError, ValueError, AttributeError):
            continue
    if len(items) < 2 or not timed:
        return None
    first = min(start for start, _, _ in timed)
    span = max((stop - first).total_seconds() for _, stop, _ in timed) or 1.0
    rows = []
    for start, stop, rec in sorted(timed, key=lambda row: (row[0], row[2]["serial"])):
        x = round((start - first).total_seconds() / span * WIDTH)
        width = max(4, round((stop - start).total_seconds() / span * WIDTH))
        rows.append({**rec, "x": min(x, WIDTH - 4), "w": min(width, WIDTH - x) or 4,
                     "current": rec["id"] == current})  # fmt: skip
    return {"rows": rows, "start": first.isoformat(), "seconds": span,
            "untimed": len(items) - len(timed)}  # fmt: skip
