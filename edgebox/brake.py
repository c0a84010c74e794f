"""Brakes on guessing: failures counted per key (a source address, a user name, a user) in a
sliding window, in memory and bounded.

A key with `limit` failures inside `window` seconds is braked until the oldest of them
leaves the window. The counters live in the box process only: a restart forgets them,
which costs an attacker a restart of the box, not a faster guess rate. At most `max_keys`
keys are tracked; when more arrive, the key whose newest failure is oldest is dropped, so
memory stays bounded whatever names a client invents.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque


class Brake:
    """Counts failures per key and says whether, and for how long, a key is braked."""

    def __init__(self, limit: int, window: float, max_keys: int = 4096, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def wait(self, key: str) -> int:
        """Seconds until `key` may try again (0 when it is not braked)."""
        now = self._clock()
        with self._lock:
            times = self._recent(key, now)
            if times is None or len(times) < self.limit:
                return 0
            return max(1, int(times[-self.limit] + self.window - now + 0.999))

    def failed(self, key: str) -> None:
        """Count one failure of `key`."""
        now = self._clock()
        with self._lock:
            times = self._recent(key, now)
            if times is None:
                times = self._failures[key] = deque(maxlen=self.limit)
            times.append(now)
            self._failures.move_to_end(key)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)

    def forget(self, key: str) -> None:
        """Clear `key`'s failures (after a success)."""
        with self._lock:
            self._failures.pop(key, None)
