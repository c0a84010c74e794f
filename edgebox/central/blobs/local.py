"""The blob store as a local folder: central's default, the layout it always had."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from edgebox.central.blobs import Stat, StoreMismatch, check_key
from edgebox.lowlevel.durable import atomic_write, fsync_dir
from edgebox.vault import file_sha256


class LocalUpload:
    """Parts appended to a hidden file beside the key's; fsync and rename at commit."""

    def __init__(self, target: Path, sha256: str | None):
        self.target = target
        self.sha256 = sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        self.handle = open(self.temporary, "xb")  # noqa: SIM115 - closed in commit/abort
        self.digest = hashlib.sha256()
        self.size = 0

    def part(self, data: bytes) -> None:
        """Append the next bytes."""
        self.handle.write(data)
        self.digest.update(data)
        self.size += len(data)

    def commit(self) -> Stat:
        """fsync, check the declared hash, rename into place."""
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        digest = self.digest.hexdigest()
        if self.sha256 is not None and digest != self.sha256:
            self.abort()
            raise StoreMismatch(f"{self.target.name}: wrote {digest}, expected {self.sha256}")
        os.replace(self.temporary, self.target)
        fsync_dir(self.target.parent)
        return Stat(self.size, digest)

    def abort(self) -> None:
        """Drop the hidden file."""
        self.handle.close()
        self.temporary.unlink(missing_ok=True)


class LocalBlobs:
    """Keys are paths under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.url = str(self.root)

    def path(self, key: str) -> Path:
        """The file of a key."""
        return self.root / check_key(key)

    def folder(self) -> Path:
        """The folder the keys live in."""
        return self.root

    def begin(self, key: str, sha256: str | None = None) -> LocalUpload:
        """Start writing `key`."""
        return LocalUpload(self.path(key), sha256)

    def keep(self, key: str, path: Path, sha256: str, size: int) -> Stat:
        """Move a checked file into place (a rename within the store's filesystem, as central
        always did) and make the rename durable."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        fsync_dir(target.parent)
        return Stat(size, sha256)

    def put(self, key: str, data: bytes) -> Stat:
        """Write a small file atomically."""
        atomic_write(self.path(key), data)
        return Stat(len(data), hashlib.sha256(data).hexdigest())

    def get(self, key: str) -> bytes:
        """The file's bytes."""
        return self.path(key).read_bytes()

    def download(self, key: str, path: Path) -> None:
        """Copy the file."""
        shutil.copyfile(self.path(key), path)

    def head(self, key: str) -> Stat | None:
        """Size and SHA-256 (hashed now: a folder keeps no checksum beside the file)."""
        target = self.path(key)
        if not target.is_file():
            return None
        return Stat(target.stat().st_size, file_sha256(target))

    def exists(self, key: str) -> bool:
        """Whether the file is there."""
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove the file."""
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def list(self, prefix: str) -> Iterator[str]:
        """Files under `prefix` (a folder prefix or the start of a name), hidden ones skipped."""
        base = self.root / prefix.rstrip("/") if prefix.endswith("/") else self.root
        if not base.is_dir():
            return iter(())
        keys = (
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )
        return iter(sorted(k for k in keys if k.startswith(prefix)))
