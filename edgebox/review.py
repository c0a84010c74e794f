"""Local review: a supervisor unlocks the box review key with their secret, in memory, for one
web session and a while.

The unlock belongs to the web session that made it (`user["session_id"]`), not to the
account: another session of the same supervisor, or a new login, starts locked. It ends
after `minutes`, on logout, and when the user's sessions are ended (logout everywhere, a
disabled account, a password change); the session check on every request refuses an ended
session in any case. The unlocked key never touches the disk. Each playback of a recording is
logged once per unlock; each unlock logs the supervisor slot whose secret opened it. Wrong
secrets brake the user after `GUESSES` within `GUESS_MINUTES` (429), whichever session
they come from.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from edgebox import custody
from edgebox.brake import Brake
from edgebox.errors import N_, KeyAccessError

GUESSES = 5
GUESS_MINUTES = 15


@dataclass
class _Unlock:
    user_id: int
    key: object
    expires: float
    viewed: set = field(default_factory=set)


class ReviewKeys:
    """Unlocked review keys per web session, each with an expiry."""

    def __init__(self, box, minutes: int = 15):
        self.box = box
        self.seconds = minutes * 60
        self._keys: dict[str, _Unlock] = {}
        self._lock = threading.Lock()
        self.guesses = Brake(GUESSES, GUESS_MINUTES * 60)

    def unlock(self, user: dict, secret: str) -> int:
        """Open the review key with the user's secret for this session; returns seconds until
        it locks again. A wrong secret is logged and counted (403, then 429)."""
        actor = f"user:{user['username']}"
        wait = self.guesses.wait(str(user["id"]))
        if wait:
            custody.record(self.box.store, "review.unlock_failed", actor, None, {"braked": True})
            raise KeyAccessError(
                f"too many wrong review secrets; try again in {wait} seconds", status=429
            )
        try:
            slot, key = self.box.keys.unlock_review_slot(secret)
        except KeyAccessError:
            self.guesses.failed(str(user["id"]))
            custody.record(self.box.store, "review.unlock_failed", actor, None, {})
            raise
        self.guesses.forget(str(user["id"]))
        with self._lock:
            self._keys[user["session_id"]] = _Unlock(
                user["id"], key, time.monotonic() + self.seconds
            )
        custody.record(
            self.box.store,
            "review.unlocked",
            user["username"],
            None,
            {"minutes": self.seconds // 60, "slot": slot},
        )
        return self.seconds

    def lock(self, user: dict) -> None:
        """Forget this session's unlocked key now."""
        self.end_session(user["session_id"])

    def end_session(self, session_id: str) -> None:
        """Forget the key a session unlocked (at logout)."""
        with self._lock:
            self._keys.pop(session_id, None)

    def end_user(self, user_id: int) -> None:
        """Forget every key a user's sessions unlocked (logout everywhere, disable, password)."""
        with self._lock:
            for session_id in [s for s, u in self._keys.items() if u.user_id == user_id]:
                del self._keys[session_id]

    def _entry(self, user: dict) -> _Unlock | None:
        entry = self._keys.get(user["session_id"])
        if entry is None or entry.user_id != user["id"] or entry.expires < time.monotonic():
            self._keys.pop(user["session_id"], None)
            return None
        return entry

    def key_for(self, user: dict):
        """This session's unlocked key, or 403 when locked or expired."""
        with self._lock:
            entry = self._entry(user)
        if entry is None:
            raise KeyAccessError(N_("review is locked: unlock it with your review secret"))
        return entry.key

    def remaining(self, user: dict) -> int:
        """Seconds until this session's review key locks (0 when locked)."""
        with self._lock:
            entry = self._entry(user)
        return max(0, int(entry.expires - time.monotonic())) if entry else 0

    def viewed(self, user: dict, recording_id: str, picture: str | None = None) -> None:
        """Log a playback (or a look at its poster or thumbnail strip, named by `picture`)
        once per recording, kind and unlock."""
        with self._lock:
            entry = self._entry(user)
            if entry is None or (recording_id, picture) in entry.viewed:
                return
            entry.viewed.add((recording_id, picture))
        details = {"picture": picture} if picture else {}
        custody.record(self.box.store, "recording.viewed", user["username"], recording_id, details)
