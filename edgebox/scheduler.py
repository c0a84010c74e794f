"""APScheduler 3 wiring of the box's periodic jobs, with each job's last run, next run and error.

Every job is a plain function `job(box, now)` of the box and the current time.
The scheduler passes `now` from an injectable clock (`Clock`, real UTC time plus
an offset a test can move by 31 days without sleeping). Each run's outcome is
kept in memory and in the `sync_state` table (`job:<id>`), so `edgebox status`
in another process sees it too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler

from edgebox import retention, storage
from edgebox.clock import iso, parse_rfc3339, utcnow
from edgebox.sync import state
from edgebox.sync.outbox import queue_meta

log = logging.getLogger(__name__)
KEY_PREFIX = "job:"
OVERDUE_GRACE = dt.timedelta(minutes=2)
ROOM_CHECK_DELAY_SECONDS = 10  # well inside the Retry-After a refused camera is told


class Clock:
    """The time jobs see: real UTC time plus an offset that tests move forward."""

    def __init__(self, offset: dt.timedelta = dt.timedelta(0)):
        self.offset = offset

    def __call__(self) -> dt.datetime:
        return utcnow() + self.offset

    def advance(self, **delta: float) -> dt.datetime:
        """Move the clock forward (`days=31`, `hours=1`...); returns the new time."""
        self.offset += dt.timedelta(**delta)
        return self()


# -- the jobs ---------------------------------------------------------------


def custody_checkpoint(box, now: dt.datetime | None = None) -> dict | None:
    """Sign the custody chain's head if anything happened since the last checkpoint."""
    row = box.checkpoint()
    return {"seq": row["seq"]} if row else None


def expire_uploads(box, now: dt.datetime | None = None) -> dict:
    """Discard unfinished uploads that have been idle past their expiry."""
    expired = box.uploads.expire(now)
    if expired:
        log.info("expired %d abandoned uploads", len(expired))
    return {"expired": len(expired)}


def prune_sessions(box, now: dt.datetime | None = None) -> dict:
    """Forget web sessions that ended or expired more than a month ago."""
    return {"pruned": box.users.prune_sessions(now=now)}


def heartbeat(box, now: dt.datetime | None = None) -> bool:
    """Queue a heartbeat for central while the link is up (none pile up while offline)."""
    if box.uplink is None or not box.uplink.link.connected.is_set():
        return False
    report = box.status()
    body = {
        "type": "heartbeat",
        "ts": report["time"],
        "recordings": report["recordings"],
        "storage": report["storage"],
        "backlog": report["upstream"]["backlog"],
        "custody_head": report["custody"]["entries"],
    }
    queue_meta(box.store, body, priority=200, replace_kind="heartbeat")
    return True


def retention_sweep(box, now: dt.datetime | None = None) -> dict:
    """Crypto-shred recordings past their rule that central holds and no hold keeps."""
    report = retention.sweep(box, now)
    return {
        "deleted": len(report.deleted),
        "freed_bytes": report.freed_bytes,
        "kept": report.kept,
        "kept_past_rule": len(report.kept_past_rule),
        "failed": len(report.failed),
    }


def storage_watermarks(box, now: dt.datetime | None = None) -> dict:
    """Free space past the high watermark (expired first, then old synced copies); alarm if full."""
    return storage.relieve(box, now).to_dict()


def litestream_health(box, now: dt.datetime | None = None) -> dict:
    """Check that Litestream runs and keeps up; `edgebox.replication` owns the details."""
    from edgebox.replication.litestream import health_job

    report = health_job(box)
    return {k: report.get(k) for k in ("state", "lag_seconds", "restarts", "last_error")}


def release_memory(box, now: dt.datetime | None = None) -> dict:
    """Hand the free memory inside the heaps back to the kernel (`edgebox.lowlevel.allocator`)
    and report the box's memory: resident, the heaps' bytes in use and free, and SQLite's
    share of what is in use (held to `db.SQLITE_SOFT_HEAP_LIMIT`), in KiB."""
    from edgebox.lowlevel import allocator, sqlite_memory

    figures = allocator.release()
    if not figures:  # not glibc: nothing to do
        return {}
    result = {
        "released_kib": figures["released"] >> 10,
        "resident_kib": figures["resident_after"] >> 10,
    }
    if "in_use" in figures:
        result |= {
            "heap_in_use_kib": figures["in_use"] >> 10,
            "heap_free_kib": figures["free"] >> 10,
        }
    sqlite = sqlite_memory.used()
    if sqlite is not None:
        result["sqlite_kib"] = sqlite >> 10
    return result


@dataclass(frozen=True)
class JobSpec:
    """One periodic job: its id, function, interval and delay before the first run."""

    id: str
    func: Callable[..., Any]
    seconds: float
    first_after: float | None = None  # None: one interval after start


def default_jobs(box) -> list[JobSpec]:
    """The box's standard jobs and their cadence."""
    return [
        JobSpec(
            "custody_checkpoint", custody_checkpoint, box.config.custody.checkpoint_minutes * 60
        ),
        JobSpec("expire_uploads", expire_uploads, 600),
        JobSpec("prune_sessions", prune_sessions, 86400, first_after=600),
        JobSpec("heartbeat", heartbeat, 300),
        JobSpec("retention_sweep", retention_sweep, 3600, first_after=120),
        JobSpec("storage_watermarks", storage_watermarks, 60, first_after=15),
        JobSpec("litestream_health", litestream_health, 60, first_after=30),
        JobSpec("release_memory", release_memory, 60, first_after=60),
    ]


# -- running and recording ----------------------------------------------------


def _summary(result: Any) -> Any:
    """A job's return value, trimmed to plain data for status."""
    if result is None or isinstance(result, bool | int | float | str):
        return result
    if isinstance(result, dict):
        return {
            k: v for k, v in result.items() if isinstance(v, bool | int | float | str | dict | None)
        }
    return str(result)[:200]


class Jobs:
    """The running scheduler of one box, its clock, and what each job did last."""

    def __init__(self, box, specs: list[JobSpec], clock: Callable[[], dt.datetime] | None = None):
        self.box = box
        self.clock = clock or Clock()
        self.specs = {spec.id: spec for spec in specs}
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._running: Counter[str] = Counter()  # runs under way (scheduled and run_now)
        self._again: set[str] = set()  # asked for by `soon` while a run was under way
        self._stopping = False
        self.scheduler = BackgroundScheduler(
            timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1}
        )
        self.scheduler.add_listener(self._skipped, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
        self.scheduler.add_listener(self._ran, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        now = utcnow()
        for spec in specs:
            first = spec.first_after if spec.first_after is not None else spec.seconds
            self.scheduler.add_job(
                self._scheduled,
                "interval",
                args=[spec.id],
                id=spec.id,
                name=spec.id,
                seconds=spec.seconds,
                next_run_time=now + dt.timedelta(seconds=first),
                misfire_grace_time=max(30, int(spec.seconds)),
            )
            persisted = self._persisted(spec.id) or {}
            self.records[spec.id] = {**_blank(spec), **persisted, "interval_s": spec.seconds}

    def start(self) -> Jobs:
        """Start the scheduler thread and publish every job's next run."""
        self.scheduler.start()
        for job_id in self.specs:
            self._update(job_id, next_run=self._next_run(job_id))
        current = [KEY_PREFIX + job_id for job_id in self.specs]
        try:  # forget jobs this version no longer runs, so status does not show them forever
            with self.box.store.write() as db:
                db.execute(
                    "DELETE FROM sync_state WHERE key LIKE ? AND key NOT IN "  # noqa: S608
                    f"({', '.join('?' * len(current))})",
                    [KEY_PREFIX + "%", *current],
                )
        except sqlite3.Error as exc:
            log.warning("could not prune old job records: %s", exc)
        return self

    def stop(self) -> None:
        """Stop the scheduler (waiting for running jobs); next runs are cleared."""
        self._stopping = True  # `soon` returns at once: shutdown holds the job stores meanwhile
        self.scheduler.shutdown(wait=True)
        for job_id in self.specs:
            self._update(job_id, next_run=None)

    def pause(self) -> None:
        """Hold every job (tests that drive jobs by hand use this)."""
        self.scheduler.pause()

    def resume(self) -> None:
        """Let paused jobs run again."""
        self.scheduler.resume()

    def soon(self, job_id: str, after: float = 0) -> bool:
        """Have a job run `after` seconds from now, in the scheduler's own thread (the caller
        does not wait); while it runs, once more right after (the run under way may have
        looked before the caller's reason arose). A run due by then anyway is left as it is,
        so a burst of callers costs one run. Never raises: returns whether a run was brought
        forward or queued (not for an unknown job, nor once the scheduler stops)."""
        if self._stopping or job_id not in self.specs:
            return False
        with self._lock:
            if self._running[job_id]:
                self._again.add(job_id)
                return True
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=after)
        try:
            job = self.scheduler.get_job(job_id)
            if job is None or job.next_run_time is None or job.next_run_time <= when:
                return False
            job.modify(next_run_time=when)
        except (JobLookupError, SchedulerNotRunningError):  # stopped meanwhile
            return False
        return True

    def run_now(self, job_id: str):
        """Run one job at once in this thread, recorded like a scheduled run; errors propagate."""
        return self._execute(job_id)

    def report(self) -> dict[str, dict]:
        """Each job's last run, duration, outcome, last error and next run."""
        with self._lock:
            records = {k: dict(v) for k, v in self.records.items()}
        for job_id, record in records.items():
            if self.scheduler.running:
                record["next_run"] = self._next_run(job_id)
        return _annotate(records)

    # -- internals --------------------------------------------------------------
    def _scheduled(self, job_id: str) -> None:
        self._execute(job_id)

    def _execute(self, job_id: str):
        spec = self.specs[job_id]
        started = utcnow()
        tick = time.monotonic()
        with self._lock:
            self._running[job_id] += 1
        try:
            result = spec.func(self.box, now=self.clock())
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            log.error("job %s failed: %s", job_id, message)
            self._finished(job_id, started, tick, "error", error=message)
            raise
        finally:
            with self._lock:
                self._running[job_id] -= 1
        self._finished(job_id, started, tick, "ok", result=_summary(result))
        return result

    def _finished(self, job_id, started, tick, outcome, result=None, error=None) -> None:
        changes: dict[str, Any] = {
            "last_run": iso(started),
            "last_duration_s": round(time.monotonic() - tick, 3),
            "last_outcome": outcome,
        }
        with self._lock:
            record = self.records[job_id]
            changes["runs"] = record.get("runs", 0) + 1
            if outcome == "error":
                changes["errors"] = record.get("errors", 0) + 1
                changes["last_error"] = {"at": iso(started), "message": error[:500]}
            else:
                changes["last_result"] = result
        changes["next_run"] = self._next_run(job_id)
        self._update(job_id, **changes)

    def _ran(self, event: JobEvent) -> None:
        """After a scheduled run, once the executor no longer counts it (a run brought forward
        before then would be skipped as one too many): the run `soon` asked for meanwhile."""
        with self._lock:
            again = event.job_id in self._again
            self._again.discard(event.job_id)
        if again:
            self.soon(event.job_id)

    def _skipped(self, event: JobEvent) -> None:
        if event.job_id in self.specs:
            why = "missed" if event.code == EVENT_JOB_MISSED else "still running"
            log.warning("job %s skipped a run (%s)", event.job_id, why)
            self._update(event.job_id, last_skipped={"at": iso(), "why": why})

    def _next_run(self, job_id: str) -> str | None:
        if not self.scheduler.running:
            return None
        job = self.scheduler.get_job(job_id)
        return iso(job.next_run_time) if job and job.next_run_time else None

    def _update(self, job_id: str, **changes) -> None:
        with self._lock:
            record = self.records[job_id]
            record.update(changes)
            snapshot = dict(record)
        try:
            state.put(self.box.store, KEY_PREFIX + job_id, snapshot)
        except sqlite3.Error as exc:  # e.g. a full disk: the in-memory record still shows it
            log.warning("could not persist job %s state: %s", job_id, exc)

    def _persisted(self, job_id: str) -> dict | None:
        return state.get(self.box.store, KEY_PREFIX + job_id)


def _blank(spec: JobSpec) -> dict:
    return {
        "interval_s": spec.seconds,
        "last_run": None,
        "last_duration_s": None,
        "last_outcome": None,
        "last_result": None,
        "last_error": None,
        "next_run": None,
        "runs": 0,
        "errors": 0,
    }


def _annotate(records: dict[str, dict]) -> dict[str, dict]:
    """Mark jobs whose next run is well in the past (the box is not running them)."""
    now = utcnow()
    for record in records.values():
        due = record.get("next_run")
        record["overdue"] = bool(due) and parse_rfc3339(due) < now - OVERDUE_GRACE
    return dict(sorted(records.items()))


_by_box: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def start_scheduler(
    box,
    clock: Callable[[], dt.datetime] | None = None,
    extra: list[JobSpec] | None = None,
) -> Jobs:
    """Start the background scheduler with the box's jobs (plus `extra` ones)."""
    jobs = Jobs(box, [*default_jobs(box), *(extra or [])], clock).start()
    _by_box[box] = jobs
    return jobs


def jobs_of(box) -> Jobs | None:
    """The scheduler running in this process for `box`, if any."""
    return _by_box.get(box)


def refused_for_room(box) -> bool:
    """A camera was just refused for room (507): bring the watermark check forward, so what
    it may free (`edgebox.storage`, synced copies giving way to new footage) is freed before
    the camera comes back, not at the check's next minute. It runs ROOM_CHECK_DELAY_SECONDS
    on, not at once: a refusal can pass by itself (an unfinished upload's reserved room
    given back, a stray file removed), and then the check frees nothing. Returns whether a
    run was brought forward."""
    jobs = jobs_of(box)
    if jobs is None:
        return False
    try:
        return jobs.soon("storage_watermarks", after=ROOM_CHECK_DELAY_SECONDS)
    except Exception:  # noqa: BLE001 - the camera's 507 must be answered whatever this does
        log.exception("could not bring the watermark check forward")
        return False


def jobs_report(box) -> dict[str, dict]:
    """Each job's last run, next run and last error, for `edgebox status` (live or persisted)."""
    jobs = jobs_of(box)
    if jobs is not None:
        return jobs.report()
    rows = box.store.query(
        "SELECT key, value FROM sync_state WHERE key LIKE ?", (KEY_PREFIX + "%",)
    )
    records = {row["key"][len(KEY_PREFIX) :]: json.loads(row["value"]) for row in rows}
    return _annotate({k: v for k, v in records.items() if isinstance(v, dict)})


def job_alarms(box) -> list[dict]:
    """Warnings for jobs whose last run failed, for the status `alarms` list."""
    alarms = []
    for job_id, record in jobs_report(box).items():
        if record.get("last_outcome") == "error":
            alarms.append(
                {
                    "source": f"job:{job_id}",
                    "severity": "warning",
                    "since": record["last_error"]["at"],
                    "message": f"job {job_id} failed: {record['last_error']['message']}",
                }
            )
    return alarms
