"""The custody log: an append-only hash chain of every event, with signed checkpoints.

Each entry's hash covers its own fields and the previous entry's hash, so
changing, removing or reordering any entry breaks every later link. Checkpoints
sign (box id, sequence number, head hash) with the box's Ed25519 identity; once
a checkpoint has gone upstream the history up to it cannot be rewritten unseen.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgebox.clock import iso
from edgebox.db import Store
from edgebox.keys import key_id
from edgebox.vault import canonical

GENESIS = "0" * 64


def entry_hash(entry: dict) -> str:
    """The chain hash of one entry (its fields plus the previous hash)."""
    fields = {
        k: entry[k] for k in ("seq", "ts", "event", "actor", "subject", "details", "prev_hash")
    }
    return hashlib.sha256(canonical(fields)).hexdigest()


def append(
    db,
    event: str,
    actor: str,
    subject: str | None = None,
    details: dict | None = None,
    ts: str | None = None,
) -> dict:
    """Append one event inside the caller's write transaction (`db` from `Store.write()`)."""
    last = db.execute("SELECT seq, hash FROM custody ORDER BY seq DESC LIMIT 1").fetchone()
    entry = {
        "seq": (last[0] + 1) if last else 1,
        "ts": ts or iso(),
        "event": event,
        "actor": actor,
        "subject": subject,
        "details": canonical(details or {}).decode(),
        "prev_hash": last[1] if last else GENESIS,
    }
    entry["hash"] = entry_hash(entry)
    db["custody"].insert(entry)
    return entry


def record(
    store: Store, event: str, actor: str, subject: str | None = None, details: dict | None = None
) -> dict:
    """Append one event in its own transaction."""
    with store.write() as db:
        return append(db, event, actor, subject, details)


def checkpoint_message(box_id: str, seq: int, head_hash: str, ts: str) -> bytes:
    """The bytes a checkpoint signature covers."""
    return canonical({"box_id": box_id, "seq": seq, "head_hash": head_hash, "ts": ts})


def make_checkpoint(store: Store, box_id: str, identity: Ed25519PrivateKey) -> dict | None:
    """Sign the current head of the chain; None when nothing new happened since the last one."""
    with store.write() as db:
        head = db.execute("SELECT seq, hash FROM custody ORDER BY seq DESC LIMIT 1").fetchone()
        if head is None:
            return None
        if db.execute("SELECT 1 FROM checkpoints WHERE seq = ?", [head[0]]).fetchone():
            return None
        ts = iso()
        signature = identity.sign(checkpoint_message(box_id, head[0], head[1], ts))
        row = {
            "seq": head[0],
            "ts": ts,
            "head_hash": head[1],
            "key_id": key_id(identity.public_key()),
            "signature": base64.b64encode(signature).decode(),
        }
        db["checkpoints"].insert(row)
        return row


@dataclass
class ChainReport:
    """The outcome of verifying the chain and its checkpoints."""

    entries: int
    checkpoints: int
    head_hash: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def verify_chain(store: Store, box_id: str, public: Ed25519PublicKey) -> ChainReport:
    """Walk the whole chain and every checkpoint, reporting each broken link precisely."""
    problems: list[str] = []
    prev = GENESIS
    expected_seq = 1
    hashes: dict[int, str] = {}
    count = 0
    for row in store.read.conn.execute("SELECT * FROM custody ORDER BY seq"):
        entry = dict(row)
        count += 1
        if entry["seq"] != expected_seq:
            problems.append(f"custody: entries {expected_seq}..{entry['seq'] - 1} are missing")
        if entry["prev_hash"] != prev:
            problems.append(
                f"custody entry {entry['seq']}: prev_hash does not match entry before it"
            )
        if entry_hash(entry) != entry["hash"]:
            problems.append(f"custody entry {entry['seq']} ({entry['event']}): content altered")
        try:
            json.loads(entry["details"])
        except ValueError:
            problems.append(f"custody entry {entry['seq']}: details are not JSON")
        hashes[entry["seq"]] = entry["hash"]
        prev = entry["hash"]
        expected_seq = entry["seq"] + 1
    checkpoints = store.query("SELECT * FROM checkpoints ORDER BY seq")
    for cp in checkpoints:
        message = checkpoint_message(box_id, cp["seq"], cp["head_hash"], cp["ts"])
        try:
            public.verify(base64.b64decode(cp["signature"]), message)
        except (InvalidSignature, ValueError):
            problems.append(f"checkpoint at entry {cp['seq']}: signature invalid")
        if hashes.get(cp["seq"]) != cp["head_hash"]:
            problems.append(
                f"checkpoint at entry {cp['seq']}: chain head differs from the signed one "
                "(history rewritten)"
            )
    return ChainReport(
        entries=count, checkpoints=len(checkpoints), head_hash=prev, problems=problems
    )
