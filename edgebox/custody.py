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
from edgebox.errors import CustodyError
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
    """Sign the current head of the chain; None when nothing new happened since the last one.

    The entries since the last checkpoint are walked first (in the same transaction): a
    chain that is broken there is refused with a CustodyError rather than signed, so a
    signature never vouches for a damaged history.
    """
    with store.write() as db:
        head = db.execute("SELECT seq, hash FROM custody ORDER BY seq DESC LIMIT 1").fetchone()
        if head is None:
            return None
        if db.execute("SELECT 1 FROM checkpoints WHERE seq = ?", [head[0]]).fetchone():
            return None
        last = db.execute(
            "SELECT seq, head_hash FROM checkpoints ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if last and head[0] < last[0]:
            raise CustodyError(
                f"custody chain ends at entry {head[0]}, before its last checkpoint at entry "
                f"{last[0]}: entries were cut, not signing"
            )
        walk = ChainWalk(*(last or (0, GENESIS)))
        for row in db.query("SELECT * FROM custody WHERE seq > ? ORDER BY seq", [walk.seq]):
            walk.step(row)
        if walk.problems:
            raise CustodyError(
                "custody chain damaged since the last checkpoint, not signing: "
                + "; ".join(walk.problems)
            )
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


class ChainWalk:
    """Follows the chain entry by entry from a known (seq, hash), noting each broken link."""

    def __init__(self, seq: int = 0, head_hash: str = GENESIS):
        self.seq, self.head_hash = seq, head_hash
        self.entries = 0
        self.hashes: dict[int, str] = {seq: head_hash} if seq else {}
        self.problems: list[str] = []

    def step(self, entry: dict) -> None:
        """Check one entry against the one before it (gap, link, own hash, details)."""
        self.entries += 1
        if entry["seq"] != self.seq + 1:
            self.problems.append(f"custody: entries {self.seq + 1}..{entry['seq'] - 1} are missing")
        if entry["prev_hash"] != self.head_hash:
            self.problems.append(
                f"custody entry {entry['seq']}: prev_hash does not match entry before it"
            )
        if entry_hash(entry) != entry["hash"]:
            self.problems.append(
                f"custody entry {entry['seq']} ({entry['event']}): content altered"
            )
        try:
            json.loads(entry["details"])
        except ValueError:
            self.problems.append(f"custody entry {entry['seq']}: details are not JSON")
        self.hashes[entry["seq"]] = entry["hash"]
        self.seq, self.head_hash = entry["seq"], entry["hash"]


@dataclass
class ChainReport:
    """The outcome of verifying the chain and its checkpoints.

    `head_seq`/`head_hash` and `signed_seq` (the newest checkpoint's entry, 0 for none) are
    what an auditor compares with central's copy: a local check cannot see entries cut
    from the end of the chain, nor a whole database rolled back, on its own.
    """

    entries: int
    checkpoints: int
    head_hash: str
    problems: list[str]
    head_seq: int = 0
    signed_seq: int = 0
    key_id: str = ""

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def verify_chain(store: Store, box_id: str, public: Ed25519PublicKey) -> ChainReport:
    """Walk the whole chain and every checkpoint, reporting each broken link precisely."""
    walk = ChainWalk()
    for row in store.read.conn.execute("SELECT * FROM custody ORDER BY seq"):
        walk.step(dict(row))
    problems = walk.problems
    checkpoints = store.query("SELECT * FROM checkpoints ORDER BY seq")
    own_key = key_id(public)
    for cp in checkpoints:
        message = checkpoint_message(box_id, cp["seq"], cp["head_hash"], cp["ts"])
        try:
            public.verify(base64.b64decode(cp["signature"]), message)
        except (InvalidSignature, ValueError):
            problems.append(f"checkpoint at entry {cp['seq']}: signature invalid")
        if cp["key_id"] != own_key:
            problems.append(
                f"checkpoint at entry {cp['seq']}: names key {cp['key_id']}, not the box's "
                f"identity key {own_key}"
            )
        if cp["seq"] > walk.seq:
            problems.append(
                f"checkpoint at entry {cp['seq']}: the chain ends at entry {walk.seq} "
                "(entries were cut from its end)"
            )
        elif cp["seq"] not in walk.hashes:
            problems.append(f"checkpoint at entry {cp['seq']}: that entry is missing")
        elif walk.hashes[cp["seq"]] != cp["head_hash"]:
            problems.append(
                f"checkpoint at entry {cp['seq']}: chain head differs from the signed one "
                "(history rewritten)"
            )
    if walk.entries and not checkpoints:
        problems.append(
            f"custody: {walk.entries} entries but no signed checkpoint (every box signs one "
            "when it is made: checkpoints were deleted)"
        )
    return ChainReport(
        entries=walk.entries,
        checkpoints=len(checkpoints),
        head_hash=walk.head_hash,
        problems=problems,
        head_seq=walk.seq,
        signed_seq=checkpoints[-1]["seq"] if checkpoints else 0,
        key_id=own_key,
    )
