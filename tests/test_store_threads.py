"""The database's per-thread readers: a thread that reads and ends leaves no connection behind.

Each thread reads through a connection of its own (`Store.read`). The store also listed every
reader, to close them all at stop, and that list kept the connections of ended threads alive:
each thread that came and went (a camera's puller, a job's worker) left an open file and a
page cache behind for the life of the box.
"""

from __future__ import annotations

import gc
import os
import threading

from edgebox.db import Store


def _open_files(name: str) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").endswith(name)
        except OSError:  # closed while listing
            pass
    return count


def _read_in_threads(store: Store, count: int) -> None:
    for _ in range(count):
        thread = threading.Thread(target=store.query, args=("SELECT count(*) FROM devices",))
        thread.start()
        thread.join()
    gc.collect()


def test_threads_that_come_and_go_leave_no_connections(tmp_path):
    store = Store(tmp_path / "box.db")
    try:
        _read_in_threads(store, 20)
        after_first = _open_files("box.db")
        for _ in range(3):
            _read_in_threads(store, 20)
        # SQLite keeps a closed connection's descriptor for the next one while the process
        # holds a lock on the file (POSIX locks), so the count settles instead of growing.
        assert _open_files("box.db") <= after_first < 60
        assert len(store._readers) == 0  # noqa: SLF001 - the list that kept them alive
        assert store.query("SELECT count(*) AS n FROM devices") == [{"n": 0}]
    finally:
        store.close()
    assert _open_files("box.db") == 0


def test_close_closes_the_readers_of_living_threads(tmp_path):
    store = Store(tmp_path / "box.db")
    ready, done = threading.Event(), threading.Event()

    def reader():
        store.query("SELECT 1")
        ready.set()
        done.wait(30)

    thread = threading.Thread(target=reader)
    thread.start()
    ready.wait(30)
    store.query("SELECT 1")
    assert len(store._readers) == 2  # noqa: SLF001
    store.close()
    assert _open_files("box.db") == 0
    done.set()
    thread.join()
