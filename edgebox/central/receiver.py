"""Central's message handling: custody and metadata, and acks; file init / segment / fin
go to `edgebox.central.channel`.

Every message is idempotent by its id, offset or transfer id: duplicates get the
same answer and change nothing. Malformed or hostile messages are logged in the
`rejections` table and never touch stored files.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgebox import custody
from edgebox.central import forks
from edgebox.central.blobs import BlobStore, StoreError
from edgebox.central.blobs.local import LocalBlobs
from edgebox.central.channel import FileChannel
from edgebox.central.index import Index
from edgebox.central.kinds import RecordingFiles, Refused, ReplicaFiles
from edgebox.clock import iso
from edgebox.sync import protocol
from edgebox.sync.protocol import ProtocolError

log = logging.getLogger(__name__)
FAILURE_ALARM_EVERY = 300.0  # seconds between two alarms for the same failure
CUSTODY_INSERT = (
    "INSERT OR IGNORE INTO custody (box_id, seq, ts, event, actor, subject, details, prev_hash, "
    "hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class Receiver:
    """Applies upstream messages to the store and answers on the box's ack topic."""

    def __init__(
        self,
        store_dir: Path,
        publish: Callable[[str, bytes], object],
        blobs: BlobStore | None = None,
        index=None,
    ):
        """`publish(topic, payload)` sends an answer to a box (at QoS 1). `store_dir` is the
        work folder (transfers under way, replica sets being checked, and by default the
        SQLite index and the complete files too); `blobs` is where complete files go (that
        folder when not given), `index` the index (SQLite in that folder when not given)."""
        self.root = Path(store_dir)
        self.index = index if index is not None else Index(self.root)
        self.blobs = blobs if blobs is not None else LocalBlobs(self.root)
        self.publish = publish
        self.kinds = {
            "recording": RecordingFiles(self.root, self.index, self.blobs),
            "replica": ReplicaFiles(self.root, self.index, self.blobs),
        }
        self.files = FileChannel(self.root, self.index, self.kinds, self._ack)
        self._failures_alarmed: dict[tuple, float] = {}
        settled = self.files.settle_all()  # never raises: what it cannot settle raises alarms
        if settled:
            log.warning("settled %d transfers a crash left behind", settled)

    def handle(
        self,
        topic: str,
        payload: bytes,
        defer: Callable | None = None,
        defer_in_order: Callable | None = None,
    ) -> None:
        """Dispatch one message; problems are logged, never raised: a
        refused message as a rejection, a failure of central's own as an alarm.

        The checks run now, in arrival order; the costly rest runs now too, or is handed
        on to run on another thread: a file message's (hashing, writing, the fin decision)
        to `defer(work)`, a metadata message's (custody, replica sets, events: database
        commits) to `defer_in_order(work)`, which must run its work one at a time in the
        order given.
        """
        later = self._guarded(topic, lambda: self._dispatch(topic, payload))
        if later is not None:
            work = functools.partial(self._guarded, topic, later)
            hand = defer_in_order if topic.endswith("/meta") else defer  # topic checked
            hand(work) if hand else work()

    def _guarded(self, topic: str, step: Callable):
        try:
            return step()
        except ProtocolError as exc:
            log.warning("rejected %s: %s", topic[:120], exc.message)
            self.index.reject(topic, exc.message)
            return None
        except StoreError as exc:
            # Nothing is answered: the box sends the fin (or the set) again after its ack
            # timeout, and the transfer waits in the work folder meanwhile.
            log.error("blob store failed on %s: %s", topic[:120], exc.message)
            self.index.alarm(_box_of(topic), f"blob store: {exc.message}"[:500])
            return None
        except Exception as exc:  # noqa: BLE001 - a fault of central's, not of the message
            # Unanswered too, so the box tries again; operators see it at once, instead of a
            # box whose sync waits on central with nothing said anywhere.
            log.exception("central failed on %s", topic[:120])
            self._failure_alarm(topic, exc)
            return None

    def _failure_alarm(self, topic: str, exc: Exception) -> None:
        """An alarm for a failure of central's own: one per box, message kind and error every
        `FAILURE_ALARM_EVERY` seconds (a fault that stays fails every message, and the index
        may be what fails)."""
        box = _box_of(topic)
        kind = topic.rsplit("/", 1)[-1] if "/seg/" not in topic else "seg"
        key, now = (box, kind, type(exc).__name__), time.monotonic()
        if now - self._failures_alarmed.get(key, -FAILURE_ALARM_EVERY) < FAILURE_ALARM_EVERY:
            return
        if len(self._failures_alarmed) >= 4096:
            self._failures_alarmed.clear()
        self._failures_alarmed[key] = now
        try:
            self.index.alarm(
                box, f"central failed on {topic[:200]}: {type(exc).__name__}: {exc}"[:500]
            )
        except Exception:  # noqa: BLE001 - logged above; the index itself may be the fault
            log.exception("could not raise an alarm for the failure on %s", topic[:120])

    def _dispatch(self, topic: str, payload: bytes):
        parts = protocol.parse_topic(topic)
        box, kind = parts["box"], parts["kind"]
        if kind == "meta":
            return self._meta(box, protocol.decode(payload))
        if kind == "init":
            message = protocol.decode(payload)
            public = self._identity(box, message.get("identity"))
            return self.files.init(box, parts["tid"], message, public)
        if kind == "seg":
            return self.files.segment(parts, payload)
        if kind == "fin":
            return self.files.fin(box, parts["tid"], protocol.decode(payload))
        raise ProtocolError(f"central does not take {kind} messages")

    def _ack(self, box: str, message: dict) -> None:
        # Every answer at QoS 1, a segment's "ok" too: a box back within a moment after a
        # broker restart may not notice it was away and waits for these answers, which the
        # broker keeps in its session (at QoS 0 they were lost and it waited 20 s).
        self.publish(protocol.ack_topic(box), protocol.encode({"box": box, **message}))

    # -- identity -------------------------------------------------------------
    def _identity(self, box: str, claimed: str | None) -> Ed25519PublicKey:
        """The box's pinned identity key (pinned at first contact; a change raises an alarm)."""
        row = self.index.one("SELECT identity FROM boxes WHERE box_id = ?", (box,))
        if row is None:
            if not isinstance(claimed, str):
                raise ProtocolError(f"unknown box {box} sent no identity")
            _public(claimed)  # refuse a malformed key before pinning it
            now = iso()
            with self.index.write() as db:
                db.execute(
                    "INSERT OR IGNORE INTO boxes (box_id, identity, first_seen, last_seen, "
                    "custody_hash) VALUES (?, ?, ?, ?, ?)",
                    [box, claimed, now, now, custody.GENESIS],
                )
            row = self.index.one("SELECT identity FROM boxes WHERE box_id = ?", (box,))
        if claimed is not None and claimed != row["identity"]:
            self.index.alarm(box, "a message claimed another identity key for this box")
            raise ProtocolError(f"identity of box {box} differs from the one pinned")
        return _public(row["identity"])

    # -- custody and metadata -------------------------------------------------
    def _meta(self, box: str, message: dict) -> Callable[[], None]:
        """Check a metadata message's box, id and identity; later: apply it and answer."""
        if message.get("box") != box:
            raise ProtocolError(f"message for box {message.get('box')!r} on box {box}'s topic")
        message_id = message.get("id")
        if not isinstance(message_id, str) or not message_id:
            raise ProtocolError("metadata event without an id")
        public = self._identity(box, message.get("identity"))
        return functools.partial(self._apply_meta, box, message, message_id, public)

    def _apply_meta(
        self, box: str, message: dict, message_id: str, public: Ed25519PublicKey
    ) -> None:
        if message.get("type") == "custody":
            status = self._custody(box, message, public)
        elif message.get("type") == "replica.set":
            try:
                status = self.kinds["replica"].commit(box, message, public)
            except Refused as exc:
                self.index.reject(protocol.meta_topic(box), f"replica set: {exc.message}")
                status = {"status": "rejected", "reason": exc.message}
        else:
            with self.index.write() as db:
                db.execute(
                    "INSERT OR IGNORE INTO events (box_id, id, type, body, received_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [box, message_id, str(message.get("type")), json.dumps(message), iso()],
                )
            status = {"status": "ok"}
        self._ack(box, {"re": "meta", "id": message_id, **status})

    def _stored_hash(self, box: str, seq: int) -> str | None:
        row = self.index.one("SELECT hash FROM custody WHERE box_id = ? AND seq = ?", (box, seq))
        return row["hash"] if row else None

    def _custody(self, box: str, message: dict, public: Ed25519PublicKey) -> dict:
        entries, checkpoints = message.get("entries"), message.get("checkpoints") or []
        if (
            not isinstance(entries, list)
            or not isinstance(checkpoints, list)
            or not (entries or checkpoints)
        ):
            raise ProtocolError("custody message without entries or checkpoints")
        if not all(_is_entry(e) for e in entries):
            raise ProtocolError("malformed custody entry")
        if not all(_is_checkpoint(cp) for cp in checkpoints):
            raise ProtocolError("malformed custody checkpoint")
        head = self.index.one(
            "SELECT custody_seq, custody_hash FROM boxes WHERE box_id = ?", (box,)
        )
        seq, prev = head["custody_seq"], head["custody_hash"]
        fresh, fork_at = [], None
        for entry in entries:
            number, computed = entry["seq"], custody.entry_hash(entry)
            if computed != entry.get("hash"):
                raise ProtocolError(f"custody entry {number}: hash does not match its content")
            if number <= seq and fork_at is None:
                known = self.index.one(
                    "SELECT hash FROM custody WHERE box_id = ? AND seq = ?", (box, number)
                )
                if not known or known["hash"] == entry["hash"]:
                    continue
                why = forks.refusal(self.index, box, entries, checkpoints, number)
                if why:
                    self.index.alarm(box, f"custody {why}")
                    return {"status": "rejected", "reason": why}
                fork_at, seq, prev = number, number - 1, entry["prev_hash"]
            if number != seq + 1:
                self.index.alarm(box, f"custody gap: entries {seq + 1}..{number - 1} missing")
                return {"status": "gap", "next_seq": seq + 1}
            if entry["prev_hash"] != prev:
                self.index.alarm(box, f"custody fork at entry {number}: link broken")
                return {"status": "rejected", "reason": f"fork at entry {number}"}
            fresh.append(entry)
            seq, prev = number, entry["hash"]
        known_hashes = {e["seq"]: e["hash"] for e in entries}
        for cp in checkpoints:
            message_bytes = custody.checkpoint_message(box, cp["seq"], cp["head_hash"], cp["ts"])
            try:
                public.verify(base64.b64decode(cp["signature"]), message_bytes)
            except Exception:  # noqa: BLE001 - any failure means the signature is bad
                self.index.alarm(box, f"checkpoint at entry {cp['seq']}: bad signature")
                raise ProtocolError("checkpoint signature invalid") from None
            head_hash = known_hashes.get(cp["seq"]) or self._stored_hash(box, cp["seq"])
            if head_hash is None:
                raise ProtocolError(f"checkpoint at entry {cp['seq']}, which central does not hold")
            if head_hash != cp["head_hash"]:
                self.index.alarm(box, f"checkpoint at entry {cp['seq']} differs from the chain")
                raise ProtocolError("checkpoint does not match the chain")
        columns = ("seq", "ts", "event", "actor", "subject", "details", "prev_hash", "hash")
        with self.index.write() as db:
            if fork_at is not None:
                moved = forks.supersede(db, box, fork_at, iso())
            for entry in fresh:
                db.execute(CUSTODY_INSERT, [box, *(entry[c] for c in columns)])
            for cp in checkpoints:
                db.execute(
                    "INSERT OR IGNORE INTO checkpoints (box_id, seq, ts, head_hash, key_id, "
                    "signature) VALUES (?, ?, ?, ?, ?, ?)",
                    [box, cp["seq"], cp["ts"], cp["head_hash"], cp["key_id"], cp["signature"]],
                )
            if fresh:
                db.execute(
                    "UPDATE boxes SET custody_seq = ?, custody_hash = ?, last_seen = ? "
                    "WHERE box_id = ?",
                    [seq, prev, iso(), box],
                )
        if fork_at is not None:
            self.index.alarm(
                box,
                f"box restored from its replica: central's custody entries {fork_at}.."
                f"{fork_at + moved - 1} were replaced by the restored chain (kept as superseded)",
            )
        return {"status": "ok"}


def _box_of(topic: str) -> str | None:
    try:
        return protocol.parse_topic(topic)["box"]
    except ProtocolError:
        return None


_ENTRY_TEXT = ("ts", "event", "actor", "details", "prev_hash", "hash")
_CHECKPOINT_TEXT = ("ts", "head_hash", "key_id", "signature")


def _is_seq(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 63


def _is_entry(entry) -> bool:
    """Whether a custody entry has the fields and types central stores (as the box's
    custody.append makes them), so nothing odd reaches the hash check or SQLite."""
    return (
        isinstance(entry, dict)
        and _is_seq(entry.get("seq"))
        and all(isinstance(entry.get(k), str) for k in _ENTRY_TEXT)
        and isinstance(entry.get("subject"), str | None)
    )


def _is_checkpoint(cp) -> bool:
    """Whether a checkpoint has the fields and types the custody check reads."""
    return (
        isinstance(cp, dict)
        and _is_seq(cp.get("seq"))
        and all(isinstance(cp.get(k), str) for k in _CHECKPOINT_TEXT)
    )


def _public(b64: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))
    except (ValueError, TypeError):
        raise ProtocolError("identity is not an Ed25519 public key") from None
