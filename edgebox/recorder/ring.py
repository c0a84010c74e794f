"""The pre-event ring buffer: the last `seconds` of a camera, encrypted, in memory only.

Each piece is sealed with AES-GCM under a key made when the ring is made and never
written anywhere, so even a page swapped out or a core dump holds no plaintext footage.
The ring keeps the newest keyframe piece that began at least `seconds` ago and everything
after it, so a trigger can always start a recording a full pre-event before it.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgebox.recorder.pieces import Piece


@dataclass
class Sealed:
    """A piece as the ring holds it: its facts in clear, its bytes sealed."""

    wall: float
    keyframe: bool
    session: int
    psi: bytes
    nonce: bytes
    blob: bytes
    size: int


class Ring:
    """Encrypted pieces of the last `seconds` (plus the piece before, for its keyframe)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self._pieces: deque[Sealed] = deque()
        self._lock = threading.Lock()
        self.bytes = 0

    def add(self, piece: Piece) -> None:
        """Seal a new piece in, then drop what is older than needed."""
        nonce = secrets.token_bytes(12)
        blob = self._aead.encrypt(nonce, piece.data, None)
        sealed = Sealed(
            piece.wall, piece.keyframe, piece.session, piece.psi, nonce, blob, len(piece.data)
        )
        with self._lock:
            self._pieces.append(sealed)
            self.bytes += len(blob)
            self._trim(piece.wall - self.seconds)

    def _trim(self, horizon: float) -> None:
        """Drop pieces before the newest keyframe piece that began at or before `horizon`."""
        keep_from = 0
        for index, item in enumerate(self._pieces):
            if item.wall > horizon:
                break
            if item.keyframe:
                keep_from = index
        for _ in range(keep_from):
            self.bytes -= len(self._pieces.popleft().blob)

    def since(self, moment: float) -> list[Sealed]:
        """The pieces from the newest keyframe piece that began at or before `moment` (or the
        oldest keyframe piece held, if none did) to the newest piece, still sealed."""
        with self._lock:
            items = list(self._pieces)
        start = None
        for index, item in enumerate(items):
            if item.keyframe and (item.wall <= moment or start is None):
                start = index
            if item.wall > moment and start is not None:
                break
        return [] if start is None else items[start:]

    def open(self, item: Sealed) -> bytes:
        """A piece's plaintext."""
        return self._aead.decrypt(item.nonce, item.blob, None)

    def held_seconds(self, now: float) -> float:
        """How far back the ring reaches."""
        with self._lock:
            return now - self._pieces[0].wall if self._pieces else 0.0
