"""Finishing events: remux, ingest through the upload service, custody; and recovery.

One thread takes ended events in order (so recordings enter the vault one at a time and
never compete with each other for the disk), turns each into one MP4 recording
(`edgebox.recorder.assemble`) and logs it. At start, events whose spool outlived a crash
are queued first.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

from edgebox import catalog, custody
from edgebox.clock import iso_at
from edgebox.errors import EdgeboxError
from edgebox.recorder import assemble
from edgebox.recorder.event import Event
from edgebox.recorder.spool import Spool

log = logging.getLogger("edgebox.recorder")
STOP_WAIT_SECONDS = 300  # the box waits this long at shutdown for recordings to go in


class Finisher:
    """Records ended events, one at a time, on a thread of its own."""

    def __init__(self, box, spool_dir: Path, max_event_seconds: float):
        self.box = box
        self.store = box.store
        self.spool_dir = spool_dir
        self.max_event_seconds = max_event_seconds
        self._due: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="finisher", daemon=True)

    def start(self) -> Finisher:
        """Start taking events."""
        self._thread.start()
        return self

    def put(self, event: Event, reason: str) -> None:
        """Record this ended event (`reason`: why it ended early, or "")."""
        self._due.put((event, reason))

    def stop(self) -> None:
        """Record what is queued, then stop."""
        self._due.put(None)
        self._thread.join(timeout=STOP_WAIT_SECONDS)

    def recover(self) -> None:
        """Events whose spool outlived the process (kill -9, power cut) are recorded with what
        they hold, their end noted as a gap; a half-made MP4 spool is made again."""
        for leftover in self.spool_dir.glob("*.mp4.spool"):
            Spool(leftover, b"\0" * 32).discard()
        for path in sorted(self.spool_dir.glob("*.ts.spool")):
            try:
                spool = Spool.open(path, self.box.keys.ingest_key())
                event = Event.from_manifest(spool, self.max_event_seconds)
            except (OSError, ValueError, KeyError, EdgeboxError) as exc:
                log.error("spool %s cannot be recovered: %s", path.name, exc)
                continue
            custody.record(
                self.store,
                "recorder.recovered",
                "box",
                event.camera_id,
                {"event": event.event_id, "triggers": [t.id for t in event.triggers]},
            )
            self._due.put((event, "the box stopped unexpectedly; recovered at restart"))

    def _run(self) -> None:
        while True:
            item = self._due.get()
            if item is None:
                return
            event, reason = item
            try:
                self._record(event, reason)
            except Exception as exc:  # noqa: BLE001 - kept on disk (encrypted), reported
                log.exception("event %s could not be recorded", event.event_id)
                message = getattr(exc, "message", str(exc))
                custody.record(
                    self.store,
                    "recorder.failed",
                    "recorder",
                    event.camera_id,
                    {"event": event.event_id, "error": message},
                )

    def _record(self, event: Event, reason: str) -> str | None:
        """Remux the event, ingest it, log it; the spools go once the recording is in.
        Returns the recording's id (None when the camera gave nothing)."""
        if event.pieces == 0:
            event.spool.discard()
            custody.record(
                self.store,
                "recorder.nothing_recorded",
                "recorder",
                event.camera_id,
                {"event": event.event_id, "triggers": [t.id for t in event.triggers]},
            )
            return None
        _, mp4_path = assemble.spool_paths(self.spool_dir, event.event_id)
        mp4 = Spool.create(mp4_path, self.box.keys.ingest_key())
        try:
            size, sha256 = assemble.remux(event.spool, mp4)
            device = self.store.one("SELECT * FROM devices WHERE id = ?", (event.camera_id,))
            recording_id = assemble.ingest(
                self.box.uploads, device, mp4, size, self._metadata(event, sha256, reason)
            )
        finally:
            mp4.discard()
        event.spool.discard()
        first = event.triggers[0]
        incident = next((t.incident for t in event.triggers if t.incident), None)
        if incident:
            catalog.tag(self.store, recording_id, {"incident": incident}, first.who)
        custody.record(
            self.store,
            "recorder.recorded",
            first.who,
            recording_id,
            {
                "camera": event.camera_name,
                "event": event.event_id,
                "triggers": [t.public() for t in event.triggers],
                "pre_event_seconds": round(first.at - event.first_wall, 3),
                "gaps": event.gaps,
                "ended": reason or "trigger ended",
            },
        )
        return recording_id

    def _metadata(self, event: Event, sha256: str, reason: str) -> dict:
        first = event.triggers[0]
        stamp = iso_at(event.first_wall).replace("-", "").replace(":", "")[:15]
        return {
            "serial": event.camera_name,
            "filename": f"{event.camera_name}-{stamp}Z.mp4",
            "user_id": first.who[:128],
            "started_at": iso_at(event.first_wall),
            "stopped_at": iso_at(event.closed_at or event.last_wall),
            "trigger_on": first.why[:128],
            "trigger_off": (reason or "trigger ended")[:128],
            "pre_event_seconds": f"{first.at - event.first_wall:.3f}",
            "sha256": sha256,
            "source": "rtsp",
            "trigger_ids": ",".join(t.id for t in event.triggers),
            "trigger_where": first.where,
            "trigger_source": first.source,
            "gaps": assemble.json_text(event.gaps),
        }
