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
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
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
