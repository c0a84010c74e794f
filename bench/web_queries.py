"""The queries of the web benchmark, spelled for the box and for Datasette, and their answers.

A `Query` is one filter of the recordings list (as the box's `/recordings` page and
`/api/v1/recordings` take it). `box_path` and `datasette_path` give the same query to each
server: the same rows (the box's 16 list columns, `_col=`), newest first
(`_sort_desc=received_at`; received times are unique in the fixture, so no tie-break is
needed), the same page size, and the same keyset position for a deep page (the box's cursor
`received_at~id`, Datasette's `_next=received_at,id`). `row_ids` reads the recording ids out of
either server's HTML or JSON, so the two can be checked against each other.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from bench.web_fixture import CATEGORIES

PAGE = 50  # the box's default page size
FORMATS = ("html", "json")  # the page a person sees, the API's answer
COLUMNS = (  # what edgebox.catalog.search selects
    "id serial user_id started_at stopped_at received_at category incident warned exemption "
    "pre_event_seconds size evidence_sha256 sync_state sealed legal_hold"
).split()
# Datasette's spelling of each box filter (column filters of its table view).
_DATASETTE_FILTERS = {
    "camera": "serial__exact",
    "user": "user_id__exact",
    "category": "category__exact",
    "incident": "incident__exact",
    "sync": "sync_state__exact",
    "from": "started_at__gte",
    "to": "started_at__lt",
}
_GAPS = {
    "warning": {"warned__isnull": "1", "exemption__isnull": "1"},
    "pre_event": {"_where": "COALESCE(pre_event_seconds, 0) < 30"},
}
_BOX_ROW = re.compile(r'<li class="rec" id="rec-([0-9a-f]{32})"')
_DATASETTE_ROW = re.compile(r'<td class="col-id[^"]*"><a href="[^"]*">([0-9a-f]{32})</a>')


@dataclass(frozen=True)
class Query:
    """One filtered, paged view of the recordings: a name and the box's query arguments."""

    key: str
    label: str
    args: dict = field(default_factory=dict)
    after: tuple[str, str] | None = None  # (received_at, id) of the row before the page

    def box_path(self, fmt: str) -> str:
        """The box's page (`html`) or API (`json`) path with its query string."""
        args = dict(self.args)
        if self.after:
            args["cursor"] = f"{self.after[0]}~{self.after[1]}"
        base = "/recordings" if fmt == "html" else "/api/v1/recordings"
        return f"{base}?{urlencode(args)}" if args else base

    def datasette_path(self, database: str, fmt: str, lean: bool) -> str:
        """Datasette's table view of the same rows; `lean` turns off its count and facets."""
        from datasette.utils import tilde_encode

        params: list[tuple[str, str]] = [("_sort_desc", "received_at"), ("_size", str(PAGE))]
        params += [("_col", c) for c in COLUMNS if c != "id"]  # the primary key always comes
        for name, value in self.args.items():
            if name == "gap":
                params += list(_GAPS[value].items())
            else:
                params.append((_DATASETTE_FILTERS[name], value))
        if self.after:
            params.append(("_next", f"{tilde_encode(self.after[0])},{tilde_encode(self.after[1])}"))
        if fmt == "json":
            params.append(("_shape", "objects"))
        if lean:
            params += [("_nocount", "1"), ("_nofacet", "1")]
        suffix = ".json" if fmt == "json" else ""
        return f"/{database}/recordings{suffix}?{urlencode(params)}"


def row_ids(server: str, fmt: str, body: bytes) -> list[str]:
    """The recording ids, in order, of a page or JSON answer of `server` (box or datasette)."""
    if fmt == "json":
        data = json.loads(body)
        return [row["id"] for row in data["items" if server == "box" else "rows"]]
    pattern = _BOX_ROW if server == "box" else _DATASETTE_ROW
    return pattern.findall(body.decode())


def plan(db_path: Path, deep_page: int) -> list[Query]:
    """The benchmark's queries, with filter values taken from the filled database."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        total = db.execute("SELECT COUNT(*) FROM recordings").fetchone()[0]
        serials = [r[0] for r in db.execute("SELECT DISTINCT serial FROM recordings ORDER BY 1")]
        camera = serials[min(2, len(serials) - 1)]
        page = max(2, min(deep_page, total // PAGE // 2))
        after = db.execute(
            "SELECT received_at, id FROM recordings ORDER BY received_at DESC, id DESC "
            "LIMIT 1 OFFSET ?",
            ((page - 1) * PAGE - 1,),
        ).fetchone()
        incident = db.execute(
            "SELECT incident FROM recordings WHERE incident IS NOT NULL "
            "ORDER BY received_at DESC, id DESC LIMIT 1 OFFSET ?",
            (total // 10,),
        ).fetchone()[0]
        newest = db.execute("SELECT MAX(started_at) FROM recordings").fetchone()[0]
    finally:
        db.close()
    day = dt.date.fromisoformat(newest[:10]) - dt.timedelta(days=3)  # a whole, busy day
    category = list(CATEGORIES)[1]
    return [
        Query("first", "first page"),
        Query(
            "camera",
            f"camera + category ({camera}, {category})",
            {"camera": camera, "category": category},
        ),
        Query("gap", "compliance gap (no warned/exemption)", {"gap": "warning"}),
        Query(
            "day",
            f"one day by start time ({day})",
            {
                "from": f"{day}T00:00:00.000000Z",
                "to": f"{day + dt.timedelta(days=1)}T00:00:00.000000Z",
            },
        ),
        Query("incident", f"incident number ({incident})", {"incident": incident}),
        Query("deep", f"page {page} (cursor)", {}, (after[0], after[1])),
    ]
