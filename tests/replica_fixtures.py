"""Helpers for the replica-upstream tests: a real Litestream with short intervals, central's copy
restored for a look, and a box's voice that speaks the sync protocol straight to a Receiver."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from edgebox.central.receiver import Receiver
from edgebox.central.replicas import ReplicaCopyError, ReplicaStore
from edgebox.config import Config
from edgebox.keys import Keyring
from edgebox.replication import config as lsconf
from edgebox.replication.fileset import set_id
from edgebox.sync import protocol

# Litestream 0.5 settings that make compaction and retention happen within seconds.
CHURN = """\
l0-retention: 2s
l0-retention-check-interval: 1s
levels:
  - interval: 2s
  - interval: 4s
snapshot:
  interval: 6s
  retention: 8s
"""
# One early snapshot, then level 0, 1 and 2 files after it (nothing removed).
LAYERED = """\
l0-retention: 1h
levels:
  - interval: 2s
  - interval: 5s
"""


@contextlib.contextmanager
def litestream(config: Config, settings: str):
    """`litestream replicate` for the box's database with extra top-level settings."""
    path = config.data_dir / "test-litestream.yml"
    path.write_text(settings + lsconf.render(config))
    with open(config.data_dir / "test-litestream.log", "ab") as log:
        proc = subprocess.Popen(
            [str(lsconf.litestream_binary(config)), "replicate", "-config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(15)


def restore_rows(config: Config, source: Path, probe: Path) -> dict | None:
    """Recording id -> row of the database `litestream restore` rebuilds from `source`."""
    probe.unlink(missing_ok=True)
    done = subprocess.run(
        [str(lsconf.litestream_binary(config)), "restore", "-o", str(probe), source.as_uri()],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return None
    conn = sqlite3.connect(probe)
    conn.row_factory = sqlite3.Row
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {row["id"]: dict(row) for row in conn.execute("SELECT * FROM recordings")}
    finally:
        conn.close()


def central_rows(config: Config, store: Path, box_id: str, scratch: Path) -> dict | None:
    """What central's current copy of the box's replica restores to (None if it holds none)."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        ReplicaStore(store, box_id).export(scratch / "copy")
    except ReplicaCopyError:
        return None
    return restore_rows(config, scratch / "copy", scratch / "probe.db")


class BoxVoice:
    """A box's messages, signed with its real identity key, handed straight to a Receiver."""

    def __init__(self, store: Path, config: Config, chunk: int = 4096):
        self.box_id = config.box.box_id
        self.keys = Keyring(config.data_dir / "keys")
        raw = self.keys.identity_public().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.identity = base64.b64encode(raw).decode()
        self.chunk = chunk
        self.acks: list[dict] = []
        self.receiver = Receiver(
            store, lambda topic, payload: self.acks.append(json.loads(payload))
        )

    def say(self, topic: str, payload: bytes) -> dict | None:
        """Hand one message to central; its answer (if it gave one)."""
        before = len(self.acks)
        self.receiver.handle(topic, payload)
        return self.acks[-1] if len(self.acks) > before else None

    def init(self, path: str, data: bytes) -> tuple[str, dict]:
        """Init a replica file transfer claiming `path`; (tid, answer)."""
        sha = protocol.sha256_hex(data)
        tid = protocol.replica_transfer_id(sha)
        manifest = {
            "box_id": self.box_id,
            "replica_path": path,
            "stored_sha256": sha,
            "stored_size": len(data),
        }
        message = {
            "tid": tid,
            "box": self.box_id,
            "kind": "replica",
            "path": path,
            "size": len(data),
            "sha256": sha,
            "chunk": self.chunk,
            "identity": self.identity,
            "manifest": manifest,
            "signature": protocol.sign(manifest, self.keys.identity()),
        }
        return tid, self.say(protocol.init_topic(self.box_id, tid), protocol.encode(message))

    def segment(self, tid: str, offset: int, data: bytes) -> dict:
        """One segment, addressed by the hash of exactly these bytes."""
        topic = protocol.segment_topic(self.box_id, tid, offset, protocol.sha256_hex(data))
        return self.say(topic, data)

    def fin(self, tid: str, data: bytes) -> dict:
        """The end of a transfer of `data`."""
        message = {
            "tid": tid,
            "box": self.box_id,
            "size": len(data),
            "sha256": protocol.sha256_hex(data),
        }
        return self.say(protocol.fin_topic(self.box_id, tid), protocol.encode(message))

    def send_file(self, path: str, data: bytes) -> dict:
        """A whole replica file: init, every segment, fin; central's last answer."""
        tid, answer = self.init(path, data)
        if answer["status"] != "ok":
            return answer
        for offset in protocol.offsets(len(data), self.chunk):
            assert self.segment(tid, offset, data[offset : offset + self.chunk])["status"] == "ok"
        return self.fin(tid, data)

    def commit(self, files: dict, txid: int) -> dict:
        """Offer `files` ({path: {size, sha256}}) as the box's replica set."""
        body = {"box_id": self.box_id, "txid": f"{txid:016x}", "files": files}
        message = {
            "id": set_id(body),
            "type": "replica.set",
            "box": self.box_id,
            "identity": self.identity,
            "set": body,
            "signature": protocol.sign(body, self.keys.identity()),
        }
        return self.say(protocol.meta_topic(self.box_id), protocol.encode(message))

    def close(self) -> None:
        """Close central's index."""
        self.receiver.index.close()
