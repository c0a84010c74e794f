"""Central's side of the file transfer: init, segments by offset, fin (docs/sync-protocol.md).

Each handler does its cheap checks at once, in the order messages arrive (malformed or
unknown-transfer messages are rejected there), and returns the costly rest (hashing,
writing, fsync, the whole-file check at fin) as a callable, which the caller runs at once
or hands to another thread (`edgebox.central.lanes`). The costly parts are safe to run
concurrently: segment writes are positional and idempotent and hold the transfer's lock
shared, while init and fin decisions hold it exclusively.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgebox.central.files import InitCache, Transfer, file_sha256
from edgebox.central.index import Index
from edgebox.central.kinds import Refused, check_init, kind_of
from edgebox.sync import protocol
from edgebox.sync.protocol import ProtocolError

Later = Callable[[], None] | None


class FileChannel:
    """init / seg / fin for every kind of file; answers through `ack(box, message)`."""

    def __init__(self, root: Path, index: Index, kinds: dict, ack: Callable[[str, dict], None]):
        self.root = Path(root)
        self.index = index
        self.kinds = kinds
        self.ack = ack
        self.inits = InitCache()
        self._transfers: dict[tuple[str, str], Transfer] = {}

    def _transfer(self, box: str, tid: str) -> Transfer:
        """The transfer's paths (kept: building them anew per segment cost more than the rest
        of the bookkeeping)."""
        transfer = self._transfers.get((box, tid))
        if transfer is None:
            if len(self._transfers) >= InitCache.LIMIT:
                self._transfers.clear()
            transfer = self._transfers[(box, tid)] = Transfer(self.root, box, tid)
        return transfer

    def _complete(self, box: str, answering: str, tid: str, sha256: str, size: int) -> None:
        """Tell the box central holds the whole file with this hash and size."""
        self.ack(
            box, {"re": answering, "tid": tid, "status": "complete", "sha256": sha256, "size": size}
        )

    def init(self, box: str, tid: str, message: dict, public) -> Later:
        """Check an init; later: accept it (or answer what central already holds)."""
        kind = kind_of(tid, self.kinds)
        try:
            check_init(box, tid, message)
            kind.check(box, tid, message)
            if not protocol.check_signature(message["manifest"], message["signature"], public):
                raise Refused("manifest signature invalid")
        except Refused as exc:
            self.index.reject(protocol.init_topic(box, tid), exc.message)
            self.ack(box, {"re": "init", "tid": tid, "status": "rejected", "reason": exc.message})
            return None

        def accept() -> None:
            transfer = self._transfer(box, tid)
            with transfer.locked():
                verdict = kind.verdict(box, tid, message)
                if verdict is not None:
                    self.ack(box, {"re": "init", "tid": tid, **verdict})
                    return
                if transfer.exists and transfer.init()["sha256"] != message["sha256"]:
                    raise ProtocolError("init for an existing transfer with other bytes")
                transfer.create(message)
                have = transfer.have(self.inits.get(transfer)["chunk"])
            self.ack(box, {"re": "init", "tid": tid, "status": "ok", "have": have})

        return accept

    def segment(self, parts: dict, payload: bytes) -> Later:
        """Check a segment's transfer, offset and length; later: its hash, then store it."""
        box, tid, offset, sha = parts["box"], parts["tid"], parts["offset"], parts["sha256"]
        topic = protocol.segment_topic(box, tid, offset, sha)
        transfer = self._transfer(box, tid)
        init = self.inits.get(transfer)
        if init is None:
            self._absent(box, tid, offset, topic)
            return None
        size, chunk = init["size"], init["chunk"]
        expected = min(chunk, size - offset) if offset < size or offset == 0 else -1
        if offset % chunk or expected < 0 or len(payload) != max(expected, 0):
            return self._resend(box, tid, offset, topic, "has the wrong offset or length")

        def store() -> None:
            if protocol.sha256_hex(payload) != sha:
                self._resend(box, tid, offset, topic, "does not match its sha256")
                return
            with transfer.locked(shared=True):
                present = transfer.exists  # a fin may have completed it meanwhile
                if present:
                    transfer.put(offset, payload, chunk)
            if present:
                self.ack(box, {"re": "seg", "tid": tid, "offset": offset, "status": "ok"})
            else:
                self._absent(box, tid, offset, topic)

        return store

    def _absent(self, box: str, tid: str, offset: int, topic: str) -> None:
        """A segment for a transfer central holds no folder for: done already, or unknown."""
        if kind_of(tid, self.kinds).held(box, tid):
            self.ack(box, {"re": "seg", "tid": tid, "offset": offset, "status": "ok"})
            return
        self.index.reject(topic, "segment for an unknown transfer")
        self.ack(box, {"re": "seg", "tid": tid, "offset": offset, "status": "unknown"})

    def _resend(self, box: str, tid: str, offset: int, topic: str, problem: str) -> None:
        self.index.reject(topic, f"segment at {offset} {problem}")
        self.ack(box, {"re": "seg", "tid": tid, "offset": offset, "status": "resend"})

    def fin(self, box: str, tid: str, message: dict) -> Later:
        """Check a fin against its init; later: decide from what is stored."""
        transfer = self._transfer(box, tid)
        kind = kind_of(tid, self.kinds)
        held = kind.held(box, tid)
        if held is not None:
            self._complete(box, "fin", tid, held["sha256"], held["size"])
            return None
        if not transfer.exists:
            self.index.reject(protocol.fin_topic(box, tid), "fin for an unknown transfer")
            self.ack(box, {"re": "fin", "tid": tid, "status": "unknown"})
            return None
        init = transfer.init()
        if message.get("size") != init["size"] or message.get("sha256") != init["sha256"]:
            raise ProtocolError("fin names another size or hash than the init")

        def decide() -> None:
            with transfer.locked():
                if kind.held(box, tid):
                    self._complete(box, "fin", tid, init["sha256"], init["size"])
                    return
                if not transfer.exists:  # forgotten meanwhile: the box starts it again
                    self.ack(box, {"re": "fin", "tid": tid, "status": "unknown"})
                    return
                chunk = init["chunk"]
                missing = sorted(
                    set(protocol.offsets(init["size"], chunk)) - set(transfer.have(chunk))
                )
                if missing:
                    self.ack(box, {"re": "fin", "tid": tid, "status": "resend", "offsets": missing})
                    return
                transfer.sync()
                digest = file_sha256(transfer.data)
                if digest != init["sha256"]:
                    self.index.reject(
                        protocol.fin_topic(box, tid),
                        f"whole file sha256 {digest} differs from {init['sha256']}",
                    )
                    transfer.forget_segments()
                    self.ack(box, {"re": "fin", "tid": tid, "status": "resend_all"})
                    return
                kind.store(box, tid, transfer, init)
            self._complete(box, "fin", tid, init["sha256"], init["size"])

        return decide
