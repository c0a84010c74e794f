"""Central's side of the file transfer: init, segments by offset, fin (docs/sync-protocol.md).

Each handler does its cheap checks at once, in the order messages arrive (malformed or
unknown-transfer messages are rejected there), and returns the costly rest (hashing,
writing, fsync, the whole-file check at fin) as a callable, which the caller runs at once
or hands to another thread (`edgebox.central.lanes`). The costly parts are safe to run
concurrently: segment writes are positional and idempotent and hold the transfer's lock
shared, while init and fin decisions hold it exclusively.

A completion moves the file into the blob store, records it, then drops the transfer's
folder; a crash between those steps leaves a folder whose data is gone. The next init or fin
of that transfer settles it (and a new receiver settles all of them as it starts): the file
in the store is recorded if it is this transfer's whole file, and the folder is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from edgebox.central.files import InitCache, Transfer, file_sha256
from edgebox.central.index import Index
from edgebox.central.kinds import Refused, check_init, kind_of
from edgebox.sync import protocol
from edgebox.sync.protocol import ProtocolError

log = logging.getLogger(__name__)
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

    def settle_all(self) -> int:
        """Settle every transfer a crash left behind (run as a receiver starts): cut short,
        complete but not dropped, or a drop cut short (no init left). A folder that cannot be
        settled raises an alarm and stays for its next init or fin; it never stops the start.
        Returns how many were settled."""
        settled = 0
        for folder in sorted((self.root / "transfers").glob("*/*/")):
            box, tid = folder.parent.name, folder.name
            try:
                settled += self._settle_left(box, tid)
            except Exception as exc:  # noqa: BLE001 - one bad folder must not stop central
                log.exception("could not settle transfer %s/%s", box, tid)
                self.index.alarm(
                    box, f"transfer {tid} left by a crash: {type(exc).__name__}: {exc}"[:500]
                )
        return settled

    def _settle_left(self, box: str, tid: str) -> bool:
        transfer, kind = Transfer(self.root, box, tid), kind_of(tid, self.kinds)
        with transfer.locked():  # an init being created holds it until its init.json is there
            if self._settle_cut_short(box, tid, transfer, kind):
                return True
            if not transfer.exists or kind.held(box, tid) is not None:
                transfer.discard()
                return True
        return False

    def _settle_cut_short(self, box: str, tid: str, transfer: Transfer, kind) -> bool:
        """Under the transfer's lock: if a crash cut its completion short, record the file in
        the store when it is this transfer's whole file, and drop the folder (the box's next
        message then hears `complete`, or starts the transfer again)."""
        if not transfer.cut_short:
            return False
        recorded = kind.record_stored(box, tid, transfer.init())
        transfer.discard()
        log.warning(
            "transfer %s/%s was cut short after its file left the folder: %s",
            box,
            tid,
            "recorded the stored file" if recorded else "no whole file stored; it starts again",
        )
        return True

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
                self._settle_cut_short(box, tid, transfer, kind)
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
                    try:
                        transfer.put(offset, payload, chunk)
                    except FileNotFoundError:  # cut short: its next init or fin settles it
                        present = False
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
        known = self.inits.get(transfer)  # None too when a decision just dropped the folder
        if known is None:
            self.index.reject(protocol.fin_topic(box, tid), "fin for an unknown transfer")
            self.ack(box, {"re": "fin", "tid": tid, "status": "unknown"})
            return None
        if message.get("size") != known["size"] or message.get("sha256") != known["sha256"]:
            raise ProtocolError("fin names another size or hash than the init")

        def decide() -> None:
            with transfer.locked():
                self._settle_cut_short(box, tid, transfer, kind)
                if kind.held(box, tid):
                    self._complete(box, "fin", tid, known["sha256"], known["size"])
                    return
                if not transfer.exists:  # forgotten meanwhile: the box starts it again
                    self.ack(box, {"re": "fin", "tid": tid, "status": "unknown"})
                    return
                init = transfer.init()
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
                try:
                    kind.store(box, tid, transfer, init)
                except Refused as exc:  # nothing stored; the box keeps its copy
                    transfer.discard()
                    self.index.reject(protocol.fin_topic(box, tid), exc.message)
                    answer = {"status": "rejected", "reason": exc.message}
                    self.ack(box, {"re": "fin", "tid": tid, **answer})
                    return
                transfer.discard()  # after the store: a failed one leaves it for the next fin
            self._complete(box, "fin", tid, init["sha256"], init["size"])

        return decide
