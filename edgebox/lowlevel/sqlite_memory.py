"""SQLite's own count of the memory it holds in this process (`sqlite3_memory_used`): every
connection's page cache, prepared statements and schema.

Python's sqlite3 module does not offer it, so it is called through ctypes in the SQLite this
Python runs: a shared libsqlite3 when one is mapped into the process, else the module's own
build (SQLite linked into it). Where neither exports the function the figure is None.
"""

from __future__ import annotations

import _sqlite3
import ctypes
import functools
import sqlite3  # noqa: F401 - loads the SQLite library that /proc/self/maps then names


@functools.cache
def _memory_used():
    try:
        with open("/proc/self/maps") as maps:
            mapped = sorted({line.split()[-1] for line in maps if "libsqlite3" in line})
    except OSError:
        mapped = []
    for library in [*mapped, _sqlite3.__file__]:
        try:
            function = ctypes.CDLL(library).sqlite3_memory_used
        except (OSError, AttributeError):
            continue
        function.restype = ctypes.c_int64
        return function
    return None


def used() -> int | None:
    """Bytes SQLite holds in this process now, or None where its count cannot be reached."""
    function = _memory_used()
    return None if function is None else int(function())
