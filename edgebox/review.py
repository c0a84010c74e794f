"""Local review: a supervisor unlocks the box review key with their secret, in memory, for a while.

The unlocked key never touches the disk and is forgotten after `minutes`; each
playback of a recording is logged once per unlock.
"""

from __future__ import annotations

import threading
import time

from edgebox import custody
from edgebox.errors import N_, KeyAccessError


class ReviewKeys:
    """Unlocked review keys per supervisor, each with an expiry."""

    def __init__(self, box, minutes: int = 15):
        self.box = box
        self.seconds = minutes * 60
        self._keys: dict[int, tuple[object, float, set]] = {}
        self._lock = threading.Lock()

    def unlock(self, user: dict, secret: str) -> int:
        """Open the review key with the user's secret; returns seconds until it locks again."""
        key = self.box.keys.unlock_review(secret)  # raises on a wrong secret
        with self._lock:
            self._keys[user["id"]] = (key, time.monotonic() + self.seconds, set())
        custody.record(
            self.box.store,
            "review.unlocked",
            user["username"],
            None,
            {"minutes": self.seconds // 60},
        )
        return self.seconds

    def lock(self, user: dict) -> None:
        """Forget the user's unlocked key now."""
        with self._lock:
            self._keys.pop(user["id"], None)

    def key_for(self, user: dict):
        """The user's unlocked key, or 403 when locked or expired."""
        with self._lock:
            entry = self._keys.get(user["id"])
            if entry is None or entry[1] < time.monotonic():
                self._keys.pop(user["id"], None)
                raise KeyAccessError(N_("review is locked: unlock it with your review secret"))
            return entry[0]

    def remaining(self, user: dict) -> int:
        """Seconds until the user's review key locks (0 when locked)."""
        with self._lock:
            entry = self._keys.get(user["id"])
        return max(0, int(entry[1] - time.monotonic())) if entry else 0

    def viewed(self, user: dict, recording_id: str, picture: str | None = None) -> None:
        """Log a playback (or a look at its poster or thumbnail strip, named by `picture`)
        once per recording, kind and unlock."""
        with self._lock:
            entry = self._keys.get(user["id"])
            if entry is None or (recording_id, picture) in entry[2]:
                return
            entry[2].add((recording_id, picture))
        details = {"picture": picture} if picture else {}
        custody.record(self.box.store, "recording.viewed", user["username"], recording_id, details)
