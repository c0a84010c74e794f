"""The recorder: pulls every RTSP camera, keeps their pre-event rings, records on triggers.

Owned by the box process (`Box.start`). A reconcile loop starts a puller for each camera
in the database (cameras added by the CLI while the box runs are picked up within
RECONCILE_SECONDS) and stops those removed or revoked; it also ends events that are due
and hands them to the finisher, which remuxes and ingests them one at a time.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from edgebox import custody
from edgebox.clock import iso_at
from edgebox.errors import EdgeboxError, NotFound
from edgebox.recorder import assemble
from edgebox.recorder.cameras import CameraRegistry, CameraSpec
from edgebox.recorder.event import Event, Trigger
from edgebox.recorder.finisher import Finisher
from edgebox.recorder.onvif_events import EventPoller
from edgebox.recorder.pieces import Piece
from edgebox.recorder.puller import Puller
from edgebox.recorder.ring import Ring
from edgebox.recorder.spool import Spool

log = logging.getLogger("edgebox.recorder")

RECONCILE_SECONDS = 2.0  # how often the camera list is read again
DUE_CHECK_SECONDS = 0.5  # how often events are checked for their end (a stream may be silent)
RING_MARGIN = 2.0  # seconds the ring keeps beyond the pre-event (a piece is at most 2 s)
_TEXT = {"why": 500, "where": 128, "incident": 64}


def _text(body: dict, name: str, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise EdgeboxError(f"{name} is required", status=400, field=name)
        return None
    if not isinstance(value, str) or len(value) > _TEXT[name] or any(ord(c) < 32 for c in value):
        raise EdgeboxError(
            f"{name} must be printable text of at most {_TEXT[name]} characters",
            status=400,
            field=name,
        )
    return value


def registry_of(box) -> CameraRegistry:
    """The box's RTSP camera registry, with the config's defaults for new cameras."""
    settings = box.config.recorder
    return CameraRegistry(
        box.store, box.keys, settings.pre_event_seconds, settings.post_event_seconds
    )


class Recorder:
    """Every RTSP camera's puller and ring, the events in progress, and the finisher."""

    def __init__(self, box):
        self.box = box
        self.store = box.store
        self.registry = registry_of(box)
        self.spool_dir = box.data_dir / "recorder"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.max_event_seconds = float(box.config.recorder.max_event_seconds)
        self.epoch = time.time()
        self.pullers: dict[str, Puller] = {}
        self.pollers: dict[str, EventPoller] = {}
        self.rings: dict[str, Ring] = {}
        self.events: dict[str, Event] = {}
        self.finisher = Finisher(box, self.spool_dir, self.max_event_seconds)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_sync = 0.0  # when the camera list is read again

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> Recorder:
        """Queue the events a crash cut short, then start the finisher and the reconcile loop."""
        self.finisher.recover()
        self.finisher.start()
        thread = threading.Thread(target=self._reconcile_loop, name="recorder", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """End every event now (recorded with what it holds), then stop the pullers."""
        with self._lock:
            for camera_id in list(self.events):
                self._end_event(camera_id, "the box stopped")
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self.finisher.stop()
        with self._lock:
            pullers = [*self.pollers.values(), *self.pullers.values()]
            self.pullers.clear()
            self.pollers.clear()
        for puller in pullers:
            puller.stop()

    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - keep recording whatever failed once
                log.exception("recorder reconcile failed")
            self._stop.wait(DUE_CHECK_SECONDS)

    def reconcile(self) -> None:
        """Match pullers to the cameras in the database; end events that are due."""
        now = time.time()
        with self._lock:
            for camera_id, event in list(self.events.items()):
                if event.due(now):
                    self._end_event(camera_id, "")
        if self._next_sync > now:
            return
        self._next_sync = now + RECONCILE_SECONDS
        wanted = {spec.device_id: spec for spec in self.registry.active_specs()}
        with self._lock:
            for camera_id, puller in list(self.pullers.items()):
                if wanted.get(camera_id) != puller.spec:
                    self.pullers.pop(camera_id)
                    if camera_id in self.events:
                        self._end_event(camera_id, "the camera was removed or changed")
                    threading.Thread(target=puller.stop, daemon=True).start()
                    poller = self.pollers.pop(camera_id, None)
                    if poller is not None:
                        threading.Thread(target=poller.stop, daemon=True).start()
            for camera_id, spec in wanted.items():
                if camera_id not in self.pullers:
                    self._start_puller(spec)

    def _start_puller(self, spec: CameraSpec) -> None:
        ring = self.rings.get(spec.device_id)
        if ring is None or ring.seconds != spec.pre_event_seconds + RING_MARGIN:
            ring = self.rings[spec.device_id] = Ring(spec.pre_event_seconds + RING_MARGIN)
        self.pullers[spec.device_id] = Puller(
            spec, self.epoch, self._piece, self.registry.set_state, self._session_end
        ).start()
        if spec.onvif_xaddr:
            self.pollers[spec.device_id] = EventPoller(spec, self._onvif_event).start()

    def _onvif_event(self, spec: CameraSpec, topic: str) -> None:
        """A camera's motion or input became active: record it (extending a recording
        in progress), for the camera's post-event time."""
        body = {
            "why": f"ONVIF event {topic}"[:500],
            "cameras": [spec.device_id],
            "post_event_seconds": max(spec.post_event_seconds, 1.0),
        }
        try:
            self.trigger(body, f"camera:{spec.name}", "onvif")
        except EdgeboxError as exc:
            log.warning("camera %s: ONVIF event not recorded: %s", spec.name, exc.message)

    # -- pieces from the pullers -------------------------------------------
    def _piece(self, camera_id: str, piece: Piece) -> None:
        self.rings[camera_id].add(piece)
        event = self.events.get(camera_id)
        if event is None:
            return
        try:
            taken = event.take(piece)
        except OSError as exc:  # a full or failing disk: keep what the spool holds
            log.error("camera %s: spool write failed: %s", event.camera_name, exc)
            taken, reason = False, f"the spool could not be written: {exc.strerror}"
        else:
            reason = ""
        if not taken:
            with self._lock:
                if self.events.get(camera_id) is event:
                    self._end_event(camera_id, reason)

    def _session_end(self, camera_id: str, session: int, reason: str) -> None:
        event = self.events.get(camera_id)
        if event is None:
            return
        gap = event.open_gap(time.time(), reason)
        custody.record(
            self.store,
            "recorder.stream_lost",
            "recorder",
            camera_id,
            {"event": event.event_id, "gap_from": gap["from"], "reason": reason},
        )

    # -- triggers -----------------------------------------------------------
    def trigger(self, body: dict, who: str, source: str) -> dict:
        """Start (or extend) recordings on the given cameras (all when none are named).

        `body`: why (required), cameras (ids or names), where, incident, post_event_seconds
        (the recording ends that long after the trigger; omitted: the camera's post-event
        time after a stop, or `until_stopped: true` to wait for a stop).
        """
        why = _text(body, "why", required=True)
        where, incident = _text(body, "where"), _text(body, "incident")
        cameras = self._cameras(body.get("cameras"))
        post = body.get("post_event_seconds")
        until_stopped = body.get("until_stopped", post is None)
        if post is not None and (
            isinstance(post, bool) or not isinstance(post, int | float) or not 0 <= post <= 3600
        ):
            raise EdgeboxError(
                "post_event_seconds must be 0 to 3600", status=400, field="post_event_seconds"
            )
        if not isinstance(until_stopped, bool):
            raise EdgeboxError("until_stopped must be true or false", status=400)
        now = time.time()
        trigger = Trigger(
            uuid.uuid4().hex,
            now,
            who,
            why,
            source,
            where,
            incident,
            None if until_stopped else now + float(post or 0),
        )
        custody.record(
            self.store,
            "recorder.triggered",
            who,
            trigger.id,
            {**trigger.public(), "cameras": [c["name"] for c in cameras]},
        )
        started = []
        with self._lock:
            for camera in cameras:
                started.append(self._attach(camera, trigger))
        return {"trigger_id": trigger.id, "at": iso_at(now), "cameras": started}

    def _cameras(self, names) -> list[dict]:
        if names is None:
            rows = [c for c in self.registry.list() if not c["revoked_at"]]
            if not rows:
                raise EdgeboxError("no RTSP camera to record", status=409)
            return rows
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise EdgeboxError("cameras must be a list of camera ids or names", status=400)
        rows = [self.registry.get(name) for name in names]
        revoked = [r["name"] for r in rows if r["revoked_at"]]
        if revoked:
            raise EdgeboxError(f"camera {revoked[0]} is revoked", status=409, field="cameras")
        return rows

    def _attach(self, camera: dict, trigger: Trigger) -> dict:
        event = self.events.get(camera["id"])
        if event is not None and not event.ended:
            event.triggers.append(trigger)
            event.save_manifest()
            return {"camera": camera["name"], "event": event.event_id, "extended": True}
        event_id = uuid.uuid4().hex
        ts_path, _ = assemble.spool_paths(self.spool_dir, event_id)
        event = Event(
            event_id,
            camera["id"],
            camera["name"],
            Spool.create(ts_path, self.box.keys.ingest_key()),
            camera["pre_event_seconds"],
            self.max_event_seconds,
            [trigger],
        )
        ring = self.rings.get(camera["id"])
        if ring is not None:
            event.start_backfill(ring.since(trigger.at - camera["pre_event_seconds"]), ring.open)
        event.save_manifest()
        self.events[camera["id"]] = event
        return {"camera": camera["name"], "event": event_id, "extended": False}

    def stop_trigger(self, trigger_id: str, who: str) -> dict:
        """End a trigger now; its events end once no other trigger keeps them going (plus
        each camera's post-event time)."""
        now = time.time()
        stopped = []
        with self._lock:
            for event in self.events.values():
                for trigger in event.triggers:
                    if trigger.id == trigger_id and trigger.until is None:
                        post = self._post_event(event.camera_id)
                        trigger.until = now + post
                        stopped.append(event.camera_name)
        if not stopped:
            raise NotFound(f"no running trigger {trigger_id}")
        custody.record(
            self.store, "recorder.stopped", who, trigger_id, {"cameras": sorted(set(stopped))}
        )
        return {"trigger_id": trigger_id, "stopped": sorted(set(stopped)), "at": iso_at(now)}

    def _post_event(self, camera_id: str) -> float:
        puller = self.pullers.get(camera_id)
        return puller.spec.post_event_seconds if puller is not None else 0.0

    # -- finishing ----------------------------------------------------------
    def _end_event(self, camera_id: str, reason: str) -> None:
        event = self.events.pop(camera_id, None)
        if event is None:
            return
        try:
            event.finish()
        except OSError as exc:  # the finisher still records what reached the spool
            log.error("camera %s: spool not synced: %s", event.camera_name, exc)
        self.finisher.put(event, reason)

    # -- status -------------------------------------------------------------
    def cameras(self) -> list[dict]:
        """Every RTSP camera with its live state, ring and event in progress."""
        now = time.time()
        rows = self.registry.list()
        with self._lock:
            for row in rows:
                ring = self.rings.get(row["id"])
                event = self.events.get(row["id"])
                row["buffered_seconds"] = round(ring.held_seconds(now), 1) if ring else 0.0
                row["recording"] = (
                    {"event": event.event_id, "triggers": [t.id for t in event.triggers]}
                    if event
                    else None
                )
        return rows
