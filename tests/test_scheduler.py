"""Scheduled jobs: last run, next run and last error, seen in and out of process; a moved clock."""

from __future__ import annotations

import datetime as dt
import os
import threading

from edgebox import retention
from edgebox.box import Box
from edgebox.clock import parse_rfc3339, utcnow
from edgebox.config import load_config
from edgebox.lowlevel import allocator, sqlite_memory
from edgebox.scheduler import (
    Clock,
    JobSpec,
    job_alarms,
    jobs_of,
    jobs_report,
    start_scheduler,
)
from tests.sync_fixtures import wait_for
from tests.test_ingest import upload_all

STANDARD = {
    "custody_checkpoint",
    "expire_uploads",
    "prune_sessions",
    "heartbeat",
    "retention_sweep",
    "storage_watermarks",
    "litestream_health",
    "release_memory",
}


def test_every_job_shows_its_next_run(box):
    report = jobs_report(box)
    assert set(report) == STANDARD
    now = utcnow()
    for job_id, record in report.items():
        assert record["last_run"] is None and record["last_error"] is None, job_id
        assert parse_rfc3339(record["next_run"]) > now - dt.timedelta(seconds=5), job_id
        assert record["overdue"] is False
    assert report["retention_sweep"]["interval_s"] == 3600
    jobs_of(box).pause()
    health = jobs_of(box).run_now("litestream_health")
    assert isinstance(health["state"], str)  # this box's server runs without its replicator
    assert jobs_report(box)["litestream_health"]["last_result"]["state"] == health["state"]
    memory = jobs_of(box).run_now("release_memory")
    assert jobs_report(box)["release_memory"]["last_result"] == memory
    if allocator.heap():  # glibc 2.33 or later (elsewhere the job has nothing to say)
        assert memory["resident_kib"] > 10 << 10  # a box's Python process is tens of MiB
        assert memory["heap_in_use_kib"] > 0 and memory["heap_free_kib"] >= 0
    if sqlite_memory.used() is not None:  # this Python's SQLite exports its count
        # SQLite's share of the heap: the box's connections hold pages, within what is in use
        assert 0 < memory["sqlite_kib"] < memory["heap_in_use_kib"]


def test_jobs_see_the_moved_clock(box, camera):
    jobs = jobs_of(box)
    jobs.pause()
    response, _ = upload_all(camera, os.urandom(4096))
    rid = response.headers["EdgeBox-Recording-Id"]
    with box.store.write() as db:  # fixture shortcut: central's confirmation, see test_retention
        db.execute("UPDATE recordings SET sync_state = 'synced' WHERE id = ?", [rid])
    unfinished = camera.create(1000)
    assert unfinished.status_code == 201

    result = jobs.run_now("retention_sweep")
    assert result["deleted"] == 0 and result["kept"] == {retention.KEEP_YOUNG: 1}
    assert jobs.run_now("expire_uploads") == {"expired": 0}

    jobs.clock.advance(days=31)
    assert jobs.run_now("retention_sweep")["deleted"] == 1
    assert jobs.run_now("expire_uploads") == {"expired": 1}
    assert not box.uploads.vault_path(rid).exists()

    report = jobs_report(box)["retention_sweep"]
    assert report["runs"] == 2 and report["last_outcome"] == "ok"
    assert report["last_result"]["deleted"] == 1
    assert parse_rfc3339(report["last_run"]) <= utcnow()  # runs are stamped in real time


def test_old_web_sessions_are_forgotten_a_month_on(box):
    jobs = jobs_of(box)
    jobs.pause()
    user = box.users.add("crew-1", "crew", "a long enough password")
    ended = box.users.start_session(user["id"])
    box.users.end_session(ended)
    live = box.users.start_session(user["id"])
    assert jobs.run_now("prune_sessions") == {"pruned": 0}
    assert box.users.session_user(live, 12) is not None
    jobs.clock.advance(days=29)
    assert jobs.run_now("prune_sessions") == {"pruned": 0}  # kept for a month
    jobs.clock.advance(days=2)
    assert jobs.run_now("prune_sessions") == {"pruned": 2}
    assert box.store.one("SELECT count(*) AS n FROM web_sessions")["n"] == 0


def test_scheduled_runs_and_errors_are_recorded(box_config):
    box = Box(load_config(box_config))
    calls = []
    second = threading.Event()

    def flaky(box, now):
        calls.append(now)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        second.set()
        return {"done": len(calls)}

    clock = Clock(dt.timedelta(days=40))
    jobs = start_scheduler(box, clock, extra=[JobSpec("flaky", flaky, 0.3, first_after=0)])
    try:
        wait_for(lambda: jobs_report(box)["flaky"]["errors"] == 1, timeout=10, what="a failure")
        alarm = job_alarms(box)
        assert alarm and alarm[0]["source"] == "job:flaky"
        assert "No space left on device" in alarm[0]["message"]
        assert second.wait(10)
        wait_for(
            lambda: jobs_report(box)["flaky"]["last_outcome"] == "ok", timeout=10, what="a run"
        )
        record = jobs_report(box)["flaky"]
        assert record["last_error"]["message"].startswith("OSError")
        assert record["last_result"]["done"] >= 2
        assert parse_rfc3339(record["next_run"]) > parse_rfc3339(record["last_run"])
        assert job_alarms(box) == []  # a later success clears the warning, the error stays
        assert calls[0] - utcnow() > dt.timedelta(days=39)  # the job saw the injected clock
    finally:
        jobs.stop()
        box.store.close()

    # Another process (here: another Box on the same files) reads what the jobs did.
    reopened = Box(load_config(box_config))
    try:
        report = jobs_report(reopened)
        assert set(report) == STANDARD | {"flaky"}
        assert report["flaky"]["runs"] >= 2 and report["flaky"]["errors"] == 1
        assert report["flaky"]["last_error"]["message"].startswith("OSError")
        assert all(r["next_run"] is None and not r["overdue"] for r in report.values())
        jobs = start_scheduler(reopened)  # a version without the job forgets its record
        assert set(jobs_report(reopened)) == STANDARD
        assert reopened.store.one("SELECT 1 FROM sync_state WHERE key = 'job:flaky'") is None
        jobs.stop()
    finally:
        reopened.store.close()


def test_soon_brings_a_run_forward_once_for_a_burst(box_config):
    """`Jobs.soon` (a camera refused for room calls it for the watermark check): the run
    comes then instead of an hour on; calls while it is due change nothing, calls while it
    runs add one run after it (that run may have looked before their reason arose)."""
    box = Box(load_config(box_config))
    started, release, runs = threading.Event(), threading.Event(), []

    def slow(box, now):
        runs.append(now)
        started.set()
        release.wait(30)

    jobs = start_scheduler(box, extra=[JobSpec("slow", slow, 3600)])
    try:
        assert jobs.soon("slow", after=600) is True
        next_run = parse_rfc3339(jobs_report(box)["slow"]["next_run"]) - utcnow()
        assert dt.timedelta(minutes=5) < next_run < dt.timedelta(minutes=11)  # an hour before
        assert jobs.soon("slow", after=900) is False  # due by then already
        assert jobs.soon("slow") is True
        assert started.wait(30)
        assert all(jobs.soon("slow") for _ in range(10))  # running: one more run, not ten
        started.clear()
        release.set()
        assert started.wait(30)  # the one more
        wait_for(lambda: jobs_report(box)["slow"]["runs"] == 2, timeout=30, what="two runs")
        next_run = parse_rfc3339(jobs_report(box)["slow"]["next_run"]) - utcnow()
        assert next_run > dt.timedelta(minutes=50)  # back to its interval
        assert len(runs) == 2
        assert jobs.soon("no-such-job") is False
    finally:
        release.set()
        jobs.stop()
    assert jobs.soon("slow") is False  # stopped: nothing to bring forward, and no raise
    box.store.close()
