"""Appending to a file around the page cache (O_DIRECT): the vault writer's output.

Through the page cache every byte the box stores is copied once more by the CPU, into
pages the kernel must first find and clear (on this project's benchmark VM 0.24 CPU seconds
per GiB into warm memory and up to 1.5 into fresh pages, the largest single item of an
upload), and an fsync then waits for all of it to reach the disk. Here the ciphertext is
encrypted straight into an aligned staging buffer (`reserve` hands out the place) and whole
blocks go to the disk from there, on an I/O thread while the next buffer fills, so an fsync
finds almost everything written already. Only the last, partial block goes through the page
cache, when the data must be on the file (`settle`, `sync`): O_DIRECT writes whole aligned
blocks only, and the next direct write of that block replaces the cached copy (the kernel
writes back and drops cached pages of a range before a direct write to it).

Staging buffers come from a small shared pool and go back to it at `release` (the vault
writer releases at every sync), so a box with many open uploads does not hold two per
upload, and the pool's buffers stay warm. Where the filesystem refuses O_DIRECT the same
blocks are written through the page cache.
"""

from __future__ import annotations

import errno
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from edgebox.lowlevel.direct_io import ALIGN, aligned, open_direct, write_all

STEP = 1 << 20  # bytes of one background write
POOLED_BYTES = 17 << 20  # idle staging memory a pool keeps (but always two buffers)
_io: ThreadPoolExecutor | None = None
_io_lock = threading.Lock()


def _io_threads() -> ThreadPoolExecutor:
    """The threads doing staged writes, shared by every appender."""
    global _io
    with _io_lock:
        if _io is None:
            _io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vault-io")
        return _io


class BufferPool:
    """Aligned buffers of one size, kept for reuse (at most `keep` of them; by default as
    many as fit POOLED_BYTES, and at least two)."""

    def __init__(self, size: int, keep: int | None = None):
        self.size = size
        self.keep = keep if keep is not None else max(2, POOLED_BYTES // size)
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        """A buffer of `size` bytes (old contents, not zeroed)."""
        with self._lock:
            if self._free:
                return self._free.pop()
        return aligned(self.size)

    def give(self, buffer: bytearray) -> None:
        """Return a buffer nobody uses any more."""
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buffer)


_pools: dict[int, BufferPool] = {}


def pool_for(piece: int) -> BufferPool:
    """The shared pool whose buffers hold two `piece`s after a partial block: two vault
    segments with their tags (1 MiB by default, configurable up to 16 MiB)."""
    size = -(-(2 * piece + ALIGN - 1) // ALIGN) * ALIGN
    with _io_lock:
        return _pools.setdefault(size, BufferPool(size))


class DirectAppender:
    """Appends to the file open as `fd` from offset `end` on.

    `reserve(n)` gives a view of the next `n` bytes to fill, `commit(n)` adds them. Bytes are
    on the file after `settle` (or `sync`, which also fsyncs); before that, part of them may
    only be in memory. `before_reuse(buffer)` is called before a staging buffer behind views
    handed out may change (refilled or given back), so a caller still reading such views
    elsewhere (a hashing thread) can wait for that first. An error of a background write
    (a full disk) is raised by the next `reserve`, `append` or `settle`, and again by every
    one after, until a `truncate` drops what may not have been written.
    """

    def __init__(self, path, fd: int, end: int, before_reuse=lambda buffer: None, pool=None):
        self.fd = fd
        self.direct_fd = open_direct(path, os.O_WRONLY)
        self._refused = self.direct_fd is None  # O_DIRECT refused: through the page cache
        self.before_reuse = before_reuse
        self.pool = pool or pool_for(STEP)
        self._error: OSError | None = None  # a background write failed: sticky until truncate
        self._buffers: list[bytearray] = []  # [the one filling, the spare]
        self._start(end, b"")

    @property
    def end(self) -> int:
        """Where the next byte goes: the file's length once settled."""
        return self.base + self.fill

    def _start(self, end: int, partial: bytes) -> None:
        self.base = end - end % ALIGN  # the file offset of the filling buffer's first byte
        self.fill = end - self.base
        self.on_file = end  # the file's length when last settled
        self._partial = partial  # the bytes [base, end) while no buffer is taken
        self._sent = 0  # bytes of the filling buffer handed to a background write
        self._writes: list[tuple[bytearray, Future]] = []

    def _buffer(self) -> bytearray:
        if not self._buffers:
            self._buffers = [self.pool.take(), self.pool.take()]
            if self.fill and len(self._partial) != self.fill:
                self._partial = os.pread(self.fd, self.fill, self.base)  # after a reopen
                if len(self._partial) != self.fill:
                    raise OSError(errno.EIO, "short read of the file's last block")
            self._buffers[0][: self.fill] = self._partial
        return self._buffers[0]

    def reserve(self, n: int) -> memoryview:
        """A view of the next `n` bytes, to be filled by the caller and then committed."""
        if n > self.pool.size - ALIGN:
            raise ValueError(f"{n} bytes do not fit a {self.pool.size - ALIGN}-byte stage")
        if self._error is not None:
            raise self._error
        buffer = self._buffer()
        if self.fill + n > len(buffer):
            self._hand_off()
            buffer = self._buffers[0]
        return memoryview(buffer)[self.fill : self.fill + n]

    def commit(self, n: int) -> None:
        """Add the `n` reserved bytes, now filled; start writing once a step's worth of whole
        blocks waits, so that a `settle` finds little left to write."""
        self.fill += n
        if self.fill - self._sent >= STEP + ALIGN:
            self._send(self.fill - self.fill % ALIGN)

    def append(self, data) -> None:
        """Copy `data` (any length) to the end."""
        piece = self.pool.size - ALIGN
        with memoryview(data).cast("B") as source:
            for start in range(0, len(source), piece):
                part = source[start : start + piece]
                self.reserve(len(part))[:] = part
                self.commit(len(part))

    def _send(self, upto: int) -> None:
        """Start a background write of the filling buffer's bytes up to `upto` (aligned)."""
        if upto > self._sent:
            buffer = self._buffers[0]
            start, offset = self._sent, self.base + self._sent
            self._writes.append(
                (buffer, _io_threads().submit(self._write, buffer, start, upto, offset))
            )
            self._sent = upto

    def _hand_off(self) -> None:
        """Write the whole blocks staged, and go on in the other buffer with the partial
        block that is left, once the spare's own writes and readers are done with it."""
        buffer, spare = self._buffers
        whole = self.fill - self.fill % ALIGN
        self._send(whole)
        self._wait(spare)
        self.before_reuse(spare)
        rest = self.fill - whole
        spare[:rest] = memoryview(buffer)[whole : self.fill]
        self._buffers = [spare, buffer]
        self.base += whole
        self.fill = rest
        self._sent = 0

    def _wait(self, buffer: bytearray | None = None) -> None:
        """Wait for the background writes (only those from `buffer`, if given); raise the
        first error."""
        error, left = None, []
        for source, writing in self._writes:
            if buffer is not None and source is not buffer:
                left.append((source, writing))
                continue
            try:
                writing.result()
            except OSError as exc:
                error = error or exc
        self._writes = left
        self._error = self._error or error
        if self._error is not None:
            raise self._error

    def _write(self, buffer: bytearray, start: int, stop: int, offset: int) -> None:
        """Write `buffer[start:stop]` at `offset`: around the page cache unless refused."""
        with memoryview(buffer) as whole, whole[start:stop] as view:
            if self._refused or not write_all(self.direct_fd, view, offset):
                self._refused = True
                write_all(self.fd, view, offset, fallback=False)

    def settle(self) -> None:
        """Put every committed byte on the file: whole blocks around the page cache, the
        last partial block through it."""
        if self._error is not None:
            raise self._error
        if self.on_file == self.end:
            return
        whole = self.fill - self.fill % ALIGN
        self._send(whole)
        self._wait()
        with memoryview(self._buffers[0]) as view, view[whole : self.fill] as partial:
            write_all(self.fd, partial, self.base + whole, fallback=False)
        self.on_file = self.end

    def sync(self) -> None:
        """`settle`, then fsync the file."""
        self.settle()
        os.fsync(self.fd)

    def release(self) -> None:
        """Put everything on the file and give the staging buffers back to the pool."""
        self.settle()
        self._give_back()

    def _give_back(self) -> None:
        try:
            self._wait()
        except OSError:
            pass  # the caller is dropping what it was writing
        if self._buffers:
            for buffer in self._buffers:
                self.before_reuse(buffer)
            whole = self.fill - self.fill % ALIGN
            with memoryview(self._buffers[0]) as view:
                self._partial = bytes(view[whole : self.fill])
            if self.on_file == self.end:  # settled: keep only the last partial block
                self.base, self.fill, self._sent = self.base + whole, self.fill - whole, 0
            for buffer in self._buffers:
                self.pool.give(buffer)
            self._buffers = []

    def truncate(self, end: int) -> None:
        """Drop everything from `end` on, staged or on the file; `end` must be on the file
        (settled), so that nothing needs writing (after ENOSPC nothing could be)."""
        if end > self.on_file:
            raise ValueError(f"cannot truncate to {end}: only {self.on_file} bytes are on file")
        self._give_back()
        os.ftruncate(self.fd, end)
        self._start(end, b"")
        self._error = None

    def close(self) -> None:
        """`release`, and close the direct descriptor (the caller owns `fd`).

        Staged bytes that cannot be written now (a full disk) are dropped: nothing was
        promised about them before a `sync`, and the file stays as it was.
        """
        try:
            self.release()
        except OSError:
            self._give_back()
        finally:
            if self.direct_fd is not None:
                os.close(self.direct_fd)
                self.direct_fd = None
