"""Files to central: init, segments by offset in a bounded window, fin, end-to-end ack.

`SegmentedTransfer` is the protocol; `FileTransfer` sends a recording's vault file
(`edgebox.sync.replica` sends the Litestream replica's files the same way).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from edgebox import vault
from edgebox.errors import EdgeboxError
from edgebox.sync import protocol

log = logging.getLogger(__name__)
# Unanswered fins (each after the ack timeout, the link up) before the box starts the transfer
# again with an init: central answers an init on another path, and settles what it can there.
FIN_TRIES = 3
MANIFEST_FIELDS = (
    "id",
    "device_id",
    "serial",
    "filename",
    "user_id",
    "started_at",
    "stopped_at",
    "trigger_on",
    "trigger_off",
    "pre_event_seconds",
    "gps",
    "category",
    "warned",
    "exemption",
    "camera_sha256",
    "evidence_sha256",
    "size",
    "received_at",
    "incident",
    "legal_hold",
)


def recording_manifest(store, box_id: str, rec: dict) -> dict:
    """The facts about a recording the box signs: its row's fields, the camera's metadata,
    the vault file's stored hash and size, and its `recording.ingested` custody entry (sent
    to central with the file, and put in evidence packages the box writes)."""
    ingested = store.one(
        "SELECT seq, hash FROM custody WHERE event = 'recording.ingested' AND subject = ?",
        (rec["id"],),
    )
    return {
        "box_id": box_id,
        "recording": {k: rec[k] for k in MANIFEST_FIELDS},
        "camera_metadata": json.loads(rec["metadata"]),
        "stored_sha256": rec["stored_sha256"],
        "stored_size": rec["stored_size"],
        "custody": ingested,
    }


class SegmentedTransfer:
    """One file to central: init, segments by offset in a bounded window, fin, and central's
    end-to-end verdict. Subclasses say what the file is (`init_message`) and what central's
    answers mean for it (`completed`, `refused`)."""

    def __init__(self, uplink, path: Path, size: int, sha256: str, tid: str):
        self.uplink = uplink
        self.box_id = uplink.box_id
        self.path = Path(path)
        self.size = size
        self.sha256 = sha256
        self.tid = tid
        self.chunk = uplink.up.chunk_size
        self._init: dict | None = None
        self._fd: int | None = None

    def _match(self, kind: str, offset: int | None = None):
        def match(ack: dict) -> bool:
            return (
                ack.get("re") == kind
                and ack.get("tid") == self.tid
                and (offset is None or ack.get("offset") == offset)
            )

        return match

    def init_message(self) -> dict:
        """The init central checks the file against (subclasses add what the file is)."""
        return {
            "tid": self.tid,
            "box": self.box_id,
            "size": self.size,
            "sha256": self.sha256,
            "chunk": self.chunk,
            "identity": self.uplink.identity,
        }

    def signed(self, manifest: dict) -> dict:
        """`manifest` with the box's signature over it, for the init."""
        identity = self.uplink.box.keys.identity()
        return {"manifest": manifest, "signature": protocol.sign(manifest, identity)}

    def completed(self, ack: dict) -> None:
        """Central holds the whole file (hash and size already checked against ours)."""

    def refused(self, reason: str) -> None:
        """Central rejected the file."""

    def advanced(self, sent: int) -> None:
        """Segments up to about `sent` bytes are confirmed (for progress reports)."""

    def resending_all(self) -> bool:
        """Central found the whole file's hash wrong; False stops the transfer (the file
        turned out damaged on the box)."""
        return True

    def send(self) -> None:
        """Transfer the file; returns when central confirmed or rejected it, raises LinkLost."""
        if self.stream():
            self.finish()

    def stream(self) -> bool:
        """Send the init and every segment central lacks, in this thread.

        True when the fin remains to be sent (`finish`, which may run in another thread);
        False when central already answered for the whole file. The file stays open until
        then, so a replica file that Litestream deletes meanwhile is still read whole.
        """
        self._init = self.init_message()
        self._fd = os.open(self.path, os.O_RDONLY)
        self.uplink.acks.open(self.tid)
        try:
            while True:
                try:
                    ack = self._request("init")
                    if self._settled(ack):
                        self._close()
                        return False
                    self._send_segments(self._fd, *self._wanted(ack))
                    return True
                except _Restart:
                    log.info("transfer %s starts again with an init", self.tid)
        except BaseException:
            self._close()
            raise

    def finish(self) -> None:
        """Send the fin and act on central's answers (resend what it lacks, start again if
        it lost the transfer or stays silent on the fin) until its verdict; then close the
        file."""
        try:
            opening = "fin"
            while True:
                try:
                    ack = self._request(opening)
                    while not self._settled(ack):
                        self._send_segments(self._fd, *self._wanted(ack))
                        ack = self._request("fin")
                    return
                except _Restart:
                    log.info("transfer %s starts again with an init", self.tid)
                    opening = "init"
        finally:
            self._close()

    def _close(self) -> None:
        self.uplink.acks.close(self.tid)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _request(self, kind: str) -> dict:
        """Send the init or the fin; central's answer to it."""
        if kind == "init":
            topic, message = protocol.init_topic(self.box_id, self.tid), self._init
        else:
            topic = protocol.fin_topic(self.box_id, self.tid)
            message = {"tid": self.tid, "box": self.box_id, "size": self.size}
            message["sha256"] = self.sha256
        tries = FIN_TRIES if kind == "fin" else None
        ack = self.uplink.request(topic, message, self._match(kind), self.tid, tries)
        if ack is None:  # central alive (the link is up) but silent on this fin
            log.warning(
                "central did not answer %d fins of transfer %s; starting it again with an init",
                FIN_TRIES,
                self.tid,
            )
            raise _Restart()
        return ack

    def _settled(self, ack: dict) -> bool:
        """Whether central's answer ends the transfer (raises _Restart when central lost it)."""
        status = ack.get("status")
        if status == "unknown":
            raise _Restart()
        if status == "complete":
            self._finish(ack)
            return True
        if status == "rejected":
            self.refused(str(ack.get("reason", "no reason given")))
            return True
        return status == "resend_all" and not self.resending_all()

    @staticmethod
    def _wanted(ack: dict) -> tuple[set, list | None]:
        """(offsets central holds, offsets it asks for or None for all) from its answer."""
        have = set(ack.get("have") or []) if ack.get("status") != "resend_all" else set()
        return have, ack.get("offsets") if ack.get("status") == "resend" else None

    def _finish(self, ack: dict) -> None:
        if ack.get("sha256") != self.sha256 or ack.get("size") != self.size:
            raise EdgeboxError(
                f"central's confirmation for {self.tid} names other bytes "
                f"({ack.get('sha256')}, {ack.get('size')}); not trusting it"
            )
        self.completed(ack)

    def _send_segments(self, fd: int, have: set, wanted: list | None) -> None:
        todo = [o for o in (wanted or protocol.offsets(self.size, self.chunk)) if o not in have]
        todo.reverse()  # pop() from the end sends in ascending order
        inflight: dict[int, float] = {}
        window = self.uplink.up.window
        timeout = self.uplink.up.ack_timeout_seconds
        sent = self.size - len(todo) * self.chunk
        while todo or inflight:
            while todo and len(inflight) < window and not self.uplink.interleave_due():
                offset = todo.pop()
                data = self.uplink.read_chunk(fd, offset, self.size)
                self.uplink.throttle(len(data))
                digest = hashlib.sha256(data).hexdigest()
                self.uplink.publish(
                    protocol.segment_topic(self.box_id, self.tid, offset, digest), data
                )
                inflight[offset] = time.monotonic()
            if not inflight:  # the window is drained: let the replica round go in between
                self.uplink.interleave()
                continue
            ack = self.uplink.wait_ack(self._match("seg"), timeout, self.tid)
            if ack is None:  # nothing came back in time: resend what is outstanding
                todo.extend(sorted(inflight, reverse=True))
                inflight.clear()
                continue
            offset = ack.get("offset")
            if offset not in inflight:
                continue
            del inflight[offset]
            if ack.get("status") == "unknown":
                raise _Restart()
            if ack.get("status") == "ok":
                sent += self.chunk
                self.advanced(min(sent, self.size))
            else:
                todo.append(offset)


class FileTransfer(SegmentedTransfer):
    """Sends one recording's vault file and waits for central's verdict."""

    def __init__(self, uplink, rec: dict):
        super().__init__(
            uplink,
            uplink.box.uploads.vault_path(rec["id"]),
            rec["stored_size"],
            rec["stored_sha256"],
            protocol.transfer_id(rec["id"], rec["stored_sha256"]),
        )
        self.rec = rec

    def manifest(self) -> dict:
        """The signed facts central checks the file against."""
        return recording_manifest(self.uplink.store, self.box_id, self.rec)

    def init_message(self) -> dict:
        """The recording's init: its id, file name and signed manifest."""
        return {
            **super().init_message(),
            "recording_id": self.rec["id"],
            "name": self.path.name,
            **self.signed(self.manifest()),
        }

    def ready(self) -> bool:
        """Check the file's header and size and mark the recording as sending; False when it
        is damaged (then it is flagged and not sent).

        The stored-bytes hash is not computed here: central hashes its copy at the fin
        against the hash recorded at ingest, and a mismatch makes the box check its own
        file (`resending_all`), so bit rot still ends with the recording flagged damaged
        and never confirmed, without a whole-file pass before every healthy send.
        """
        problems = vault.check_structure(self.path)
        if problems:  # never ship a file whose header or size is wrong
            self.uplink.damaged(self.rec, problems[0])
            return False
        with self.uplink.store.write() as db:
            db.execute(
                "UPDATE recordings SET sync_state = 'sending' WHERE id = ? "
                "AND sync_state = 'pending'",
                [self.rec["id"]],
            )
        return True

    def resending_all(self) -> bool:
        """Central's copy hashed wrong: send it all again, unless the file on the box is what
        changed (then flag it damaged and stop)."""
        problems = vault.check_structure(self.path, self.sha256)
        if problems:
            self.uplink.damaged(self.rec, problems[0])
            return False
        return True

    def completed(self, ack: dict) -> None:
        """Mark synced (see Uplink.confirmed; the seal follows when the link is idle)."""
        self.uplink.progress(self.rec["id"], self.size, self.size, force=True)
        self.uplink.confirmed(self.rec, ack)

    def refused(self, reason: str) -> None:
        """Keep the recording, flagged as rejected."""
        self.uplink.rejected(self.rec, reason)

    def advanced(self, sent: int) -> None:
        """Report progress for status and the dashboard."""
        self.uplink.progress(self.rec["id"], sent, self.size)


class _Restart(Exception):
    """Central no longer knows the transfer: send init again."""
