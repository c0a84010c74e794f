"""One camera's recording in progress: its triggers, its spooled footage, its gaps.

An event begins with the pre-event pieces of the ring and takes every new piece until the
latest of its triggers' ends (a trigger without an end lasts until it is stopped, at most
`max_seconds`). A trigger that arrives while the event runs extends it: overlapping
triggers make one recording. When the stream drops, the gap is noted (from the last piece
before it to the first after it) and the recording goes on with what comes next.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgebox.clock import iso_at as iso_of
from edgebox.lowlevel.durable import atomic_write
from edgebox.recorder.pieces import Piece
from edgebox.recorder.spool import Spool

SYNC_EVERY = 10  # pieces (~10 s): the spool is made durable this often


@dataclass
class Trigger:
    """Who asked for a recording, why, from where, and until when (None: until stopped)."""

    id: str
    at: float
    who: str
    why: str
    source: str
    where: str | None = None
    incident: str | None = None
    until: float | None = None

    def public(self) -> dict:
        """The trigger as recorded in metadata and custody."""
        return {
            "id": self.id,
            "at": iso_of(self.at),
            "who": self.who,
            "why": self.why,
            "source": self.source,
            "where": self.where,
            "incident": self.incident,
            "until": iso_of(self.until) if self.until is not None else None,
        }


@dataclass
class Event:
    """The footage of one camera for one or more overlapping triggers."""

    event_id: str
    camera_id: str
    camera_name: str
    spool: Spool
    pre_event_seconds: float
    max_seconds: float
    triggers: list[Trigger] = field(default_factory=list)
    gaps: list[dict] = field(default_factory=list)
    first_wall: float | None = None
    last_wall: float | None = None
    closed_at: float | None = None  # when the first piece past the end began
    session: int | None = None
    pieces: int = 0
    ended: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    _backfill: threading.Thread | None = None
    _waiting: list = field(default_factory=list)

    @property
    def started(self) -> float:
        """When the first trigger came."""
        return self.triggers[0].at

    def end_at(self) -> float | None:
        """When the event ends: the latest trigger end, or None while one runs until stopped
        (then the cap `max_seconds` after the first trigger applies)."""
        if any(t.until is None for t in self.triggers):
            return None
        return max(t.until for t in self.triggers)

    def due(self, now: float) -> bool:
        """Whether the event has reached its end (or its cap)."""
        end = self.end_at()
        cap = self.started + self.max_seconds
        return now >= min(end, cap) if end is not None else now >= cap

    def take(self, piece: Piece) -> bool:
        """Spool a new piece (held in memory while the pre-event is still being spooled);
        False once past the end."""
        end = self.end_at()
        cap = self.started + self.max_seconds
        if (end is not None and piece.wall >= end) or piece.wall >= cap:
            self.closed_at = self.closed_at or piece.wall
            return False
        with self.lock:
            if self.ended:
                return False
            if self._backfill is not None:
                self._waiting.append(piece)
            else:
                self._write(piece.wall, piece.session, piece.psi, piece.data)
        return True

    def start_backfill(self, items: list, opener) -> None:
        """Spool the pre-event (ring items, opened by `opener`) in a thread of its own, so a
        trigger is answered at once; new pieces wait in memory until it is done."""
        if not items:
            return
        self.first_wall = items[0].wall
        self._backfill = threading.Thread(
            target=self._fill, args=(items, opener), name=f"backfill-{self.camera_name}"
        )
        self._backfill.start()

    def _fill(self, items: list, opener) -> None:
        for item in items:
            plaintext = opener(item)
            with self.lock:
                self._write(item.wall, item.session, item.psi, plaintext)
        with self.lock:
            for piece in self._waiting:
                self._write(piece.wall, piece.session, piece.psi, piece.data)
            self._waiting.clear()
            self._backfill = None

    def _write(self, wall: float, session: int, psi: bytes, data: bytes) -> None:
        """Append one piece to the spool (the lock is held)."""
        if self.session != session:
            if self.session is not None:
                self._close_gap(wall)
            self.spool.append(psi)  # each session's tables first
            self.session = session
        self.spool.append(data)
        self.first_wall = wall if self.first_wall is None else self.first_wall
        self.last_wall = wall
        self.pieces += 1
        if self.pieces % SYNC_EVERY == 0:  # what a power cut may lose stays bounded
            self.spool.sync()

    def open_gap(self, when: float, reason: str) -> dict:
        """The stream dropped: note a gap from the last piece received."""
        with self.lock:
            gap = {"from": iso_of(self.last_wall or when), "to": None, "reason": reason}
            self.gaps.append(gap)
            return gap

    def _close_gap(self, when: float) -> None:
        if self.gaps and self.gaps[-1]["to"] is None:
            self.gaps[-1]["to"] = iso_of(when)
        elif self.last_wall is not None:  # a new session without a noted drop
            self.gaps.append({"from": iso_of(self.last_wall), "to": iso_of(when), "reason": ""})

    def finish(self) -> None:
        """Take no more pieces (once the pre-event is spooled); an open gap stays open."""
        filling = self._backfill
        if filling is not None:
            filling.join()
        with self.lock:
            self.ended = True
            try:
                self.spool.sync()
            finally:
                self.spool.close()

    def save_manifest(self) -> None:
        """Write what a restart needs to finish this event after a crash (its camera, triggers
        and times: no footage) beside the spool, replacing the previous one atomically."""
        body = {
            "event_id": self.event_id,
            "camera_id": self.camera_id,
            "camera_name": self.camera_name,
            "pre_event_seconds": self.pre_event_seconds,
            "first_wall": self.first_wall,
            "triggers": [asdict(t) for t in self.triggers],
        }
        atomic_write(manifest_path(self.spool.path), json.dumps(body).encode(), mode=0o600)

    @classmethod
    def from_manifest(cls, spool: Spool, max_seconds: float) -> Event:
        """An event cut short by a crash, rebuilt from its manifest and its spool."""
        body = json.loads(manifest_path(spool.path).read_text())
        event = cls(
            body["event_id"],
            body["camera_id"],
            body["camera_name"],
            spool,
            body["pre_event_seconds"],
            max_seconds,
            [Trigger(**t) for t in body["triggers"]],
            first_wall=body["first_wall"] or body["triggers"][0]["at"],
            last_wall=spool.path.stat().st_mtime,
            pieces=1 if spool.path.stat().st_size else 0,
            ended=True,
        )
        event.gaps.append(
            {"from": iso_of(event.last_wall), "to": None, "reason": "the box stopped unexpectedly"}
        )
        return event


def manifest_path(spool_path: Path) -> Path:
    """Where an event's manifest lives beside its spool."""
    return spool_path.with_name(spool_path.name + ".json")
