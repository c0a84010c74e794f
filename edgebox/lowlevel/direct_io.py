"""Central's big writes and reads around the page cache (O_DIRECT) where the system allows
it, and through it where it does not.

Central writes each segment once and reads the whole file back once, to hash it at the fin.
Through the page cache the write is a copy by the CPU (on this project's benchmark VM
0.24 CPU seconds per GiB into warm memory, 0.6 to 1.4 into fresh pages, plus the kernel's
write-back later) and fills memory with bytes nobody reads again; with O_DIRECT the disk
takes them from the process's buffer itself (0.07 CPU seconds per GiB), and the fin's hash
reads what the disk holds, not a cached copy. (The box's reads for sending stay buffered:
there O_DIRECT cost more CPU than the copy it saves, 0.20 against 0.15 s/GiB, pinning the
pages of each buffer.)

O_DIRECT wants the offset, the length and the buffer's address aligned. `aligned` makes
such buffers (plain bytearrays, so paho and hashlib take them as they are); every function
here goes through the page cache instead when something is not aligned or the filesystem
refuses O_DIRECT (EINVAL: tmpfs on older kernels, some network filesystems).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

ALIGN = 4096  # a multiple of the logical block size of common disks (512 or 4096 bytes)
O_DIRECT = getattr(os, "O_DIRECT", 0)
HASH_BLOCK = 4 << 20


def aligned(size: int) -> bytearray:
    """A zeroed bytearray of `size` bytes whose data starts at a multiple of `ALIGN` when
    `size` is at least `ALIGN` (a smaller one can never be written with O_DIRECT anyway).

    Made by cutting an over-long bytearray at both ends: CPython moves the start of a
    bytearray cut at the front instead of copying what follows, and keeps its memory when
    less than half of it is cut off the end, so nothing is copied.
    """
    if size < ALIGN:
        return bytearray(size)
    raw = bytearray(size + ALIGN)
    del raw[: -address(raw) % ALIGN]
    del raw[size:]
    return raw


def address(buffer) -> int | None:
    """The memory address of a writable buffer, or None for a read-only one."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    except (TypeError, ValueError):
        return None


def is_aligned(offset: int, buffer) -> bool:
    """Whether `buffer` may be written at, or read into from, `offset` with O_DIRECT."""
    where = address(buffer) if len(buffer) else None
    return bool(O_DIRECT) and where is not None and not (offset | len(buffer) | where) % ALIGN


def open_direct(path, flags: int) -> int | None:
    """A descriptor opened with O_DIRECT, or None where the filesystem refuses it."""
    if not O_DIRECT:
        return None
    try:
        return os.open(path, flags | O_DIRECT)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise


def pwrite(path, data, offset: int) -> bool:
    """Write all of `data` at `offset` of an existing file; True if it went around the page
    cache, False if through it."""
    if is_aligned(offset, data):
        fd = open_direct(path, os.O_WRONLY)
        if fd is not None:
            try:
                if write_all(fd, data, offset):
                    return True
            finally:
                os.close(fd)
    fd = os.open(path, os.O_WRONLY)
    try:
        write_all(fd, data, offset, fallback=False)
    finally:
        os.close(fd)
    return False


def write_all(fd: int, data, offset: int, fallback: bool = True) -> bool:
    """pwrite `data` at `offset` until all is written; with `fallback`, False instead of an
    error if the first write is refused with EINVAL (O_DIRECT the filesystem will not take)."""
    with memoryview(data) as view:
        done = 0
        while done < len(view):
            try:
                done += os.pwrite(fd, view[done:], offset + done)
            except OSError as exc:
                if fallback and done == 0 and exc.errno == errno.EINVAL:
                    return False
                raise
    return True


class Reader:
    """A file opened for reading by offset: around the page cache for aligned reads where
    allowed. The descriptors stay open (and the file readable) until `close`."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY)
        try:
            self.direct_fd = open_direct(path, os.O_RDONLY)
        except BaseException:
            os.close(self.fd)
            raise

    def read_into(self, buffer: bytearray, offset: int) -> int:
        """Fill `buffer` from `offset`; the number of bytes read (fewer only at the end)."""
        fd = self.direct_fd if self.direct_fd is not None else self.fd
        if fd == self.direct_fd and not (offset % ALIGN == 0 and is_aligned(0, buffer)):
            fd = self.fd
        got = 0
        with memoryview(buffer) as view:
            while got < len(view):
                try:
                    n = os.preadv(fd, [view[got:]], offset + got)
                except OSError as exc:
                    if fd != self.direct_fd or exc.errno != errno.EINVAL:
                        raise
                    os.close(self.direct_fd)  # refused after all: through the page cache
                    self.direct_fd = None
                    fd = self.fd
                    continue
                if n == 0:
                    break
                got += n
                if got % ALIGN and fd == self.direct_fd:  # a short direct read: the end
                    break
        return got

    def close(self) -> None:
        """Close the file."""
        os.close(self.fd)
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def file_sha256(path) -> str:
    """SHA-256 of a file as the disk holds it (read around the page cache where allowed),
    reading the next block while the last one is hashed."""
    digest = hashlib.sha256()
    buffers = (aligned(HASH_BLOCK), aligned(HASH_BLOCK))
    with Reader(path) as reader, ThreadPoolExecutor(1) as ahead:
        turn, offset = 0, 0
        pending = ahead.submit(reader.read_into, buffers[0], 0)
        while got := pending.result():
            offset += got
            pending = ahead.submit(reader.read_into, buffers[1 - turn], offset)
            digest.update(memoryview(buffers[turn])[:got])
            turn = 1 - turn
    return digest.hexdigest()
