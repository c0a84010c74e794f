"""The database's per-thread readers: what they hold stays bounded however many threads read.

Each thread reads through a connection of its own (`Store.read`). The store also listed every
reader, to close them all at stop, and that list kept the connections of ended threads alive:
each thread that came and went (a camera's puller, a job's worker) left an open file and a
page cache behind for the life of the box. And each connection's page cache grows to 2 MiB:
SQLite's memory for the process is held to `db.SQLITE_SOFT_HEAP_LIMIT` instead.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading

import pytest

from edgebox.db import Store


def _open_files(path) -> int:
    """Open files of this process on the database file at `path`.

    Only this test's own files count: in the whole suite another test's store, left to the
    garbage collector, may still hold a `box.db` of its own.
    """
    name = str(path.resolve())
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == name
        except OSError:  # closed while listing
            pass
    return count


def _read_in_threads(store: Store, count: int) -> None:
    for _ in range(count):
        thread = threading.Thread(target=store.query, args=("SELECT count(*) FROM devices",))
        thread.start()
        thread.join()


def test_threads_that_come_and_go_leave_no_connections(tmp_path):
    store = Store(tmp_path / "box.db")
    try:
        gc.disable()  # closed by the store itself, not by the garbage collector
        _read_in_threads(store, 60)
        # Each thread's connection is closed when the next one opens: the last thread's is
        # left (one file for the database; the writer's two and the WAL's are the store's).
        assert _open_files(tmp_path / "box.db") <= 3
        assert len(store._readers) == 1  # noqa: SLF001
        assert store.query("SELECT count(*) AS n FROM devices") == [{"n": 0}]
        assert len(store._readers) == 1  # noqa: SLF001 - the ended thread's gave way
    finally:
        gc.enable()
        store.close()
    assert _open_files(tmp_path / "box.db") == 0


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
    assert _open_files(tmp_path / "box.db") == 0
    done.set()
    thread.join()


# 24 threads each read every page of a 24 MiB table; SQLite's memory is measured while they
# all still hold their connections.
READERS = """
import json, sys, threading
from pathlib import Path
from edgebox import db
from edgebox.lowlevel import sqlite_memory

if sys.argv[2] == "unlimited":
    db.SQLITE_SOFT_HEAP_LIMIT = 0
store = db.Store(Path(sys.argv[1]))
with store.write() as w:
    w.execute("CREATE TABLE IF NOT EXISTS blobs (body BLOB)")
    w.execute("DELETE FROM blobs")
    w.conn.executemany("INSERT INTO blobs VALUES (randomblob(1000))", [()] * 24000)
read, done = threading.Barrier(25), threading.Event()


def reader():
    store.query("SELECT sum(length(body)) FROM blobs")
    read.wait()
    done.wait()  # the thread, and so its connection, lives until measured


threads = [threading.Thread(target=reader) for _ in range(24)]
for thread in threads:
    thread.start()
read.wait()
used = sqlite_memory.used()
readers = len(store._readers)
done.set()
print(json.dumps({"used": used, "limit": db.SQLITE_SOFT_HEAP_LIMIT, "readers": readers}))
"""


def _sqlite_memory(path, mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", READERS, str(path), mode],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    if figures["used"] is None:
        pytest.skip("this Python's SQLite does not export sqlite3_memory_used")
    return figures


def test_sqlite_memory_is_held_to_the_limit_however_many_threads_read(tmp_path):
    limited = _sqlite_memory(tmp_path / "box.db", "limited")
    unlimited = _sqlite_memory(tmp_path / "box.db", "unlimited")
    assert limited["readers"] == unlimited["readers"] == 24
    # Past the limit only what each connection holds besides pages (schema, lookaside slots)
    assert limited["used"] <= limited["limit"] + limited["readers"] * (256 << 10), limited
    assert unlimited["used"] > limited["limit"] * 2, unlimited  # 24 caches of 2 MiB without it
