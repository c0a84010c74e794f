"""The uplink: drains custody entries, metadata events and vault files to central.

One thread does the work in priority order (custody and metadata first, then
recordings under a hold or tied to an incident, then the oldest), sending only
while the link is up and keeping at most `window` file segments unacknowledged.
Once per `replication.ship_interval_seconds` the Litestream replica's new files
go up in between (see `edgebox.sync.replica`).
Only central's end-to-end answer marks anything delivered. A confirmed recording is
sealed once nothing is left to send (sealing re-hashes the whole file, which would
otherwise slow the drain), or while the link is down.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import queue
import threading
import time

from cryptography.hazmat.primitives import serialization

from edgebox import custody
from edgebox.clock import iso, utcnow
from edgebox.errors import EdgeboxError
from edgebox.sync import protocol, state
from edgebox.sync.link import Link, settings_from_config
from edgebox.sync.pipeline import Acks, Finisher
from edgebox.sync.replica import ReplicaShipper

log = logging.getLogger(__name__)
CUSTODY_BATCH = 500
ERROR_PAUSE = 30
SEAL_WAIT_LIMIT = 600  # seconds a confirmed recording waits unsealed while the link is busy


class LinkLost(Exception):
    """The link went down mid-operation; the operation restarts when it returns."""


class _Bucket:
    """A token bucket for the optional bandwidth cap."""

    def __init__(self, rate: int):
        self.rate = rate
        self.tokens = float(rate)
        self.stamp = time.monotonic()
        self.lock = threading.Lock()  # the uplink and the finisher both send

    def take(self, amount: int, stop: threading.Event) -> None:
        if not self.rate:
            return
        with self.lock:
            self._take(amount, stop)

    def _take(self, amount: int, stop: threading.Event) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= min(amount, self.rate):
                self.tokens -= amount
                return
            if stop.wait((amount - self.tokens) / self.rate):
                return


class Uplink:
    """Sends the backlog upstream whenever the link is up; owned by the box process."""

    def __init__(self, box):
        self.box = box
        self.store = box.store
        self.box_id = box.config.box.box_id
        self.up = box.config.upstream
        self.acks = Acks()
        self.stop_event = threading.Event()
        self.link = Link(
            settings_from_config(
                box.config, [protocol.ack_topic(self.box_id), protocol.command_topic(self.box_id)]
            ),
            self._message,
            self._state,
        )
        identity = box.keys.identity_public().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.identity = base64.b64encode(identity).decode()
        self._bucket = _Bucket(self.up.bandwidth_bytes_per_second)
        self.replica = ReplicaShipper(self)
        self.finisher = Finisher(LinkLost)
        self._seal_failed: set[str] = set()  # not retried until the box restarts
        self.seal_wait_limit = SEAL_WAIT_LIMIT
        self._thread: threading.Thread | None = None
        self._progress_stamp = 0.0

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> Uplink:
        """Connect and start draining."""
        self.link.start()
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop draining and disconnect."""
        self.stop_event.set()
        if self._thread:
            self._thread.join(timeout=15)
        self.finisher.wait(timeout=15)
        self.link.stop()

    def flush_custody(self, timeout: float = 5) -> bool:
        """Wait until central holds every custody entry and checkpoint made so far."""
        head = self.store.one("SELECT COALESCE(MAX(seq), 0) AS s FROM custody")["s"]
        signed = self.store.one("SELECT COALESCE(MAX(seq), 0) AS s FROM checkpoints")["s"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                state.get(self.store, "custody_sent_seq", 0) >= head
                and state.get(self.store, "checkpoint_sent_seq", 0) >= signed
            ):
                return True
            if self.stop_event.wait(0.1):
                break
        return False

    def _state(self, link_state: str, detail: str) -> None:
        state.put(self.store, "link", {"state": link_state, "detail": detail, "since": iso()})

    def _message(self, topic: str, payload: bytes) -> None:
        if topic == protocol.command_topic(self.box_id):
            from edgebox.recorder.commands import run_command

            run_command(self.box, payload)
            return
        if topic != protocol.ack_topic(self.box_id):
            log.warning("ignored message on %s", topic)
            return
        try:
            ack = protocol.decode(payload)
        except protocol.ProtocolError as exc:
            log.warning("ignored malformed ack: %s", exc.message)
            return
        if ack.get("box") != self.box_id:
            log.warning("ignored ack addressed to box %r", ack.get("box"))
            return
        self.acks.put(ack)

    # -- the loop -----------------------------------------------------------
    def _run(self) -> None:
        while not self.stop_event.is_set():
            if not self.link.connected.is_set():
                if not self._guarded(self.seal_confirmed):
                    self.link.connected.wait(1)
                continue
            try:
                self.finisher.raise_failure()
                busy = (
                    self.seal_confirmed(waited=self.seal_wait_limit)
                    or self._send_custody()
                    or self._send_meta()
                    or self.replica.ship_if_due()
                    or self._send_next_recording()
                    or self.seal_confirmed()
                )
            except LinkLost:
                continue
            except EdgeboxError as exc:
                log.error("uplink: %s; retrying in %d s", exc.message, ERROR_PAUSE)
                self.stop_event.wait(ERROR_PAUSE)
                continue
            except Exception:  # noqa: BLE001 - keep draining after an unexpected fault
                log.exception("uplink failed; retrying in %d s", ERROR_PAUSE)
                self.stop_event.wait(ERROR_PAUSE)
                continue
            if not busy:
                self.stop_event.wait(1)

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish now, or raise LinkLost when the link is down (paho never queues for us)."""
        if self.link.publish(topic, payload) is None:
            raise LinkLost()

    def wait_ack(self, match, timeout: float, tid: str | None = None) -> dict | None:
        """The next ack that `match` accepts, or None after `timeout`; others are dropped.

        With `tid`, only answers about that transfer are read (see `Acks`)."""
        deadline = time.monotonic() + timeout
        while not self.stop_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not self.link.connected.is_set():
                raise LinkLost()
            try:
                ack = self.acks.get(tid, timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if match(ack):
                return ack
            log.info(
                "ignored stale or unrelated ack %s", {k: ack.get(k) for k in ("re", "tid", "id")}
            )
        raise LinkLost()

    def interleave_due(self) -> bool:
        """Whether a long transfer should pause between windows for the replica round (only
        the uplink thread runs rounds, not a transfer being finished)."""
        return threading.current_thread() is self._thread and self.replica.due()

    def interleave(self) -> None:
        """Run the replica round that is due (between two windows of a long transfer)."""
        self.replica.ship_if_due()

    def request(
        self, topic: str, message: dict, match, tid: str | None = None, tries: int | None = None
    ) -> dict | None:
        """Publish a JSON message and wait for its ack, resending after each timeout; with
        `tries`, None once that many sends went unanswered while the link was up (a link that
        drops raises `LinkLost` instead)."""
        sent = 0
        while True:
            self.publish(topic, protocol.encode(message))
            sent += 1
            ack = self.wait_ack(match, self.up.ack_timeout_seconds, tid)
            if ack is not None:
                return ack
            if tries is not None and sent >= tries:
                return None

    # -- custody and metadata -------------------------------------------------
    def _send_custody(self) -> bool:
        """Send custody entries not yet at central, with every checkpoint not yet sent.

        A checkpoint is usually signed after its head entry went upstream, so
        checkpoints have their own cursor.
        """
        sent = state.get(self.store, "custody_sent_seq", 0)
        signed = state.get(self.store, "checkpoint_sent_seq", 0)
        entries = self.store.query(
            "SELECT * FROM custody WHERE seq > ? ORDER BY seq LIMIT ?", (sent, CUSTODY_BATCH)
        )
        last = entries[-1]["seq"] if entries else sent
        checkpoints = self.store.query(
            "SELECT * FROM checkpoints WHERE seq > ? AND seq <= ? ORDER BY seq", (signed, last)
        )
        if not entries and not checkpoints:
            return False
        message_id = f"custody:{sent + 1}-{last}:cp{checkpoints[-1]['seq'] if checkpoints else 0}"
        message = {
            "id": message_id,
            "type": "custody",
            "box": self.box_id,
            "identity": self.identity,
            "entries": entries,
            "checkpoints": checkpoints,
        }
        ack = self.request(
            protocol.meta_topic(self.box_id),
            message,
            lambda a: a.get("re") == "meta" and a.get("id") == message_id,
        )
        if ack.get("status") == "gap" and isinstance(ack.get("next_seq"), int):
            state.put(self.store, "custody_sent_seq", max(0, ack["next_seq"] - 1))
            return True
        if ack.get("status") != "ok":
            raise EdgeboxError(f"central refused custody {message_id}: {ack.get('reason')}")
        state.put(self.store, "custody_sent_seq", last)
        if checkpoints:
            state.put(self.store, "checkpoint_sent_seq", checkpoints[-1]["seq"])
        return True

    def _send_meta(self) -> bool:
        rows = self.store.query(
            "SELECT * FROM outbox WHERE kind = 'meta' AND state = 'queued' ORDER BY priority, id "
            "LIMIT 50"
        )
        for row in rows:
            message_id = f"outbox:{row['id']}"
            message = {
                "id": message_id,
                "box": self.box_id,
                "identity": self.identity,
                **json.loads(row["payload"]),
            }
            ack = self.request(
                protocol.meta_topic(self.box_id),
                message,
                lambda a, m=message_id: a.get("re") == "meta" and a.get("id") == m,
            )
            with self.store.write() as db:
                db.execute(
                    "UPDATE outbox SET state = ?, attempts = attempts + 1 WHERE id = ?",
                    ["done" if ack.get("status") == "ok" else "rejected", row["id"]],
                )
        return bool(rows)

    # -- recordings -----------------------------------------------------------
    def _next_recording(self, *skip: str | None) -> dict | None:
        """The recording to send next, leaving out the ids in `skip`."""
        return self.store.one(
            "SELECT * FROM recordings WHERE sync_state IN ('pending', 'sending') "
            "AND id NOT IN (?, ?) "
            "ORDER BY legal_hold DESC, (incident IS NOT NULL) DESC, received_at, id LIMIT 1",
            tuple(x or "" for x in (*skip, None, None)[:2]),
        )

    def _send_next_recording(self) -> bool:
        """Stream the next recording, then hand its end to the finisher and go on.

        While the finisher waits for central's verdict on it, the next one streams.
        """
        finishing = self.finisher.recording_id
        rec = self._next_recording(finishing)
        if rec is None:  # nothing more to stream: let the last one finish, then go round
            self.finisher.wait(timeout=1)
            return finishing is not None
        from edgebox.sync.transfer import FileTransfer

        transfer = FileTransfer(self, rec)
        if not transfer.ready():
            return True
        if transfer.stream():
            self.finisher.take(transfer, rec["id"])
        return True

    def progress(self, recording_id: str, sent: int, size: int, force: bool = False) -> None:
        """Record transfer progress (at most every 2 s) for status and the dashboard."""
        now = time.monotonic()
        if force or now - self._progress_stamp > 2:
            self._progress_stamp = now
            state.put(
                self.store,
                "transfer",
                {"recording_id": recording_id, "sent": sent, "size": size, "ts": iso()},
            )

    def confirmed(self, rec: dict, ack: dict) -> None:
        """Central holds a complete, hash-checked copy: mark synced and log it (the seal
        follows in `seal_confirmed`)."""
        with self.store.write() as db:
            db.execute("UPDATE recordings SET sync_state = 'synced' WHERE id = ?", [rec["id"]])
            custody.append(
                db,
                "recording.synced",
                "central",
                rec["id"],
                {
                    "stored_sha256": ack["sha256"],
                    "size": ack["size"],
                    "tid": ack["tid"],
                },
            )

    def seal_confirmed(self, waited: float | None = None) -> bool:
        """Seal the oldest recording central confirmed that is still unsealed (with `waited`,
        only one confirmed at least that many seconds ago); False when there is none.

        The uplink seals when nothing is left to send (or the link is down): sealing
        rewrites the header and hashes the whole file again, CPU the drain needs more.
        The backlog was unsealed all the while it waited offline, so waiting for the drain
        to end adds little exposure; a box whose link never runs dry still seals each
        recording within `seal_wait_limit` seconds of central's confirmation. This also
        finishes seals a crash or a stop cut short. A recording whose seal fails is
        logged and left until the box restarts.
        """
        from edgebox.recordings import seal_recording

        sql = "SELECT id FROM recordings WHERE sync_state = 'synced' AND sealed = 0 "
        params: list = []
        if waited is not None:
            sql += (
                "AND EXISTS (SELECT 1 FROM custody WHERE subject = recordings.id "
                "AND event = 'recording.synced' AND ts <= ?) "
            )
            params.append(iso(utcnow() - dt.timedelta(seconds=waited)))
        rows = self.store.query(
            sql + "ORDER BY received_at, id LIMIT ?", (*params, len(self._seal_failed) + 1)
        )
        todo = [r["id"] for r in rows if r["id"] not in self._seal_failed]
        if not todo:
            return False
        try:
            seal_recording(self.box, todo[0], actor="box")
        except (EdgeboxError, OSError) as exc:
            self._seal_failed.add(todo[0])
            log.error("sealing recording %s failed: %s", todo[0], exc)
        return True

    def _guarded(self, step) -> bool:
        """`step()`, with an unexpected failure logged (and False) instead of raised."""
        try:
            return step()
        except Exception:  # noqa: BLE001 - the uplink thread must keep running
            log.exception("uplink: %s failed", step.__name__)
            return False

    def rejected(self, rec: dict, reason: str) -> None:
        """Central refused a recording: keep it, flag it, log it."""
        with self.store.write() as db:
            db.execute("UPDATE recordings SET sync_state = 'rejected' WHERE id = ?", [rec["id"]])
            custody.append(db, "recording.sync_rejected", "central", rec["id"], {"reason": reason})

    def damaged(self, rec: dict, problem: str) -> None:
        """A stored file fails its check: keep it, do not send it, flag and log it for IT."""
        log.error("recording %s is damaged and was not sent: %s", rec["id"], problem)
        with self.store.write() as db:
            db.execute("UPDATE recordings SET sync_state = 'damaged' WHERE id = ?", [rec["id"]])
            custody.append(db, "recording.damaged", "box", rec["id"], {"problem": problem})

    def read_chunk(self, fd: int, offset: int, size: int) -> bytes:
        """Read one segment from a vault file."""
        return os.pread(fd, min(self.up.chunk_size, size - offset), offset)

    def throttle(self, amount: int) -> None:
        """Honour the bandwidth cap."""
        self._bucket.take(amount, self.stop_event)
