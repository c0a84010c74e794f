"""The vault writer's output (`edgebox.direct_append`), on real files: whatever the sizes of the
pieces and however often it settles, the file holds exactly the bytes appended; the data goes
around the page cache (only the last partial block may be cached, checked with util-linux's
`fincore`); staging memory is reused and never changed under a reader; a truncate drops
exactly what came after; a full disk is reported and the file can be cut back."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import subprocess

import pytest

from edgebox.errors import VaultError
from edgebox.lowlevel import direct_append
from edgebox.lowlevel.direct_append import BufferPool, DirectAppender
from edgebox.lowlevel.direct_io import ALIGN
from edgebox.vault import HEADER_AREA, Reader, Writer, new_header
from tests.test_full_disk import fill_up, small_disk  # noqa: F401  (a fixture)

MIB = 1 << 20


def _open(path, data: bytes = b"", **kwargs) -> tuple[int, DirectAppender]:
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    return fd, DirectAppender(path, fd, len(data), **kwargs)


def _cached_bytes(path) -> int:
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def _pieces(rng: random.Random, total: int):
    """Sizes like the vault's (a segment and its tag) mixed with odd small ones."""
    sizes = [MIB + 16, 1, ALIGN, ALIGN - 1, 3 * ALIGN + 5, 700_000, 2 * MIB + 32]
    while total > 0:
        size = min(rng.choice(sizes), total)
        total -= size
        yield size


@pytest.mark.parametrize("start", [0, 4096, 4096 + 100, 3 * MIB + 7])
def test_the_file_holds_exactly_what_was_appended_however_it_was_cut(tmp_path, start):
    rng = random.Random(start)
    path = tmp_path / "out"
    expected = bytearray(os.urandom(start))
    fd, out = _open(path, bytes(expected))
    try:
        for count, size in enumerate(_pieces(rng, 24 * MIB)):
            piece = rng.randbytes(size)
            if count % 2 or size > out.pool.size - ALIGN:
                out.append(piece)  # any length: split into pieces a stage holds
            else:  # filled in place, as the vault encrypts into it
                view = out.reserve(size)
                view[:] = piece
                out.commit(size)
            expected += piece
            assert out.end == len(expected)
            if count % 7 == 3:
                out.settle()  # what the file holds is then exactly what was appended
                assert path.read_bytes() == expected
            if count % 11 == 5:
                out.sync()
                out.release()  # buffers back to the pool; the next piece takes them again
        out.sync()
        assert path.read_bytes() == expected
    finally:
        out.close()
        os.close(fd)


def test_the_data_goes_around_the_page_cache(tmp_path):
    if not shutil.which("fincore"):
        pytest.skip("util-linux's fincore is not installed")
    path = tmp_path / "out"
    fd, out = _open(path)
    try:
        if out.direct_fd is None:
            pytest.skip("this filesystem refuses O_DIRECT")
        for _ in range(16):
            out.append(os.urandom(MIB + 16))
            out.sync()  # the vault syncs at the end of every PATCH: one partial block cached
        assert path.stat().st_size == 16 * (MIB + 16)
        assert _cached_bytes(path) <= ALIGN
    finally:
        out.close()
        os.close(fd)
    assert path.read_bytes()[:16] != bytes(16)


def test_without_o_direct_the_same_bytes_go_through_the_page_cache(tmp_path, monkeypatch):
    """A filesystem that refuses O_DIRECT (tmpfs on older kernels) cannot be mounted here on
    demand, so its refusal is simulated: open_direct answers None, as it does there."""
    monkeypatch.setattr(direct_append, "open_direct", lambda path, flags: None)
    path = tmp_path / "out"
    data = os.urandom(5 * MIB + 333)
    fd, out = _open(path, b"head")
    try:
        assert out.direct_fd is None
        for offset in range(0, len(data), MIB + 16):
            out.append(data[offset : offset + MIB + 16])
        out.sync()
    finally:
        out.close()
        os.close(fd)
    assert path.read_bytes() == b"head" + data


def test_memory_handed_out_changes_only_after_before_reuse(tmp_path):
    """Every view handed out keeps its bytes until `before_reuse` has been called for it: a
    hashing thread may still be reading it."""
    live: list[tuple[memoryview, bytes]] = []  # views, with what they must still hold
    calls = []

    def before_reuse(buffer):
        mine = [(view, content) for view, content in live if view.obj is buffer]
        for view, content in live:
            assert view == content, "a view changed before before_reuse of its buffer"
        calls.append(len(mine))
        live[:] = [item for item in live if item[0].obj is not buffer]

    pool = BufferPool(2 * MIB + 2 * ALIGN, keep=2)
    fd, out = _open(tmp_path / "out", before_reuse=before_reuse, pool=pool)
    try:
        for index in range(12):
            piece = bytes([index]) * (MIB + 16)
            view = out.reserve(len(piece))
            view[:] = piece
            out.commit(len(piece))
            live.append((view, piece))
        out.sync()
        out.release()
        assert sum(calls) == 12 and not live  # every view was covered by one call
        assert pool._free and len(pool._free) <= 2
        taken = list(pool._free)
        out.append(b"more")
        assert out._buffers and all(any(b is t for t in taken) for b in out._buffers)
    finally:
        out.close()
        os.close(fd)


def test_truncate_drops_what_came_after_and_appending_goes_on(tmp_path):
    path = tmp_path / "out"
    first, second, third = os.urandom(3 * MIB + 5), os.urandom(2 * MIB + 9), os.urandom(MIB)
    fd, out = _open(path)
    try:
        out.append(first)
        out.settle()
        kept = out.end
        out.append(second)
        with pytest.raises(ValueError, match="only .* bytes are on file"):
            out.truncate(kept + 10)  # past what is settled: refused, nothing changes
        assert out.end == kept + len(second)
        out.settle()
        assert path.read_bytes() == first + second
        out.truncate(kept)
        assert out.end == kept and path.read_bytes() == first
        out.append(third)
        out.sync()
        assert path.read_bytes() == first + third
    finally:
        out.close()
        os.close(fd)


def test_a_piece_larger_than_a_staging_buffer_is_refused(tmp_path):
    fd, out = _open(tmp_path / "out", pool=BufferPool(MIB + ALIGN, keep=1))
    try:
        with pytest.raises(ValueError, match="do not fit"):
            out.reserve(MIB + 1)
        assert out.end == 0
    finally:
        out.close()
        os.close(fd)


def test_a_full_disk_is_reported_and_the_file_cut_back(small_disk):  # noqa: F811
    path = small_disk / "out"
    fd, out = _open(path)
    try:
        out.append(os.urandom(MIB + 16))
        out.sync()
        kept = path.read_bytes()
        with pytest.raises(OSError) as raised:
            for _ in range(200):  # more than the 96 MiB filesystem holds
                out.append(os.urandom(MIB + 16))
            out.settle()
        assert raised.value.errno in (errno.ENOSPC, errno.EDQUOT)
        for again in (out.settle, lambda: out.reserve(10)):  # sticky until the truncate
            with pytest.raises(OSError):
                again()
        out.truncate(len(kept))
        assert path.read_bytes() == kept
        out.append(b"after")  # the space is back: appending works again
        out.sync()
        assert path.read_bytes() == kept + b"after"
    finally:
        out.close()
        os.close(fd)


# -- the vault writer on a full disk ---------------------------------------------------------


def _writer(folder, size: int, segment: int = MIB):
    key = os.urandom(32)
    header = new_header(
        recording_id="full",
        device_id="cam",
        plaintext_size=size,
        data_key=key,
        stanzas=[],
        segment_size=segment,
    )
    return Writer.create(folder / "full.part", header, key), key


def test_a_sync_that_fails_retires_the_tags_of_what_may_be_on_disk(small_disk):  # noqa: F811
    """Segments whose writing failed at the end of a chunk may still be on the disk: a
    rollback then refuses different bytes under their nonces, and takes the same ones."""
    data = os.urandom(4 * MIB)
    writer, key = _writer(small_disk, len(data))
    try:
        fill_up(small_disk / "filler", leave=256 << 10)
        mark = writer.mark()
        writer.write(data[: MIB + 5])  # one segment, staged: written only by the sync
        with pytest.raises(OSError) as raised:
            writer.sync()
        assert raised.value.errno in (errno.ENOSPC, errno.EDQUOT)
        writer.rollback(mark)
        assert writer.offset == 0
        (small_disk / "filler").unlink()
        with pytest.raises(VaultError, match="already stored with different bytes"):
            writer.write(os.urandom(MIB))
        writer.rollback(mark)
        writer.write(data)
        summary = writer.finish(small_disk / "full.vault")
    finally:
        writer.close()
    assert summary.evidence_sha256 == hashlib.sha256(data).hexdigest()
    assert Reader(small_disk / "full.vault", key).verify() == summary.evidence_sha256


def test_a_finish_that_fails_leaves_the_recording_resumable(small_disk):  # noqa: F811
    data = os.urandom(3 * MIB - 1)  # the last segment needs new blocks
    writer, key = _writer(small_disk, len(data))
    try:
        writer.write(data)
        writer.sync()
        size = (small_disk / "full.part").stat().st_size
        fill_up(small_disk / "filler")
        with pytest.raises(OSError):
            writer.finish(small_disk / "full.vault")  # the last segment does not fit
        assert writer.offset == len(data) and not (small_disk / "full.vault").exists()
        assert (small_disk / "full.part").stat().st_size == size
        (small_disk / "filler").unlink()
        summary = writer.finish(small_disk / "full.vault")  # the same call, with space back
    finally:
        writer.close()
    assert summary.evidence_sha256 == hashlib.sha256(data).hexdigest()
    assert Reader(small_disk / "full.vault", key).verify() == summary.evidence_sha256


def test_a_checksummed_chunk_holds_back_segments_larger_than_the_hold_limit(tmp_path):
    """With 9 MiB segments (above the 8 MiB hold limit) a chunk that fails its checksum
    still never reaches the disk, so the right bytes are taken after the rollback."""
    segment = 9 * MIB
    data = os.urandom(segment + 100)
    writer, key = _writer(tmp_path, len(data), segment=segment)
    try:
        mark = writer.mark(hold=True)
        writer.write(os.urandom(segment))  # damaged in transit: fails its checksum
        writer.rollback(mark)
        assert (tmp_path / "full.part").stat().st_size == HEADER_AREA
        writer.mark(hold=True)
        writer.write(data)
        writer.release()
        summary = writer.finish(tmp_path / "full.vault")
    finally:
        writer.close()
    assert Reader(tmp_path / "full.vault", key).verify() == hashlib.sha256(data).hexdigest()
    assert summary.segments == 2
