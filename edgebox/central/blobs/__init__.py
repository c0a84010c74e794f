"""Where central keeps complete files: one small interface, two stores.

- `LocalBlobs` (`edgebox.central.blobs.local`): a folder, the default; a key is a path
  under it, written with fsync and renamed into place.
- `S3Blobs` (`edgebox.central.blobs.s3`): any S3-compatible object store (SeaweedFS,
  MinIO, AWS S3) through boto3: multipart uploads with a SHA-256 checksum per part that the
  store checks, retries with back-off, and a HEAD of size and checksum before the caller
  may acknowledge anything.

Every store answers the same calls: `begin(key, sha256)` → `Upload` (`part(bytes)` as many
times as needed, then `commit()` or `abort()`), `keep(key, path, sha256, size)` (take a
complete, already checked local file in), `put`, `get`, `head`, `exists`, `delete`, `list`. A store
that cannot be reached raises `StoreUnavailable`; one that holds other bytes than were sent
raises `StoreMismatch`: central raises an alarm and answers nothing, so the box sends again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgebox.errors import ConfigError, EdgeboxError


class StoreError(EdgeboxError):
    """The blob store did not keep what it was given."""

    status = 503


class StoreUnavailable(StoreError):
    """The blob store cannot be reached or refused the request: try again later."""


class StoreMismatch(StoreError):
    """The blob store holds other bytes (size or checksum) than were written."""


@dataclass(frozen=True)
class Stat:
    """What the store says it holds under a key: size and the SHA-256 it was given (hex)."""

    size: int
    sha256: str | None


class Upload(Protocol):
    """One object written by parts; nothing is visible under its key before `commit()`."""

    def part(self, data: bytes) -> None:
        """Append the next bytes."""

    def commit(self) -> Stat:
        """Make the object durable and visible, after checking what the store holds."""

    def abort(self) -> None:
        """Drop what was written."""


class BlobStore(Protocol):
    """The calls central makes on its store of complete files."""

    url: str

    def begin(self, key: str, sha256: str | None = None) -> Upload:
        """Start writing `key`; `sha256` (hex), when given, is checked at commit."""

    def keep(self, key: str, path: Path, sha256: str, size: int) -> Stat:
        """Take a complete local file in (it may be moved or copied; the caller drops it)."""

    def put(self, key: str, data: bytes) -> Stat:
        """Write a small object whole."""

    def get(self, key: str) -> bytes:
        """The bytes under `key` (FileNotFoundError when none)."""

    def download(self, key: str, path: Path) -> None:
        """Copy the object under `key` into a local file."""

    def head(self, key: str) -> Stat | None:
        """Size and SHA-256 of the object under `key`, or None."""

    def exists(self, key: str) -> bool:
        """Whether an object is under `key` (cheap: no hashing)."""

    def delete(self, key: str) -> None:
        """Remove the object under `key` (no error when there is none)."""

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under `prefix`, in key order."""

    def folder(self) -> Path | None:
        """The local folder the keys live in, when the store is one (else None)."""


def check_key(key: str) -> str:
    """Refuse keys that could escape the store (absolute, `..`, empty parts)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"unsafe blob key {key!r}")
    return key


def open_store(spec: str | Path) -> BlobStore:
    """The store a `--store` value names: `s3://bucket/prefix` or a folder.

    S3 credentials and the endpoint come from boto3's usual places (AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY or a shared credentials file or instance role,
    AWS_ENDPOINT_URL_S3 for a non-AWS store), never from the command line."""
    text = str(spec)
    if text.startswith("s3://"):
        from edgebox.central.blobs.s3 import S3Blobs

        return S3Blobs.from_url(text)
    if "://" in text:
        raise ConfigError(f"unknown store {text!r}: give a folder or s3://bucket/prefix")
    from edgebox.central.blobs.local import LocalBlobs

    return LocalBlobs(Path(text))
