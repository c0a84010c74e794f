"""An encrypted spool on disk: the footage of an event while it is still being recorded.

An event can last longer than memory should hold, so its pieces go to a file, each record
sealed with AES-GCM (length, nonce, ciphertext; the record's index is its associated data,
so records cannot be reordered or dropped unnoticed). The spool's key is random and kept
beside it wrapped under the box's ingest key (like a tus upload's resume key), so after a
crash the box can still finish the recording; plaintext never reaches the disk.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgebox.errors import VaultError
from edgebox.lowlevel.durable import fsync_dir

_LENGTH = struct.Struct(">I")


class Spool:
    """Append plaintext records sealed; read them back in order."""

    def __init__(self, path: Path, key: bytes, fd: int | None = None):
        self.path = Path(path)
        self._aead = AESGCM(key)
        self._fd = fd
        self.records = 0
        self.size = 0  # plaintext bytes appended
        self._key_synced = True

    @classmethod
    def create(cls, path: Path, wrapping_key: bytes) -> Spool:
        """A new empty spool with its wrapped key beside it."""
        path = Path(path)
        key = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(12)
        wrapped = AESGCM(wrapping_key).encrypt(nonce, key, path.name.encode())
        key_fd = os.open(_key_path(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(key_fd, "wb") as handle:
            handle.write(nonce + wrapped)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        spool = cls(path, key, fd)
        spool._key_synced = False  # made durable with the first sync, not on the trigger's path
        return spool

    @classmethod
    def open(cls, path: Path, wrapping_key: bytes) -> Spool:
        """An existing spool, for reading (after a crash, or to finish it)."""
        path = Path(path)
        raw = _key_path(path).read_bytes()
        try:
            key = AESGCM(wrapping_key).decrypt(raw[:12], raw[12:], path.name.encode())
        except InvalidTag:
            raise VaultError(f"the key of spool {path.name} does not open") from None
        return cls(path, key)

    def append(self, data: bytes) -> None:
        """Seal one record onto the end of the file."""
        nonce = secrets.token_bytes(12)
        blob = self._aead.encrypt(nonce, data, _LENGTH.pack(self.records))
        os.write(self._fd, _LENGTH.pack(len(blob)) + nonce + blob)
        self.records += 1
        self.size += len(data)

    def sync(self) -> None:
        """Make what was appended durable (and the wrapped key, the first time)."""
        os.fsync(self._fd)
        if not self._key_synced:
            key_fd = os.open(_key_path(self.path), os.O_RDONLY)
            try:
                os.fsync(key_fd)
            finally:
                os.close(key_fd)
            fsync_dir(self.path.parent)
            self._key_synced = True

    def close(self) -> None:
        """Close the file (it stays readable)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self) -> Iterator[bytes]:
        """The plaintext records in order; a torn last record (a crash mid-write) ends it."""
        with open(self.path, "rb") as handle:
            index = 0
            while True:
                head = handle.read(_LENGTH.size)
                if len(head) < _LENGTH.size:
                    return
                (length,) = _LENGTH.unpack(head)
                nonce, blob = handle.read(12), handle.read(length)
                if len(blob) < length:
                    return
                try:
                    yield self._aead.decrypt(nonce, blob, _LENGTH.pack(index))
                except InvalidTag:
                    raise VaultError(f"spool {self.path.name}: record {index} is damaged") from None
                index += 1

    def discard(self) -> None:
        """Remove the spool, its key and anything else named after it (a manifest)."""
        self.close()
        self.path.unlink(missing_ok=True)
        _key_path(self.path).unlink(missing_ok=True)
        for extra in self.path.parent.glob(self.path.name + ".*"):
            extra.unlink(missing_ok=True)


def _key_path(path: Path) -> Path:
    return path.with_name(path.name + ".key")
