"""glibc malloc settings for the long-running processes that move footage in MiB-sized buffers
(`edgebox run`, `edgebox central run`).

Every MiB of an upload passes through a few fresh buffers (the body read, the ciphertext, a
received MQTT payload). With glibc's defaults, freeing them at the top of a thread's heap
hands the memory back to the kernel (trim), and the next buffer takes it back one page
fault and one zeroed page at a time: on the benchmark machine perf put some 9% of the box's
CPU during an upload in those faults. Keeping up to `TRIM` bytes of freed memory per heap
and limiting the heaps to `ARENAS` stops that churn while bounding what is kept.

A setting given in the environment (`MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`,
`MALLOC_ARENA_MAX`) wins; nothing happens where the C library has no `mallopt` (musl).

Kept buffers have a cost the soak measured: small allocations that live on (SQLite's pages,
Python objects) settle in the holes freed buffers leave, the next buffer no longer fits there,
and the heap grows around the holes. Memory in use stayed flat while the box's RSS rose by
some 60 MiB an hour, all of it free memory inside the heaps. `release` hands the whole pages
of that free memory back to the kernel (`malloc_trim`, well under a millisecond); the box runs
it every minute (the `release_memory` job), and so does central between messages
(`edgebox.central.worker.run_until`), so what stays resident is what is in use, and a burst of
uploads between two runs still reuses its buffers.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

TRIM = 64 << 20  # freed memory a heap keeps before giving any back
MMAP = 4 << 20  # larger allocations get their own mapping, returned when freed
ARENAS = 2


def tune() -> dict[str, int]:
    """Apply the settings this process has not been given in its environment; returns what
    was set (empty where `mallopt` is missing)."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return {}
    wanted = {
        "MALLOC_TRIM_THRESHOLD_": (M_TRIM_THRESHOLD, TRIM),
        "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, MMAP),
        "MALLOC_ARENA_MAX": (M_ARENA_MAX, ARENAS),
    }
    applied = {}
    for name, (param, value) in wanted.items():
        if name not in os.environ and mallopt(param, value) == 1:
            applied[name] = value
    return applied


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # glibc's struct mallinfo2 (2.33 and later), every field a size_t
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def resident_bytes() -> int:
    """This process's resident memory (from /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _libc_function(name: str):
    """The C library's function `name`, or None where there is none (musl, a static build)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def heap() -> dict[str, int]:
    """The heaps' bytes in use and free (glibc's mallinfo2, 2.33 and later); empty where it
    is missing."""
    mallinfo2 = _libc_function("mallinfo2")
    if mallinfo2 is None:
        return {}
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {
        "in_use": info.uordblks + info.hblkhd,  # heap chunks, plus chunks mapped on their own
        "free": info.fordblks,
    }


def release() -> dict[str, int]:
    """Give the free pages inside the heaps back to the kernel (glibc's `malloc_trim`); returns
    the resident bytes before and after, how many were given back, and the heaps' use after
    (empty without glibc)."""
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is None:
        return {}
    before = resident_bytes()
    malloc_trim(ctypes.c_size_t(0))
    after = resident_bytes()
    return {
        "resident_before": before,
        "resident_after": after,
        "released": max(0, before - after),
        **heap(),
    }
