"""What lets the uplink send recordings back to back instead of one after another.

Between two recordings the box used to stand still while central hashed the finished
file (fin). Now:

- `Acks` routes central's answers by transfer id, so two threads can each wait for
  their own transfer's answers (nothing meant for one is dropped by the other);
- `Finisher` runs one transfer's end (fin, central's verdict, any resend, then the
  confirmation) in its own thread while the uplink thread streams the next file; at
  most one transfer is finishing at a time.

The two whole-file passes the box once made per recording are gone from the drain:
the stored-bytes hash is checked end to end by central's fin (a mismatch makes the box
check its own file, see `FileTransfer.resending_all`), and sealing, which re-hashes
the file, waits until nothing is left to send (`Uplink.seal_confirmed`).
"""

from __future__ import annotations

import queue
import threading


class Acks:
    """Central's answers: per transfer id for the thread sending it, the rest in one queue."""

    def __init__(self):
        self._lock = threading.Lock()
        self._other: queue.Queue = queue.Queue()
        self._by_tid: dict[str, queue.Queue] = {}

    def open(self, tid: str) -> None:
        """Start collecting the answers about transfer `tid` apart from the rest."""
        with self._lock:
            self._by_tid[tid] = queue.Queue()

    def close(self, tid: str) -> None:
        """Stop collecting them (later answers about `tid` are stale)."""
        with self._lock:
            self._by_tid.pop(tid, None)

    def put(self, ack: dict) -> None:
        """File an answer where its reader waits."""
        with self._lock:
            box = self._by_tid.get(ack.get("tid")) or self._other
        box.put(ack)

    def get(self, tid: str | None, timeout: float) -> dict:
        """The next answer about `tid` (None: any other answer); queue.Empty after `timeout`."""
        with self._lock:
            box = self._by_tid.get(tid, self._other) if tid else self._other
        return box.get(timeout=timeout)


class Finisher:
    """Runs `transfer.finish()` for one transfer at a time in its own thread."""

    def __init__(self, lost: type[BaseException]):
        self._lost = lost
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.recording_id: str | None = None

    def take(self, transfer, recording_id: str) -> None:
        """Finish `transfer` in the background, once the previous one is finished."""
        self.wait()
        self.recording_id = recording_id
        self._thread = threading.Thread(
            target=self._run, args=(transfer,), name="uplink-finish", daemon=True
        )
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` for the transfer being finished; True when none is left."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
            self._thread = None
        return True

    def raise_failure(self) -> None:
        """Re-raise in the caller's thread what failed the last finish (a lost link is no
        failure: the uplink starts that transfer again when the link returns)."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self, transfer) -> None:
        try:
            transfer.finish()
        except self._lost:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the uplink by raise_failure
            self._error = exc
        finally:
            self.recording_id = None
