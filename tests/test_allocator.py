"""glibc malloc settings of the long-running commands (`edgebox.allocator`), in fresh
processes: freed MiB buffers stay for the next ones instead of costing a page fault per page
again, and settings given in the environment win."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgebox.lowlevel import allocator

PROBE = """
import json, resource, sys, threading
from edgebox.lowlevel import allocator
applied = allocator.tune() if sys.argv[1] == "tuned" else {}
faults = []
def work():
    # A thread's heap, as the web server's and central's threads use: 16 MiB of buffers
    # freed, then the same again; count the page faults of the second round.
    buffers = [bytearray(1 << 20) for _ in range(16)]
    del buffers
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    buffers = [bytearray(1 << 20) for _ in range(16)]
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(json.dumps({"applied": applied, "faults": faults[0]}))
"""


def _run(code: str, argument, **env) -> dict:
    """Run `code` in a fresh Python with `argument`, without the caller's MALLOC_ settings
    (plus `env`); its JSON output."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", code, str(argument)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def _probe(mode: str, **env) -> dict:
    return _run(PROBE, mode, **env)


def _glibc() -> bool:
    import ctypes

    return hasattr(ctypes.CDLL(None), "mallopt")


@pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's")
def test_freed_buffers_are_kept_for_the_next_ones():
    plain, tuned = _probe("plain"), _probe("tuned")
    assert plain["applied"] == {}
    assert tuned["applied"] == {
        "MALLOC_TRIM_THRESHOLD_": 64 << 20,
        "MALLOC_MMAP_THRESHOLD_": 4 << 20,
        "MALLOC_ARENA_MAX": 2,
    }
    # 16 MiB is 4096 pages: glibc's defaults give them back and fault every one in again
    assert plain["faults"] >= 2048
    assert tuned["faults"] < 256


@pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's")
def test_settings_from_the_environment_win():
    tuned = _probe("tuned", MALLOC_ARENA_MAX="4")
    assert set(tuned["applied"]) == {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"}


# MiB buffers freed among small objects that live on (as SQLite's pages and Python's objects
# do in the box): the heap's free memory stays resident until `release`.
FRAGMENTS = """
import json, sys
from edgebox.lowlevel import allocator
allocator.tune()
kept, buffers = [], []
for _ in range(64):
    buffers.append(bytearray(1 << 20))
    kept.append(bytearray(3000))  # lands after the buffer, so the heap cannot shrink past it
buffers.clear()
figures = allocator.release() if sys.argv[1] == "release" else {}
print(json.dumps({"heap": allocator.heap(), **figures}))
"""


@pytest.mark.skipif(not allocator.heap(), reason="mallinfo2 is glibc's (2.33 and later)")
def test_release_hands_the_free_memory_of_the_heaps_back():
    kept, released = _run(FRAGMENTS, "keep"), _run(FRAGMENTS, "release")
    assert kept["heap"]["free"] >= 48 << 20  # the 64 freed MiB, kept by the tuned heap
    assert released["heap"]["free"] >= 48 << 20  # still the heap's (its address space)...
    gone = released["resident_before"] - released["resident_after"]
    assert gone >= 48 << 20, released  # ...but no longer resident
    assert released["in_use"] < released["resident_after"]


# Central's serving loop (`run_until`) hands the heaps' free memory back on its own, with the
# same fragments left behind; a stand-in worker, since the loop only stops its workers.
CENTRAL = """
import json, sys, threading, time
from edgebox.central.worker import run_until
from edgebox.lowlevel import allocator
allocator.tune()
kept, buffers = [], []
for _ in range(48):  # below the 64 MiB a tuned heap keeps
    buffers.append(bytearray(1 << 20))
    kept.append(bytearray(3000))
buffers.clear()
class StandInWorker:
    stopped = False
    def stop(self):
        self.stopped = True
worker, stop = StandInWorker(), threading.Event()
before = allocator.resident_bytes()
loop = threading.Thread(target=run_until, args=(stop, [worker], float(sys.argv[1])))
loop.start()
time.sleep(1.5)
stop.set()
loop.join()
after = allocator.resident_bytes()
print(json.dumps({"before": before, "after": after, "stopped": worker.stopped}))
"""


@pytest.mark.skipif(not allocator.heap(), reason="mallinfo2 is glibc's (2.33 and later)")
def test_central_hands_free_memory_back_while_it_serves():
    serving, not_yet = _run(CENTRAL, 0.2), _run(CENTRAL, 3600)
    assert serving["stopped"] and not_yet["stopped"]
    assert serving["before"] - serving["after"] >= 32 << 20, serving  # given back while serving
    assert not_yet["before"] - not_yet["after"] < 16 << 20, not_yet  # not before its time
