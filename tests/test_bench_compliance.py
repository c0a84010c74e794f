"""The compliance benchmark runs (in --quick mode, 2,000 recordings) and measures what it says.

No timing is asserted. What is: the bench ends cleanly, leaves no server or temp folder, has
figures for every query in every round, and its report's counts are the counts of its fixture.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.test_bench_web import _leftovers

ROOT = Path(__file__).resolve().parents[1]


def test_quick_compliance_bench(tmp_path):
    raw = tmp_path / "raw.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "compliance.py"),
            "--quick",
            "--no-write",
            "--workdir",
            str(tmp_path),
            "--json",
            str(raw),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    figures = json.loads(raw.read_text())
    keys = [key for key, _label, _path in figures["plan"]]
    assert keys[:2] == ["list-page", "list-json"]  # the peer is measured in the same rounds
    assert len(figures["rounds"]) == 2
    for round_ in figures["rounds"]:
        assert all(len(round_[key]) == 5 for key in keys)
    assert figures["fixture"]["recordings"] == 2000
    counts = figures["counts"]
    assert counts["pre_event"] > 0 and counts["warning"] > 0  # the fixture has gaps of both
    assert figures["export_rows"] == sum(counts.values())  # the CSV lists every finding
    assert "## Compliance" in run.stdout and "× list of today" in run.stdout
    assert [p for p in tmp_path.iterdir() if p.name != "raw.json"] == []
    assert _leftovers(tmp_path) == []
