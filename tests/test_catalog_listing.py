"""The recordings list: every filter and the keyset paging against a plain Python filter, and
every page read in index order (no table scan, no sort of the table) as issue 4 asks of a box
with 100,000 recordings."""

from __future__ import annotations

import datetime as dt

import pytest

from bench.web_fixture import fill
from edgebox import catalog
from edgebox.clock import iso, parse_rfc3339, utcnow
from edgebox.db import Store

COUNT = 900


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A migrated box database with three cameras and COUNT recordings of the bench's fixture."""
    path = tmp_path_factory.mktemp("catalog") / "box.db"
    store = Store(path)
    with store.write() as db:
        for n in range(1, 4):
            db["devices"].insert(
                {
                    "id": f"dev-{n}",
                    "serial": f"CAM-{n:02d}",
                    "model": "test",
                    "token_hash": f"hash-{n}",
                    "paired_at": iso(),
                }
            )
    fill(path, COUNT)
    yield store
    store.close()


def _start(text: str | None) -> dt.datetime | None:
    return parse_rfc3339(text) if text else None


def expected(rows: list[dict], args: dict, after: tuple[str, str] | None = None) -> list[str]:
    """Ids of `rows` matching `args` (the box's filter names), newest first, after `after`."""
    checks = {
        "camera": lambda r, v: r["serial"] == v,
        "user": lambda r, v: r["user_id"] == v,
        "category": lambda r, v: r["category"] == v,
        "incident": lambda r, v: r["incident"] == v,
        "sync": lambda r, v: r["sync_state"] == v,
        "hold": lambda r, v: bool(r["legal_hold"]),
        "from": lambda r, v: r["started_at"] is not None and _start(r["started_at"]) >= _start(v),
        "to": lambda r, v: r["started_at"] is not None and _start(r["started_at"]) < _start(v),
        "gap": lambda r, v: (
            r["warned"] is None and r["exemption"] is None
            if v == "warning"
            else (r["pre_event_seconds"] or 0) < catalog.REQUIRED_PRE_EVENT
        ),
    }
    keep = [r for r in rows if all(checks[k](r, v) for k, v in args.items())]
    keep.sort(key=lambda r: (r["received_at"], r["id"]), reverse=True)
    if after:
        keep = [r for r in keep if (r["received_at"], r["id"]) < after]
    return [r["id"] for r in keep]


def _cases(rows: list[dict]) -> list[dict]:
    """Filters with values that occur in `rows`, alone and combined."""
    middle = sorted(r["started_at"] for r in rows)[len(rows) // 2]
    day = parse_rfc3339(middle)
    incident = next(r["incident"] for r in rows if r["incident"])
    return [
        {},
        {"camera": "CAM-02"},
        {"user": rows[7]["user_id"]},
        {"category": "medical"},
        {"incident": incident},
        {"sync": "synced"},
        {"gap": "warning"},
        {"gap": "pre_event"},
        {"hold": "1"},
        {"camera": "CAM-03", "category": "traffic"},
        {"camera": "CAM-01", "gap": "warning"},
        {"from": iso(day - dt.timedelta(days=2)), "to": iso(day + dt.timedelta(days=1))},
        {"from": iso(day)},
        {"to": iso(day), "category": "traffic"},
    ]


def test_every_filter_pages_through_exactly_the_matching_recordings(store):
    rows = store.query("SELECT * FROM recordings")
    assert len(rows) == COUNT
    for args in _cases(rows):
        want = expected(rows, args)
        got, cursor = [], None
        while True:
            query = {**args, "limit": "37"} | ({"cursor": cursor} if cursor else {})
            page = catalog.search(store, query)
            got += [r["id"] for r in page["items"]]
            cursor = page["next"]
            if not cursor:
                break
            assert len(page["items"]) == 37, query
        assert got == want, args
        assert want, f"no recording matches {args}: the case tests nothing"


def test_every_page_is_read_in_index_order(store):
    """No filter makes SQLite scan the table or sort it; a time filter may sort index entries
    (its order is not the list's) but reads from the table only the rows of the page."""
    rows = store.query("SELECT * FROM recordings")
    newest = catalog.search(store, {"limit": "5"})["next"]
    for args in _cases(rows):
        for extra in ({}, {"cursor": newest}):
            sql, params, _ = catalog.search_sql({**args, **extra})
            plan = [r["detail"] for r in store.query(f"EXPLAIN QUERY PLAN {sql}", params)]
            scans = [line for line in plan if line.startswith("SCAN")]
            assert all("INDEX" in line for line in scans), (args, plan)
            if "from" in args or "to" in args:  # the page's rows alone come from the table
                assert plan[0] == "SEARCH recordings USING INTEGER PRIMARY KEY (rowid=?)", plan
            else:
                assert not any("TEMP B-TREE" in line for line in plan), (args, plan)


def test_the_fixture_is_what_the_box_would_hold(store):
    """The bench's rows keep the box's invariants: times in order, answers not contradictory,
    an upload per recording, hashes of the right shape, recent enough for retention to ignore."""
    rows = store.query(
        "SELECT r.*, u.state AS upload_state FROM recordings r JOIN uploads u ON u.id = r.upload_id"
    )
    assert len(rows) == COUNT
    assert all(r["upload_state"] == "finished" for r in rows)
    assert all(r["started_at"] <= r["stopped_at"] <= r["received_at"] for r in rows)
    assert not any(r["warned"] == 1 and r["exemption"] for r in rows)
    assert all(len(r["evidence_sha256"]) == 64 for r in rows)
    assert min(parse_rfc3339(r["received_at"]) for r in rows) > utcnow() - dt.timedelta(days=30)
    gaps = expected(rows, {"gap": "warning"})
    assert 0 < len(gaps) < COUNT / 10
