"""What lets the uplink send recordings back to back instead of one after another.

Between two recordings the box used to stand still three times: while central hashed
the finished file (fin), while the box sealed it, and while the box checked the next
file's stored-bytes hash. Now:

- `Acks` routes central's answers by transfer id, so two threads can each wait for
  their own transfer's answers (nothing meant for one is dropped by the other);
- `Finisher` runs one transfer's end (fin, central's verdict, any resend, then the
  confirmation and seal) in its own thread while the uplink thread streams the next
  file; at most one transfer is finishing at a time;
- `LookAhead` checks the next recording's vault file (header, size, stored-bytes
  SHA-256) in the background while the current one is sent. The check still comes
  before any byte of that file leaves the box, and a result is used only if the file
  is the same (inode, size, mtime) and the recording still names the same hash.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path

from edgebox import vault

log = logging.getLogger(__name__)


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


def _stamp(path: Path) -> tuple | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class LookAhead:
    """The pre-send check of a vault file, started early in another thread."""

    def __init__(self):
        self._key: tuple | None = None
        self._thread: threading.Thread | None = None
        self._problems: list[str] | None = None

    def start(self, path: Path, stored_sha256: str) -> None:
        """Begin checking `path` against `stored_sha256` in the background."""
        self.wait()
        key = (str(path), stored_sha256, _stamp(path))
        self._key, self._problems = key, None
        self._thread = threading.Thread(
            target=self._check, args=(path, stored_sha256), name="uplink-check", daemon=True
        )
        self._thread.start()

    def _check(self, path: Path, stored_sha256: str) -> None:
        try:
            self._problems = vault.check_structure(path, stored_sha256)
        except Exception:  # noqa: BLE001 - the uplink checks again in its own thread
            log.exception("checking %s ahead failed", path)

    def wait(self) -> None:
        """Let a running check end."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def problems(self, path: Path, stored_sha256: str) -> list[str]:
        """`vault.check_structure(path, stored_sha256)`: the early result if it was for this
        very file and hash, else checked now."""
        self.wait()
        key, problems = self._key, self._problems
        self._key = self._problems = None
        if problems is not None and key == (str(path), stored_sha256, _stamp(path)):
            return problems
        return vault.check_structure(path, stored_sha256)
