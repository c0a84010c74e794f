"""Central's writes and reads around the page cache (`edgebox.direct_io`), on real files: the
bytes are the same whichever way they went, aligned writes really go around the cache where
the filesystem allows it, and anything unaligned goes through it."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from edgebox.lowlevel import direct_io


def _direct_allowed(folder) -> bool:
    probe = folder / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_RDONLY | direct_io.O_DIRECT))
    except OSError as exc:
        assert exc.errno == errno.EINVAL
        return False
    return bool(direct_io.O_DIRECT)


@pytest.mark.parametrize("size", [4096, 4097, 65_537, 1 << 20])
def test_aligned_buffers_start_on_a_block_and_hold_exactly_their_size(size):
    buffer = direct_io.aligned(size)
    assert isinstance(buffer, bytearray)
    assert len(buffer) == size and not any(buffer)
    assert direct_io.address(buffer) % direct_io.ALIGN == 0
    buffer[-1:] = b"x"  # an ordinary, writable bytearray
    assert buffer[-1:] == b"x" and direct_io.address(buffer) % direct_io.ALIGN == 0


def test_small_buffers_are_plain_and_read_only_ones_have_no_address():
    assert direct_io.aligned(0) == bytearray() and direct_io.aligned(4095) == bytearray(4095)
    assert direct_io.address(bytes(3)) is None and direct_io.address(memoryview(b"ab")) is None


def test_aligned_writes_go_around_the_page_cache_and_the_rest_through_it(tmp_path):
    path = tmp_path / "data"
    align = direct_io.ALIGN
    size = 5 * align + 100
    path.write_bytes(b"\0" * size)
    block = direct_io.aligned(align)
    block[:] = os.urandom(align)
    writes = [
        (block, 0, _direct_allowed(tmp_path)),
        (bytes(block), align, False),  # read-only: no address to check
        (block, 2 * align + 512, False),  # offset not on a block
        (os.urandom(100), 5 * align, False),  # length not a whole block
    ]
    expected = bytearray(size)
    for data, offset, direct in writes:
        assert direct_io.pwrite(path, data, offset) is direct
        expected[offset : offset + len(data)] = data
    assert path.read_bytes() == expected
    assert direct_io.file_sha256(path) == hashlib.sha256(expected).hexdigest()


@pytest.mark.parametrize(
    "size", [0, 1, 4095, 4096, direct_io.HASH_BLOCK - 1, direct_io.HASH_BLOCK + 1, 9_437_201]
)
def test_file_hash_read_from_the_disk_equals_hashlib(tmp_path, size):
    path = tmp_path / "f"
    data = os.urandom(size)
    path.write_bytes(data)
    assert direct_io.file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_a_file_written_both_ways_reads_back_whole_before_and_after_fsync(tmp_path):
    """Central's case: full segments around the cache, the last one (odd length) through it,
    still dirty in the cache when the fin hashes the file."""
    chunk = 1 << 20
    path = tmp_path / "data"
    size = 2 * chunk + 12_345
    with open(path, "wb") as handle:
        handle.truncate(size)
    data = os.urandom(size)
    went = []
    for offset in range(0, size, chunk):
        piece = direct_io.aligned(min(chunk, size - offset))
        piece[:] = data[offset : offset + chunk]
        went.append(direct_io.pwrite(path, piece, offset))
    assert went == [_direct_allowed(tmp_path)] * 2 + [False]
    assert direct_io.file_sha256(path) == hashlib.sha256(data).hexdigest()
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    assert direct_io.file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_a_missing_file_is_an_error_not_a_hash(tmp_path):
    with pytest.raises(FileNotFoundError):
        direct_io.file_sha256(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError):
        direct_io.pwrite(tmp_path / "nothing", direct_io.aligned(4096), 0)
