"""Threads for central's costly work, so paho's network thread keeps reading meanwhile.

A worker's network thread checks each message in arrival order (`Receiver.handle`) and
hands the costly rest here: a segment's SHA-256 check, write and answer, an init's
folder, a fin's fsync and whole-file hash. `hashlib`, `pwrite` and `fsync` release the
GIL, so a few threads overlap hashing, disk and TLS. The queue is bounded: when the
threads fall behind, the network thread waits and stops reading (back-pressure on the
broker, never an unbounded heap of payloads). Work accepted here but not done when the
process dies was never answered: the box sends it again after its ack timeout.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)
THREADS = 3
DEPTH = 32


class Lanes:
    """A bounded queue of work and the threads that run it."""

    def __init__(self, name: str, threads: int = THREADS, depth: int = DEPTH):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.threads = [
            threading.Thread(target=self._run, name=f"{name}-lane-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, work: Callable[[], None]) -> None:
        """Queue `work`; waits while the queue is full."""
        self.queue.put(work)

    def stop(self, timeout: float = 10) -> None:
        """Finish what is queued, then end the threads."""
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join(timeout)

    def _run(self) -> None:
        while (work := self.queue.get()) is not None:
            try:
                work()
            except Exception:  # noqa: BLE001 - one failed message must not end the lane
                log.exception("central work failed")
