"""Cutting ffmpeg's MPEG-TS output into pieces of at most ~2 s, at video keyframes.

ffmpeg writes the camera's stream (copied, not re-encoded) as MPEG-TS with the video as
the first stream, so its PID is `VIDEO_PID`. Only the 4-byte header of each 188-byte
packet is read, and for packets that start a video PES, the adaptation field's random
access flag (ffmpeg sets it on keyframes) and the PES header's PTS. A piece starts at a
keyframe, or at any video frame once the piece has lasted `MAX_PIECE` seconds (a camera
with long GOPs). The latest PAT and PMT are kept so a recording can start with them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

PACKET = 188
VIDEO_PID = 0x100
MAX_PIECE = 2.0
PTS_HZ = 90_000
_WRAP = 1 << 33
_START_FLAG = bytes(1 if b & 0x40 else 0 for b in range(256))  # payload_unit_start_indicator


@dataclass
class Piece:
    """A run of whole TS packets: when it arrived, from which session, keyframe first or not."""

    data: bytes
    wall: float  # time.time() when its first packet arrived
    pts: int | None  # PTS of its first video frame (90 kHz)
    keyframe: bool
    session: int
    psi: bytes  # the PAT and PMT in force (to start a recording with)


def _pts(packet: bytes | memoryview, start: int) -> int | None:
    """The PTS of the PES header beginning at `start` in `packet`, if it has one."""
    if packet[start : start + 3] != b"\x00\x00\x01" or start + 14 > PACKET:
        return None
    if not packet[start + 7] & 0x80:
        return None
    p = packet[start + 9 : start + 14]
    return ((p[0] >> 1) & 0x07) << 30 | p[1] << 22 | (p[2] >> 1) << 15 | p[3] << 7 | p[4] >> 1


class Cutter:
    """Feed it bytes as they come from ffmpeg; it returns the pieces completed by each feed."""

    def __init__(self, session: int, clock=time.time):
        self.session = session
        self._clock = clock
        self._rest = b""
        self._piece = bytearray()
        self._wall = clock()
        self._pts: int | None = None
        self._key = False
        self._pat = b""
        self._pmt = b""
        self._pmt_pid: int | None = None
        self._begun = False  # a video frame has started the piece in progress

    @property
    def psi(self) -> bytes:
        """The latest PAT followed by the latest PMT."""
        return self._pat + self._pmt

    def feed(self, data: bytes) -> list[Piece]:
        """Take more of the stream; returns the pieces it completed (in order)."""
        buffer = self._rest + data if self._rest else data
        usable = len(buffer) - len(buffer) % PACKET
        self._rest = bytes(buffer[usable:])
        done: list[Piece] = []
        view = memoryview(buffer)
        start = 0  # where the bytes not yet added to self._piece begin
        now = self._clock()
        for offset, pid in self._unit_starts(buffer, usable):
            packet = view[offset : offset + PACKET]
            if pid == VIDEO_PID:
                if self._video_start(packet, now):
                    self._piece += view[start:offset]
                    start = offset
                    piece = self._close()
                    if piece is not None:
                        done.append(piece)
                    self._begin(packet, now)
            elif pid == 0:
                self._pat = bytes(packet)
                self._pmt_pid = _pat_program(self._pat)
            else:
                self._pmt = bytes(packet)
        self._piece += view[start:usable]
        return done

    def _unit_starts(self, buffer: bytes, usable: int) -> list[tuple[int, int]]:
        """(offset, pid) of the packets in buffer[:usable] that start a video PES, a PAT or
        the PMT, in order. Only a few dozen packets a second start a unit while thousands
        carry data, so the headers are read in C: a strided slice takes byte 1 of every
        packet, `translate` keeps its start flag, and `find` jumps between the flags."""
        flags = buffer[1:usable:PACKET].translate(_START_FLAG)
        found = []
        index = flags.find(1)
        while index >= 0:
            offset = index * PACKET
            pid = (buffer[offset + 1] & 0x1F) << 8 | buffer[offset + 2]
            if pid in (VIDEO_PID, 0, self._pmt_pid):
                found.append((offset, pid))
            index = flags.find(1, index + 1)
        return found

    def _video_start(self, packet, now: float) -> bool:
        """True where a new piece begins at this video PES start."""
        keyframe, payload = _adaptation(packet)
        pts = _pts(packet, payload)
        if keyframe or not self._begun:
            return True
        if pts is not None and self._pts is not None:
            return (pts - self._pts) % _WRAP >= MAX_PIECE * PTS_HZ
        return now - self._wall >= MAX_PIECE

    def _begin(self, packet, now: float) -> None:
        keyframe, payload = _adaptation(packet)
        self._wall = now
        self._pts = _pts(packet, payload)
        self._key = keyframe
        self._begun = True

    def _close(self) -> Piece | None:
        if not self._piece:
            return None
        piece = Piece(bytes(self._piece), self._wall, self._pts, self._key, self.session, self.psi)
        self._piece = bytearray()
        return piece

    def flush(self) -> Piece | None:
        """The piece in progress (the stream ended)."""
        return self._close()


def _adaptation(packet) -> tuple[bool, int]:
    """(random access flag, offset of the payload) of one TS packet."""
    control = (packet[3] >> 4) & 0x3
    if control in (2, 3):
        length = packet[4]
        keyframe = length > 0 and bool(packet[5] & 0x40)
        return keyframe, 5 + length
    return False, 4


def _pat_program(pat: bytes) -> int | None:
    """The PMT PID of the first program in a PAT packet."""
    _, start = _adaptation(pat)
    start += 1 + pat[start]  # pointer field
    section = pat[start:]
    if len(section) < 12:
        return None
    length = ((section[1] & 0x0F) << 8) | section[2]
    for entry in range(8, min(3 + length - 4, len(section) - 4), 4):
        program = (section[entry] << 8) | section[entry + 1]
        if program != 0:
            return ((section[entry + 2] & 0x1F) << 8) | section[entry + 3]
    return None
