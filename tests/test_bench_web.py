"""The web benchmark runs (in --quick mode, 2,000 recordings) and compares like with like.

No timing is asserted. What is: the bench ends cleanly and leaves no server running, it has
figures for every server, query and format in every round, and the box, lean Datasette and
Datasette as shipped answered every query with the same recording ids, which are the ids a
plain Python filter picks from the same database.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil

from tests.test_catalog_listing import expected

ROOT = Path(__file__).resolve().parents[1]
SERVERS = {"box": 10, "lean": 10, "datasette": 3}  # timed requests per round in --quick
FORMATS = ("html", "json")


def _leftovers(folder: Path) -> list[str]:
    """Command lines of processes that still use `folder`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(folder) in cmdline:
            found.append(cmdline)
    return found


def test_quick_web_bench_compares_the_same_rows(tmp_path):
    raw = tmp_path / "raw.json"
    run = subprocess.run(
        [
            sys.executable,
            "bench/web.py",
            "--quick",
            "--keep",
            "--json",
            str(raw),
            "--workdir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    kept = next(tmp_path.glob("edgebox-web-bench-*"))
    assert _leftovers(kept) == []
    data = json.loads(raw.read_text())
    queries = data["queries"]
    assert {q["key"] for q in queries} == {"first", "camera", "gap", "day", "incident", "deep"}

    assert len(data["rounds"]) == 2
    for results in data["rounds"]:
        for server, count in SERVERS.items():
            for query in queries:
                for form in FORMATS:
                    series = results[f"{server} {query['key']} {form}"]
                    assert len(series["client_ms"]) == count and min(series["client_ms"]) > 0
                    assert series["bytes"] > 0
                    if server == "box":  # the box's own Server-Timing header
                        assert len(series["server_ms"]) == count
    table = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(queries) * len(FORMATS), run.stdout
    assert "## Web" in run.stdout

    db = sqlite3.connect(kept / "peer" / "edgebox.db")
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM recordings")]
    db.close()
    assert len(rows) == 2000
    for query in queries:
        after = tuple(query["after"]) if query["after"] else None
        want = expected(rows, query["args"], after)[:50]
        assert want, query
        for form in FORMATS:
            for server in SERVERS:
                got = data["answers"][f"{server} {query['key']} {form}"]
                assert got == want, (server, query["label"], form)
