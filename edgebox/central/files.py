"""Central's file store: positional, idempotent segment writes that any worker may make.

Layout under the store folder:

- `transfers/<box>/<tid>/init.json`: the accepted init message;
- `transfers/<box>/<tid>/data`: the file, preallocated, written by offset;
- `transfers/<box>/<tid>/have/<offset>`: a marker per stored, hash-checked segment;
- `boxes/<box>/recordings/<recording>.ebv` and `.manifest.json`: complete recordings;
- `replicas/<box>/...`: complete replica files and sets (`edgebox.central.replicas`).

Completion is decided from what is stored (markers, size, whole-file hash), never
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

from edgebox import vault
from edgebox.durable import atomic_write, fsync_dir

LOCK_STRIPES = 64


class Transfer:
    """One file transfer's folder in the store."""

    def __init__(self, root: Path, box_id: str, tid: str):
        self.folder = Path(root) / "transfers" / box_id / tid
        stripe = zlib.crc32(f"{box_id}/{tid}".encode()) % LOCK_STRIPES
        self.lock_path = Path(root) / "transfers" / ".locks" / f"{stripe}.lock"
        self.data = self.folder / "data"
        self.have_dir = self.folder / "have"

    @property
    def exists(self) -> bool:
        """Whether an init was accepted for this transfer."""
        return (self.folder / "init.json").exists()

    def init(self) -> dict:
        """The accepted init message."""
        return json.loads((self.folder / "init.json").read_text())

    def create(self, init: dict) -> None:
        """Accept an init: make the folder and the preallocated data file (idempotent)."""
        self.have_dir.mkdir(parents=True, exist_ok=True)
        if not self.data.exists():
            with open(self.data, "wb") as handle:
                handle.truncate(init["size"])
        if not self.exists:
            atomic_write(self.folder / "init.json", json.dumps(init).encode())
            fsync_dir(self.folder)

    def have(self) -> list[int]:
        """Offsets already stored and checked."""
        if not self.have_dir.exists():
            return []
        return sorted(int(p.name) for p in self.have_dir.iterdir() if p.name.isdigit())

    def put(self, offset: int, data: bytes) -> None:
        """Write one checked segment at its offset, then mark it present.

        No fsync per segment: `sync()` makes the file durable before the fin decision,
        and that decision re-hashes the whole file, so a segment lost in a crash is
        noticed (and sent again) rather than trusted.
        """
        fd = os.open(self.data, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        os.close(os.open(self.have_dir / str(offset), os.O_WRONLY | os.O_CREAT, 0o644))

    def sync(self) -> None:
        """Make the whole file durable (before it is hashed and moved into place)."""
        fd = os.open(self.data, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def forget_segments(self) -> None:
        """Drop every marker (after a whole-file hash mismatch everything is sent again)."""
        shutil.rmtree(self.have_dir, ignore_errors=True)
        self.have_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self, shared: bool = False):
        """Serialise init and fin decisions across workers, threads and processes (striped
        lock files outside the transfer folder, which completion removes). Segment writes
        hold it `shared`: many at once, but never while a fin moves the file into place or
        drops the markers."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def complete_into(self, destination: Path, manifest: dict | None = None) -> None:
        """Move the verified file into place (a recording's with its manifest beside it)."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        if manifest is not None:
            atomic_write(
                destination.with_suffix(".manifest.json"),
                json.dumps(manifest, indent=2, sort_keys=True).encode(),
            )
        os.replace(self.data, destination)
        fsync_dir(destination.parent)
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
        path = transfer.folder / "init.json"
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


def recording_path(root: Path, box_id: str, recording_id: str) -> Path:
    """Where central keeps a complete recording."""
    return Path(root) / "boxes" / box_id / "recordings" / f"{recording_id}.ebv"


def file_sha256(path: Path) -> str:
    """SHA-256 of a stored file."""
    return vault.file_sha256(path)
