"""A quick slice of the soak (bench/soak.py): a real box, Mosquitto, central and two
simulated cameras through four faults (kill -9 during ingest and during sync, a broker
restart, a cut link); after each, every delivered clip is at central once with the
camera's hash, `edgebox verify` passes and no clip's bytes are on the box's disk."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from edgebox.lowlevel import allocator
from edgebox.scheduler import jobs_of
from tests.conftest import ROOT


def test_a_few_soak_cycles_lose_nothing(tmp_path):
    figures = tmp_path / "soak.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "soak.py"),
            "--cycles",
            "4",
            "--minutes",
            "4",
            "--faults",
            "kill_ingest,kill_sync,broker_restart,net_cut",
            "--leak-share",
            "0",
            "--disk-mib",
            "128",
            "--workdir",
            str(tmp_path),
            "--no-write",
            "--json",
            str(figures),
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(figures.read_text())
    assert result["cycles"] == 4
    assert result["counts"] == {"kill_ingest": 1, "kill_sync": 1, "broker_restart": 1, "net_cut": 1}
    assert result["delivered"] >= 4  # the cameras kept delivering through the faults
    assert all(n == 0 for failures in result["failures"].values() for n in failures.values())
    assert set(result["recovery"]) == set(result["counts"])  # each fault recovered
    assert all(in_use > sqlite >= 0 for _, _, in_use, sqlite in result["heap_samples"])
    assert result["central_alarms"] == []  # central met nothing it had to raise


def test_the_leak_trend_tells_a_leak_from_a_flat_line_and_a_restart():
    from bench.soak_report import _leak_verdict as _verdict
    from bench.soak_report import leak_slopes

    mib = 1 << 20
    noisy = [(2.0 * n, 7, 80 * mib + (n * 7919 % 13) * mib // 4, 40) for n in range(900)]
    flat = leak_slopes(noisy)
    assert abs(flat["longest_rss_mib_per_hour"]) < 1 and ", flat within" in _verdict(flat)
    assert all(abs(q) < 1 for q in flat["quarters_rss_mib_per_hour"])
    warming = [  # a cache filling to its bound in the first 10 minutes, then flat
        (t, pid, rss + int(min(t, 600) * mib / 30), fds) for t, pid, rss, fds in noisy
    ]
    levelled = leak_slopes(warming)
    assert levelled["longest_rss_mib_per_hour"] > 5 and ", flat within" in _verdict(levelled)
    growing = [
        (t, pid, rss + int(t * mib / 360), fds + int(t // 600)) for t, pid, rss, fds in noisy
    ]
    leak = leak_slopes(growing)  # 10 MiB and 6 files (a staircase) an hour
    assert round(leak["longest_rss_mib_per_hour"]) == 10 and 4 < leak["fds_per_hour"] < 7
    assert "NOT flat" in _verdict(leak) and round(leak["late_rss_mib_per_hour"]) == 10
    assert [round(q) for q in leak["quarters_rss_mib_per_hour"]] == [10, 10, 10, 10]
    wobbling = [  # up 10 MiB over 15 minutes, then down again: every quarter's slope is steep
        (t, pid, rss + int((900 - abs(t - 900)) * mib / 90), fds) for t, pid, rss, fds in noisy
    ]
    quarters = leak_slopes(wobbling)["quarters_rss_mib_per_hour"]
    assert quarters[0] > 30 and quarters[1] > 30 and quarters[2] < -30 and quarters[3] < -30
    restarts = [(t, int(t // 600), 80 * mib + int(t % 600) * 1000, 40) for t, *_ in noisy]
    assert leak_slopes(restarts)["longest_life_minutes"] < 10  # each kill starts a new life
    assert "Too short" in _verdict(leak_slopes(restarts))


def test_the_plaintext_scan_finds_a_marker_at_any_offset_and_nothing_else():
    import os
    import random

    import pytest

    from bench.plaintext_scan import SHORTEST, Markers

    rng = random.Random(7)
    markers = [rng.randbytes(48) for _ in range(500)]
    index = Markers(markers)
    noise = rng.randbytes(1 << 16)
    assert not index.found_in(noise) and not index.found_in(b"")
    for _ in range(200):
        marker, at = rng.choice(markers), rng.randrange(len(noise) - 48)
        planted = noise[:at] + marker + noise[at + 48 :]
        assert index.found_in(planted), at
        assert not index.found_in(planted[:at] + marker[:47])  # cut short: not the marker
    shortest = os.urandom(SHORTEST)
    assert Markers([shortest]).found_in(noise[:3] + shortest + noise[:5])
    with pytest.raises(ValueError, match="at least"):
        Markers([b"too short"])


def test_a_run_made_alongside_is_reported_with_its_own_table():
    from bench.soak_report import box_kills, companion

    raw = {
        "command": "--minutes 40 --leak-share 0 --faults kill_ingest,power_cut",
        "minutes": 40.2,
        "cycles": 3,
        "delivered": 57,
        "counts": {"kill_ingest": 2, "power_cut": 1},
        "failures": {"power_cut": {"lost": 1}},
        "recovery": {"kill_ingest": [2.0, 4.0], "power_cut": [3.0]},
    }
    assert box_kills(raw["counts"]) == 3 and box_kills({"net_cut": 5}) == 0
    text = "\n".join(companion(raw))
    assert "--faults kill_ingest,power_cut`: 3 fault cycles in 40.2 min, 57 clips" in text
    assert "3 box kills" in text and "SOME CHECKS FAILED" in text
    assert "| power_cut | 1 | 1 | 0 |" in text and "| kill_ingest | 2 | 0 |" in text
    raw["failures"] = {}
    assert "nothing failed" in "\n".join(companion(raw))


def test_a_run_alongside_that_left_no_figures_is_said_not_fatal(tmp_path):
    from bench.soak_report import _read_alongside

    assert "no figures from none.json (FileNotFoundError)" in _read_alongside(
        str(tmp_path / "none.json")
    )
    (tmp_path / "half.json").write_text('{"cycles": 3')
    assert "(JSONDecodeError)" in _read_alongside(str(tmp_path / "half.json"))
    (tmp_path / "old.json").write_text('{"cycles": 3, "counts": {}}')
    assert "old.json lacks command, delivered, failures, minutes, recovery" in _read_alongside(
        str(tmp_path / "old.json")
    )


def test_a_stalled_thread_is_shown_where_it_waits():
    from bench.soak import where_is

    released = threading.Event()

    def waiting_for_the_box() -> None:
        released.wait(30)

    thread = threading.Thread(target=waiting_for_the_box)
    thread.start()
    try:
        frames = where_is(thread, depth=3)
        assert len(frames) == 3
        assert any(f.startswith("test_soak.py:") and "waiting_for_the_box" in f for f in frames)
        assert frames[-1].startswith("threading.py:")  # innermost last: inside Event.wait
    finally:
        released.set()
        thread.join()
    assert where_is(thread) == []  # ended: nowhere


class BoxSeenBySoak:
    """Stands in for the soak's World where `_sample_heap` looks: a real box's database, read
    as the soak reads it, and the box's pid (the in-process box: this process)."""

    def __init__(self, box):
        self.path = box.store.path
        self.box = SimpleNamespace(pid=os.getpid())

    def box_db(self, sql: str, params=()) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as db:
            return db.execute(sql, params).fetchall()


@pytest.mark.skipif(not allocator.heap(), reason="mallinfo2 is glibc's (2.33 and later)")
def test_the_soak_takes_the_box_s_own_memory_figures_once_per_run(box):
    from bench.soak import Soak

    soak = Soak(BoxSeenBySoak(box))
    jobs_of(box).pause()
    soak._sample_heap()
    assert soak.heap_samples == []  # the job has not run yet
    memory = jobs_of(box).run_now("release_memory")
    soak._sample_heap()
    soak._sample_heap()  # the same run again: taken once
    assert len(soak.heap_samples) == 1
    _, pid, in_use, sqlite = soak.heap_samples[0]
    assert pid == os.getpid() and in_use == memory["heap_in_use_kib"] << 10
    assert sqlite == memory["sqlite_kib"] << 10 and 0 < sqlite < in_use
    jobs_of(box).run_now("release_memory")
    soak._sample_heap()
    assert len(soak.heap_samples) == 2


def test_the_heap_trend_reads_the_longest_life():
    from bench.soak_report import heap_trend

    mib = 1 << 20
    # a box killed at 10 minutes, then one that lives 90: in use flat around 40 MiB, SQLite's
    # share filling to 12 MiB in its first 20 minutes
    first = [(60.0 * n, 1, 60 * mib, 2 * mib) for n in range(10)]
    second = [(600 + 60.0 * n, 2, (40 + n % 3) * mib, min(n, 20) * 3 * mib // 5) for n in range(90)]
    heap = heap_trend(first + second)
    assert heap["runs"] == 89  # the second life after its warm-up minute
    assert heap["in_use_mib_range"] == [40, 42] and heap["sqlite_mib_range"] == [0.6, 12.0]
    assert abs(heap["in_use_mib_per_hour"]) < 1 and abs(heap["late_in_use_mib_per_hour"]) < 1
    leaking = heap_trend([(60.0 * n, 3, (40 * mib) + n * mib // 6, 0) for n in range(90)])
    assert round(leaking["in_use_mib_per_hour"]) == round(leaking["late_in_use_mib_per_hour"]) == 10
    assert heap_trend([])["in_use_mib_per_hour"] is None


def test_central_s_alarms_are_counted_by_kind():
    from bench.soak_report import central_alarms

    assert central_alarms([]) == "Alarms raised at central: none."
    said = central_alarms(
        [
            "blob store: bucket unreachable",
            "stale index row: recording r1 is indexed but missing",
            "blob store: timed out",
            "central failed on edgebox/v1/van/file/t.1/fin: OSError: no space",
            "central failed on edgebox/v1/van/file/t.2/fin: OSError: no space",
        ]
    )
    assert said == (
        "Alarms raised at central: 5 (blob store ×2; central failed ×2; stale index row ×1)."
    )


def test_the_loop_disk_has_room_for_the_whole_run():
    from bench.soak import FILLS_MIB_PER_HOUR, disk_mib_for

    assert disk_mib_for(4) == 1024  # the smallest
    for minutes in (115, 240, 1440):
        assert disk_mib_for(minutes) >= FILLS_MIB_PER_HOUR * minutes / 60 * 1.5
