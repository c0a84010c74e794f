"""Looking for any of thousands of short byte strings (bytes from inside each clip) in every
file of a box, fast enough for a whole disk.

A regular expression with one alternative per marker costs seconds per MiB once there are a
thousand markers. Instead every GRAM-byte piece of every marker goes into a dict, and a file
is read in GRAM-byte windows every STRIDE bytes: a marker of at least GRAM + STRIDE - 1 bytes,
wherever it lies, covers one such window, and each window found is checked against its whole
marker.
"""

from __future__ import annotations

GRAM = 16
STRIDE = 16
SHORTEST = GRAM + STRIDE - 1  # a marker this long always covers a window the scan reads


class Markers:
    """An index of markers, asked whether a piece of data holds any of them."""

    def __init__(self, markers: list[bytes]):
        short = [m for m in markers if len(m) < SHORTEST]
        if short:
            raise ValueError(f"markers must hold at least {SHORTEST} bytes, not {len(short[0])}")
        self.pieces: dict[bytes, list[tuple[bytes, int]]] = {}
        for marker in markers:
            for at in range(len(marker) - GRAM + 1):
                self.pieces.setdefault(marker[at : at + GRAM], []).append((marker, at))

    def __bool__(self) -> bool:
        return bool(self.pieces)

    def found_in(self, data: bytes) -> bool:
        """Whether `data` holds any of the markers, at any offset."""
        pieces = self.pieces
        for start in range(0, len(data) - GRAM + 1, STRIDE):
            for marker, at in pieces.get(data[start : start + GRAM], ()):
                begin = start - at
                if begin >= 0 and data[begin : begin + len(marker)] == marker:
                    return True
        return False
