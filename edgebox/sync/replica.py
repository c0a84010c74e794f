"""The Litestream replica to central: new files through the file channel, then the set they form.

Every `replication.ship_interval_seconds` the uplink runs one round (between two
recordings, or between two windows of a long recording, so neither starves the
other):

1. read the replica folder as a set (`replication_set.scan`) and check that
   Litestream could restore from it; if Litestream was compacting meanwhile, read
   it again;
2. send each file central does not hold yet, as a `replica.<sha256>` transfer
   (init, segments, fin: the same machinery and checks as recordings);
3. send the set itself (`meta`, type `replica.set`, signed). Central makes it its
   current copy only once it holds every file of it, hash-checked; it answers
   `missing` with the paths it still lacks, which are sent again.

Only after central's `ok` does the box remember the set as central's.
"""

from __future__ import annotations

import logging
import time

from edgebox.clock import iso
from edgebox.errors import EdgeboxError
from edgebox.replication import config as lsconf
from edgebox.replication import fileset as replication_set
from edgebox.replication.config import MARKER_NAME
from edgebox.sync import protocol, state
from edgebox.sync.transfer import SegmentedTransfer

log = logging.getLogger(__name__)
STATE_KEY = "replica"
FILES_KEY = "replica_files"
SCAN_ATTEMPTS = 3
COMMIT_ATTEMPTS = 3


class ReplicaRefused(EdgeboxError):
    """Central refused a replica file or set; the round ends and the next one tries again."""

    status = 409


class ReplicaFileTransfer(SegmentedTransfer):
    """One replica file (named by its content) to central."""

    def __init__(self, uplink, folder, path: str, entry: dict):
        super().__init__(
            uplink,
            folder / path,
            entry["size"],
            entry["sha256"],
            protocol.replica_transfer_id(entry["sha256"]),
        )
        self.replica_path = path

    def init_message(self) -> dict:
        """The init: the file's place in the replica, signed with its hash and size."""
        manifest = {
            "box_id": self.box_id,
            "replica_path": self.replica_path,
            "stored_sha256": self.sha256,
            "stored_size": self.size,
        }
        return {
            **super().init_message(),
            "kind": "replica",
            "path": self.replica_path,
            **self.signed(manifest),
        }

    def refused(self, reason: str) -> None:
        """End the round: the set cannot be complete at central."""
        raise ReplicaRefused(f"central refused replica file {self.replica_path}: {reason}")


class ReplicaShipper:
    """Ships the box's Litestream replica to central, one round per interval."""

    def __init__(self, uplink):
        self.uplink = uplink
        config = uplink.box.config
        self.interval = config.replication.ship_interval_seconds
        self.folder = None
        if self.interval and not config.replication.s3_url:
            try:
                self.folder = lsconf.replica_dir(config)
            except lsconf.ReplicationError as exc:  # the box still syncs everything else
                log.error("replica not shipped: %s", exc.message)
        self._next = 0.0
        self._running = False

    def due(self) -> bool:
        """Whether a round should run now."""
        return self.folder is not None and not self._running and time.monotonic() >= self._next

    def ship_if_due(self) -> bool:
        """Run a round when one is due; True when it sent anything."""
        if not self.due():
            return False
        self._running = True
        self._next = time.monotonic() + self.interval
        try:
            return self._round()
        except ReplicaRefused as exc:
            log.error("replica: %s", exc.message)
            self._note(last_error=exc.message)
            return False
        finally:
            self._running = False

    def _round(self) -> bool:
        committed = state.get(self.uplink.store, FILES_KEY, {})
        for _ in range(SCAN_ATTEMPTS):
            try:
                files = replication_set.scan(self.folder, committed)
            except replication_set.ReplicaChanged:
                continue
            if files == committed or not files:
                return False
            verdict = replication_set.plan(files)
            if not verdict["restorable"]:
                continue  # most likely read mid-compaction; read it again
            try:
                return self._ship(files, committed, verdict["txid"])
            except FileNotFoundError:
                continue  # a new file went away before it was sent: read the folder again
        self._note(last_error="the replica folder did not settle into a restorable set")
        return False

    def _ship(self, files: dict, committed: dict, txid: int) -> bool:
        todo = sorted(p for p in files if committed.get(p) != files[p])
        for _ in range(COMMIT_ATTEMPTS):
            for path in _marker_first(todo):
                ReplicaFileTransfer(self.uplink, self.folder, path, files[path]).send()
            ack = self._commit(files, txid)
            if ack.get("status") == "ok":
                state.put(self.uplink.store, FILES_KEY, files)
                self._note(
                    set=ack.get("set"),
                    txid=f"{txid:016x}",
                    files=len(files),
                    bytes=replication_set.total_bytes(files),
                    committed_at=iso(),
                    last_error=None,
                )
                return True
            if ack.get("status") != "missing":
                raise ReplicaRefused(f"central refused the replica set: {ack.get('reason')}")
            todo = sorted(p for p in ack.get("paths") or [] if p in files)
        raise ReplicaRefused("central still misses replica files after they were sent again")

    def _commit(self, files: dict, txid: int) -> dict:
        body = {"box_id": self.uplink.box_id, "txid": f"{txid:016x}", "files": files}
        message_id = replication_set.set_id(body)
        message = {
            "id": message_id,
            "type": "replica.set",
            "box": self.uplink.box_id,
            "identity": self.uplink.identity,
            "set": body,
            "signature": protocol.sign(body, self.uplink.box.keys.identity()),
        }
        return self.uplink.request(
            protocol.meta_topic(self.uplink.box_id),
            message,
            lambda a: a.get("re") == "meta" and a.get("id") == message_id,
        )

    def _note(self, **values) -> None:
        previous = state.get(self.uplink.store, STATE_KEY, {})
        state.put(self.uplink.store, STATE_KEY, {**previous, **values, "last_round": iso()})


def _marker_first(paths: list[str]) -> list[str]:
    return sorted(paths, key=lambda p: (p != MARKER_NAME, p))
