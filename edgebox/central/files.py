"""Central's file store: positional, idempotent segment writes that any worker may make.

Layout under the store folder:

- `transfers/<box>/<tid>/init.json`: the accepted init message;
- `transfers/<box>/<tid>/data`: the file, preallocated, written by offset (around the
  page cache where it can, `edgebox.lowlevel.direct_io`);
- `transfers/<box>/<tid>/present`: one byte per segment, 1 once it is stored and
  hash-checked;
- `replicas/<box>/...`: complete replica files and sets (`edgebox.central.replicas`).

Complete recordings go to the blob store (`edgebox.central.blobs`) under
`boxes/<box>/recordings/<recording>.ebv` and `.manifest.json`: this same folder by default,
or an S3 bucket.

Completion is decided from what is stored (present marks, size, whole-file hash), never
from which worker saw which message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import zlib
from pathlib import Path

from edgebox.lowlevel import direct_io
from edgebox.lowlevel.durable import atomic_write, fsync_dir

LOCK_STRIPES = 64
# Held across a hand-over to the store (an S3 upload), so more of them: two recordings that
# share one wait for each other.
RECORDING_LOCK_STRIPES = 1024


def recording_lock(root: Path, box_id: str, recording_id: str):
    """Serialise what decides a recording's bytes at central (the check that no other bytes
    are held, the hand-over to the store, the index row) across workers: two transfers of
    one recording with different bytes have different transfer ids, so their own locks do
    not exclude each other. Taken only under a transfer's lock, never the other way round,
    and from lock files of its own, so the two never wait on each other in a circle."""
    stripe = zlib.crc32(f"{box_id}/{recording_id}".encode()) % RECORDING_LOCK_STRIPES
    return _held(Path(root) / "transfers" / ".locks" / f"recording-{stripe}.lock")


@contextlib.contextmanager
def _held(lock_path: Path, shared: bool = False):
    """Hold an flock on `lock_path` (made on first use) for the block: per open file, so
    threads of one process exclude each other as processes do."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    try:
        fd = os.open(lock_path, flags, 0o644)
    except FileNotFoundError:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class Transfer:
    """One file transfer's folder in the store."""

    def __init__(self, root: Path, box_id: str, tid: str):
        self.folder = Path(root) / "transfers" / box_id / tid
        stripe = zlib.crc32(f"{box_id}/{tid}".encode()) % LOCK_STRIPES
        self.lock_path = Path(root) / "transfers" / ".locks" / f"{stripe}.lock"
        self.data = self.folder / "data"
        self.present = self.folder / "present"
        self.init_path = self.folder / "init.json"

    @property
    def exists(self) -> bool:
        """Whether an init was accepted for this transfer."""
        return self.init_path.exists()

    @property
    def cut_short(self) -> bool:
        """Whether a crash cut its completion short: the init is there but the data file was
        already handed to the blob store (`edgebox.central.channel` settles it)."""
        return self.exists and not self.data.exists()

    def init(self) -> dict:
        """The accepted init message."""
        return json.loads(self.init_path.read_text())

    def create(self, init: dict) -> None:
        """Accept an init: make the folder, the preallocated data file and the (empty) map of
        present segments (idempotent)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fresh = not self.data.exists()  # marks without their data are not trusted
        for path, size in ((self.data, init["size"]), (self.present, 0)):
            if fresh or not path.exists():
                with open(path, "wb") as handle:
                    handle.truncate(size)
        if not self.exists:
            atomic_write(self.init_path, json.dumps(init).encode())
            fsync_dir(self.folder)

    def have(self, chunk: int) -> list[int]:
        """Offsets already stored and checked (segments of `chunk` bytes)."""
        try:
            marks = self.present.read_bytes()
        except FileNotFoundError:
            return []
        return [n * chunk for n, mark in enumerate(marks) if mark]

    def put(self, offset: int, data: bytes, chunk: int) -> None:
        """Write one checked segment at its offset, then mark it present: byte
        `offset // chunk` of `present` becomes 1 (positional too, so any worker may write).

        No fsync per segment: `sync()` makes the file durable before the fin decision,
        and that decision re-hashes the whole file, so a segment lost in a crash is
        noticed (and sent again) rather than trusted.
        """
        direct_io.pwrite(self.data, data, offset)
        fd = os.open(self.present, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, b"\x01", offset // chunk)
        finally:
            os.close(fd)

    def sync(self) -> None:
        """Make the whole file durable (before it is hashed and moved into place)."""
        fd = os.open(self.data, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def forget_segments(self) -> None:
        """Mark every segment missing (after a whole-file hash mismatch all is sent again)."""
        os.truncate(self.present, 0)

    def locked(self, shared: bool = False):
        """Serialise init and fin decisions across workers, threads and processes (striped
        lock files outside the transfer folder, which completion removes). Segment writes
        hold it `shared`: many at once, but never while a fin moves the file into place or
        drops the marks."""
        return _held(self.lock_path, shared)

    def hand_over(self, blobs, key: str, init: dict, manifest: dict | None = None) -> None:
        """Hand the verified file to the blob store under `key` (a recording's with its
        manifest beside it). The store has checked what it holds before this returns
        (`edgebox.central.blobs`); if it fails, the folder stays and the box's next fin tries
        again. The caller drops the folder (`discard`) once the file is recorded."""
        if manifest is not None:
            blobs.put(manifest_key(key), json.dumps(manifest, indent=2, sort_keys=True).encode())
        blobs.keep(key, self.data, init["sha256"], init["size"])

    def discard(self) -> None:
        """Drop the transfer's folder (its file is complete elsewhere, or will be sent anew)."""
        shutil.rmtree(self.folder, ignore_errors=True)


class InitCache:
    """The accepted inits' size, chunk and hash, so a segment costs one stat, not a JSON parse.

    An entry is trusted only while `init.json` is the same file (inode and mtime); a transfer
    completed and accepted again (possibly with another chunk size) is read afresh.
    """

    LIMIT = 4096

    def __init__(self):
        self._entries: dict[Path, tuple] = {}

    def get(self, transfer: Transfer) -> dict | None:
        """{"size", "chunk", "sha256"} of the transfer's init, or None if none was accepted."""
        path = transfer.init_path
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None
        stamp = (stat.st_ino, stat.st_mtime_ns)
        entry = self._entries.get(path)
        if entry is None or entry[0] != stamp:
            try:
                init = transfer.init()
            except FileNotFoundError:
                return None
            if len(self._entries) >= self.LIMIT:
                self._entries.clear()
            entry = self._entries[path] = (
                stamp,
                {k: init[k] for k in ("size", "chunk", "sha256")},
            )
        return entry[1]


def segments_present(root: Path) -> set[tuple[str, str, int]]:
    """(box, tid, segment number) of every stored, checked segment of the transfers under way:
    how tests and benchmarks watch central's progress."""
    found = set()
    for present in (Path(root) / "transfers").glob("*/*/present"):
        with contextlib.suppress(OSError):
            box, tid = present.parent.parent.name, present.parent.name
            found.update((box, tid, n) for n, mark in enumerate(present.read_bytes()) if mark)
    return found


def recording_key(box_id: str, recording_id: str) -> str:
    """The blob key of a complete recording."""
    return f"boxes/{box_id}/recordings/{recording_id}.ebv"


def manifest_key(key: str) -> str:
    """The blob key of the manifest beside a recording's."""
    return key.removesuffix(".ebv") + ".manifest.json"


def recording_path(root: Path, box_id: str, recording_id: str) -> Path:
    """Where a folder store keeps a complete recording."""
    return Path(root) / recording_key(box_id, recording_id)


def file_sha256(path: Path) -> str:
    """SHA-256 of a stored file."""
    return direct_io.file_sha256(path)
