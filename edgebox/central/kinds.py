"""What each kind of file transfer is at central: how its init is checked, what central already
holds of it, and where the complete file goes.

Recordings go to `boxes/<box>/recordings/` and the index; Litestream replica files go to
`replicas/<box>/incoming/<sha256>` and wait for the set that lists them
(`edgebox.central.replicas`). The transfer itself (segments by offset, fin, whole-file
hash) is the same for both (`edgebox.central.receiver`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from edgebox import vault
from edgebox.central.files import Transfer, recording_key, recording_lock
from edgebox.central.index import Index
from edgebox.central.replica_blobs import mirror_set
from edgebox.central.replicas import ReplicaStore
from edgebox.clock import iso
from edgebox.replication import fileset as replication_set
from edgebox.sync import protocol
from edgebox.sync.protocol import ProtocolError

MAX_FILE = 1 << 40
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Refused(ProtocolError):
    """A well-formed message central will not act on: it answers `rejected` with the reason."""


def check_init(box: str, tid: str, message: dict) -> None:
    """Reject an init whose common fields are missing, malformed or inconsistent."""
    try:
        size, chunk, sha, manifest = (message[k] for k in ("size", "chunk", "sha256", "manifest"))
        isinstance(message["signature"], str) or _raise("signature must be text")
    except KeyError as exc:
        raise ProtocolError(f"init without {exc.args[0]}") from None
    if message.get("box") != box or message.get("tid") != tid:
        raise ProtocolError("init names another box or transfer than its topic")
    if not isinstance(size, int) or not 0 <= size <= MAX_FILE:
        raise ProtocolError("init size must be a non-negative integer")
    if not isinstance(chunk, int) or not 1024 <= chunk <= 16 << 20:
        raise ProtocolError("init chunk must be 1 KiB to 16 MiB")
    if not isinstance(sha, str) or not _HEX64.match(sha):
        raise ProtocolError("init sha256 must be 64 lowercase hex digits")
    if (
        not isinstance(manifest, dict)
        or manifest.get("box_id") != box
        or manifest.get("stored_sha256") != sha
        or manifest.get("stored_size") != size
    ):
        raise ProtocolError("manifest does not describe this file")


def _raise(message: str):
    raise ProtocolError(message)


class RecordingFiles:
    """Vault files of recordings: signed manifest, indexed once per box and recording."""

    def __init__(self, root: Path, index: Index, blobs):
        self.root = Path(root)
        self.index = index
        self.blobs = blobs

    def check(self, box: str, tid: str, message: dict) -> None:
        """The recording id must be sound and match the transfer id."""
        rid = message.get("recording_id")
        if rid is None:
            raise ProtocolError("init without recording_id")
        if not isinstance(rid, str) or not _RID.match(rid):
            raise ProtocolError("init recording id does not match its transfer id")
        if tid != protocol.transfer_id(rid, message["sha256"]):
            raise ProtocolError("init recording id does not match its transfer id")

    def verdict(self, box: str, tid: str, message: dict) -> dict | None:
        """`complete` when central holds the recording, `rejected` when it holds other bytes."""
        held = self.index.one(
            "SELECT * FROM recordings WHERE box_id = ? AND recording_id = ?",
            (box, message["recording_id"]),
        )
        if held is None:
            return None
        if held["stored_sha256"] == message["sha256"]:
            if not self._in_store(box, held):
                return None
            return {"status": "complete", "sha256": held["stored_sha256"], "size": held["size"]}
        return {"status": "rejected", "reason": self._other_bytes(box, message)}

    def held(self, box: str, tid: str) -> dict | None:
        """Hash and size of the complete file of this transfer, if central holds it."""
        row = self.index.one(
            "SELECT recording_id, file, stored_sha256, size FROM recordings "
            "WHERE box_id = ? AND tid = ?",
            (box, tid),
        )
        if row is None or not self._in_store(box, row):
            return None
        return {"sha256": row["stored_sha256"], "size": row["size"]}

    def _in_store(self, box: str, row: dict) -> bool:
        """Whether the file an index row names is in the blob store; a stale row (the file
        gone) raises an alarm and is treated as not held, so the box's copy is taken again."""
        if self.blobs.exists(row["file"]):
            return True
        self.index.alarm(
            box,
            f"stale index row: recording {row['recording_id']} is indexed but "
            f"{row['file']} is missing from {self.blobs.url}; taking the box's copy again",
        )
        return False

    def store(self, box: str, tid: str, transfer: Transfer, init: dict) -> None:
        """Move the checked file into the box's recordings and index it; refused when central
        indexed this recording with other bytes meanwhile (its file is never replaced)."""
        key = recording_key(box, init["recording_id"])
        problems = vault.check_structure(transfer.data)  # the hash was checked by the caller
        with recording_lock(self.root, box, init["recording_id"]):
            self._refuse_other_bytes(box, init)
            if problems:
                self.index.alarm(box, f"recording {init['recording_id']}: {problems[0]}")
            transfer.hand_over(
                self.blobs,
                key,
                init,
                {"manifest": init["manifest"], "signature": init["signature"], "tid": tid},
            )
            self._index(box, tid, init, key)

    def _refuse_other_bytes(self, box: str, init: dict) -> None:
        held = self.index.one(
            "SELECT stored_sha256 FROM recordings WHERE box_id = ? AND recording_id = ?",
            (box, init["recording_id"]),
        )
        if held is not None and held["stored_sha256"] != init["sha256"]:
            raise Refused(self._other_bytes(box, init))

    def _other_bytes(self, box: str, message: dict) -> str:
        """Raise the alarm for a recording sent again with other bytes; the reason to answer."""
        self.index.alarm(box, f"recording {message['recording_id']} sent again with other bytes")
        return "central already holds this recording with other bytes"

    def record_stored(self, box: str, tid: str, init: dict) -> bool:
        """After a crash cut a completion short (the file moved into the store, not indexed):
        index it if the store holds this transfer's whole file, by size and hash."""
        key = recording_key(box, init["recording_id"])
        with recording_lock(self.root, box, init["recording_id"]):
            stat = self.blobs.head(key)
            if stat is None or (stat.size, stat.sha256) != (init["size"], init["sha256"]):
                return False
            self._index(box, tid, init, key)
        return True

    def _index(self, box: str, tid: str, init: dict, key: str) -> None:
        recording = init["manifest"]["recording"]
        with self.index.write() as db:
            db.execute(
                "INSERT OR IGNORE INTO recordings (box_id, recording_id, tid, evidence_sha256, "
                "stored_sha256, size, file, manifest, signature, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    box,
                    init["recording_id"],
                    tid,
                    recording["evidence_sha256"],
                    init["sha256"],
                    init["size"],
                    key,
                    json.dumps(init["manifest"]),
                    init["signature"],
                    iso(),
                ],
            )


class ReplicaFiles:
    """Files of a box's Litestream replica: named by content until a set places them.

    They are gathered and checked in the work folder (`edgebox.central.replicas`); a set
    that became current there is copied to the blob store too when that is another place
    (`edgebox.central.replica_blobs`), before the box hears `ok`."""

    def __init__(self, root: Path, index: Index, blobs):
        self.root = Path(root)
        self.index = index
        self.blobs = blobs

    def check(self, box: str, tid: str, message: dict) -> None:
        """The transfer id must name the content; the path must be a replica file's."""
        if tid != protocol.replica_transfer_id(message["sha256"]):
            raise ProtocolError("replica transfer id does not name the file's sha256")
        if message.get("kind") != "replica":
            raise ProtocolError("replica transfer without kind 'replica'")
        try:
            path = replication_set.check_path(message.get("path"))
        except replication_set.ReplicaPathError as exc:
            self.index.alarm(box, f"replica file refused: {exc.message}")
            raise Refused(exc.message) from None
        if message["manifest"].get("replica_path") != path:
            raise ProtocolError("manifest does not describe this file")

    def verdict(self, box: str, tid: str, message: dict) -> dict | None:
        """`complete` when central already holds a file with this content."""
        size = ReplicaStore(self.root, box).held(message["sha256"], message["size"])
        if size is None:
            return None
        return {"status": "complete", "sha256": message["sha256"], "size": size}

    def held(self, box: str, tid: str) -> dict | None:
        """Hash and size of the file this transfer names, if central holds it."""
        sha = tid.removeprefix(protocol.REPLICA_TRANSFER)
        size = ReplicaStore(self.root, box).held(sha)
        return None if size is None else {"sha256": sha, "size": size}

    def store(self, box: str, tid: str, transfer: Transfer, init: dict) -> None:
        """Keep the checked file under its hash until its set comes."""
        incoming = ReplicaStore(self.root, box).incoming(init["sha256"])
        transfer.hand_over(_folder_of(self.root), str(incoming.relative_to(self.root)), init)

    def record_stored(self, box: str, tid: str, init: dict) -> bool:
        """After a crash cut a completion short: whether the file reached its place (a
        replica file needs nothing more; it is found by its content)."""
        return self.held(box, tid) is not None

    def commit(self, box: str, message: dict, public) -> dict:
        """Apply a `replica.set` message: the answer's status and fields."""
        body, signature = message.get("set"), message.get("signature")
        if not isinstance(body, dict) or not isinstance(signature, str):
            raise ProtocolError("replica set without set or signature")
        if body.get("box_id") != box:
            raise ProtocolError("replica set names another box")
        if message.get("id") != replication_set.set_id(body):
            raise ProtocolError("replica set id does not match its content")
        files = body.get("files")
        if not isinstance(files, dict) or not files:
            raise ProtocolError("replica set without files")
        try:
            for path, entry in files.items():
                replication_set.check_path(path)
                _check_entry(path, entry)
        except replication_set.ReplicaPathError as exc:
            self.index.alarm(box, f"replica set refused: {exc.message}")
            raise Refused(exc.message) from None
        if not protocol.check_signature(body, signature, public):
            raise Refused("replica set signature invalid")
        replicas = ReplicaStore(self.root, box)
        outcome = replicas.commit(message["id"], files)
        if outcome["status"] == "ok":
            mirror_set(self.blobs, replicas)  # raises StoreError (no answer) if it cannot
        if outcome.get("alarm"):
            self.index.alarm(box, outcome.pop("alarm"))
        if outcome["status"] == "rejected":
            self.index.reject(protocol.meta_topic(box), f"replica set: {outcome['reason']}")
        return outcome


def _check_entry(path: str, entry) -> None:
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("size"), int)
        or not 0 <= entry["size"] <= MAX_FILE
        or not isinstance(entry.get("sha256"), str)
        or not _HEX64.match(entry["sha256"])
    ):
        raise ProtocolError(f"replica set entry for {path} needs a size and a sha256")


def _folder_of(root: Path):
    from edgebox.central.blobs.local import LocalBlobs

    return LocalBlobs(root)


def kind_of(tid: str, kinds: dict):
    """The kind a transfer id belongs to."""
    return kinds["replica" if protocol.is_replica_transfer(tid) else "recording"]
