"""APScheduler 3 wiring of the box's periodic jobs; each job is a plain function of the box."""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler

from edgebox.sync.outbox import queue_meta

log = logging.getLogger(__name__)


def custody_checkpoint(box) -> None:
    """Sign the custody chain's head if anything happened since the last checkpoint."""
    box.checkpoint()


def expire_uploads(box) -> None:
    """Discard unfinished uploads that have been idle past their expiry."""
    expired = box.uploads.expire()
    if expired:
        log.info("expired %d abandoned uploads", len(expired))


def heartbeat(box) -> bool:
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


class _Jobs:
    def __init__(self, scheduler: BackgroundScheduler):
        self.scheduler = scheduler

    def stop(self) -> None:
        self.scheduler.shutdown(wait=True)


def start_scheduler(box) -> _Jobs:
    """Start the background scheduler with the box's jobs."""
    scheduler = BackgroundScheduler(
        timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1}
    )
    scheduler.add_job(
        custody_checkpoint,
        "interval",
        args=[box],
        id="custody_checkpoint",
        minutes=box.config.custody.checkpoint_minutes,
    )
    scheduler.add_job(expire_uploads, "interval", args=[box], id="expire_uploads", minutes=10)
    scheduler.add_job(heartbeat, "interval", args=[box], id="heartbeat", minutes=5)
    scheduler.start()
    return _Jobs(scheduler)
