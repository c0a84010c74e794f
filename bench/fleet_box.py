"""One simulated box of the fleet: its own Ed25519 identity, custody chain and real vault files,
and the sync protocol's messages built from them (docs/sync-protocol.md).

The vault files are real (`edgebox.vault.Writer`: AES-256-GCM segments, the data key wrapped
to central's X25519 key with HPKE); manifests and checkpoints are signed with the box's
identity like a real box's; custody entries are hashed with `edgebox.custody.entry_hash`.
What is left out is the box process itself (web, ingest, SQLite, scheduler): the simulator
speaks to central exactly as a box's uplink does, from memory.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from edgebox import custody
from edgebox.clock import iso
from edgebox.keys import key_id, wrap_key
from edgebox.sync import protocol
from edgebox.vault import Writer, canonical, new_header


@dataclass
class SimRecording:
    """A finished vault file and what its init says about it."""

    id: str
    path: Path
    size: int
    sha256: str
    evidence_sha256: str
    manifest: dict
    signature: str

    @property
    def tid(self) -> str:
        """Its transfer id."""
        return protocol.transfer_id(self.id, self.sha256)


@dataclass
class SimBox:
    """A box's identity, custody chain, recordings and (over TLS) its client certificate."""

    box_id: str
    folder: Path
    identity: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    certificate: tuple[Path, Path] | None = None  # (cert, key), CN = box id
    entries: list[dict] = field(default_factory=list)
    recordings: list[SimRecording] = field(default_factory=list)

    @property
    def identity_b64(self) -> str:
        """The public identity key as central pins it."""
        raw = self.identity.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()

    def record(self, event: str, subject: str | None = None, details: dict | None = None) -> dict:
        """Append a custody entry."""
        last = self.entries[-1] if self.entries else None
        entry = {
            "seq": last["seq"] + 1 if last else 1,
            "ts": iso(),
            "event": event,
            "actor": "fleet-sim",
            "subject": subject,
            "details": canonical(details or {}).decode(),
            "prev_hash": last["hash"] if last else custody.GENESIS,
        }
        entry["hash"] = custody.entry_hash(entry)
        self.entries.append(entry)
        return entry

    def make_recording(self, size: int, central: X25519PublicKey) -> SimRecording:
        """Encrypt `size` random bytes into a real vault file and log its ingest."""
        rid = f"r{len(self.recordings) + 1:04d}-{os.urandom(3).hex()}"
        plaintext = os.urandom(size)
        data_key = os.urandom(32)
        stanza = {
            "recipient": f"central:{key_id(central)}",
            "body": base64.b64encode(wrap_key(data_key, central, rid.encode())).decode(),
        }
        header = new_header(
            recording_id=rid,
            device_id=f"{self.box_id}-cam",
            plaintext_size=size,
            data_key=data_key,
            stanzas=[stanza],
            created_at=iso(),
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        writer = Writer.create(self.folder / f"{rid}.part", header, data_key)
        writer.write(plaintext)
        summary = writer.finish(self.folder / f"{rid}.ebv")
        evidence = hashlib.sha256(plaintext).hexdigest()
        entry = self.record("recording.ingested", rid, {"evidence_sha256": evidence})
        manifest = {
            "box_id": self.box_id,
            "recording": {
                "id": rid,
                "device_id": f"{self.box_id}-cam",
                "evidence_sha256": evidence,
                "size": size,
            },
            "camera_metadata": {},
            "stored_sha256": summary.stored_sha256,
            "stored_size": summary.stored_size,
            "custody": {"seq": entry["seq"], "hash": entry["hash"]},
        }
        rec = SimRecording(
            rid,
            self.folder / f"{rid}.ebv",
            summary.stored_size,
            summary.stored_sha256,
            evidence,
            manifest,
            protocol.sign(manifest, self.identity),
        )
        self.recordings.append(rec)
        return rec

    # -- messages -------------------------------------------------------------------------
    def custody_message(self, after: int = 0) -> tuple[str, bytes]:
        """The entries after `after`, with a checkpoint signed over the head."""
        head = self.entries[-1]
        ts = iso()
        signature = self.identity.sign(
            custody.checkpoint_message(self.box_id, head["seq"], head["hash"], ts)
        )
        checkpoint = {
            "seq": head["seq"],
            "ts": ts,
            "head_hash": head["hash"],
            "key_id": key_id(self.identity.public_key()),
            "signature": base64.b64encode(signature).decode(),
        }
        message = {
            "id": f"custody-{after + 1}-{head['seq']}",
            "type": "custody",
            "box": self.box_id,
            "identity": self.identity_b64,
            "entries": [e for e in self.entries if e["seq"] > after],
            "checkpoints": [checkpoint],
        }
        return protocol.meta_topic(self.box_id), protocol.encode(message)

    def init(self, rec: SimRecording, chunk: int) -> tuple[str, bytes]:
        """The recording's init."""
        message = {
            "tid": rec.tid,
            "box": self.box_id,
            "recording_id": rec.id,
            "name": rec.path.name,
            "size": rec.size,
            "sha256": rec.sha256,
            "chunk": chunk,
            "identity": self.identity_b64,
            "manifest": rec.manifest,
            "signature": rec.signature,
        }
        return protocol.init_topic(self.box_id, rec.tid), protocol.encode(message)

    def segment(self, rec: SimRecording, offset: int, chunk: int) -> tuple[str, bytes]:
        """The segment at `offset`, read from the vault file."""
        with open(rec.path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(chunk)
        topic = protocol.segment_topic(self.box_id, rec.tid, offset, protocol.sha256_hex(data))
        return topic, data

    def fin(self, rec: SimRecording) -> tuple[str, bytes]:
        """The recording's fin."""
        message = {"tid": rec.tid, "box": self.box_id, "size": rec.size, "sha256": rec.sha256}
        return protocol.fin_topic(self.box_id, rec.tid), protocol.encode(message)
