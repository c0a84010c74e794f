"""What the upload service reads off the wire and answers on it: a refused body drained,
tus counts and checksums parsed, a disk error turned into the status a camera acts on."""

from __future__ import annotations

import base64
import hashlib

from edgebox.errors import IngestError

READ_BLOCK = 1 << 20
DRAIN_LIMIT = 64 << 20  # a refused body up to this size is read so the 413 arrives
PARTIAL, PART_DONE, FINAL = "partial", "partial-done", "final"  # uploads.concat (tus kinds)
CHECKSUMS = {"sha256": hashlib.sha256, "sha1": hashlib.sha1, "md5": hashlib.md5}


def discard_body(stream, length: int) -> None:
    """Read and drop a refused body (up to DRAIN_LIMIT) so the refusal reaches the client:
    cheroot closes the connection after a 413, and closing with unread bytes resets it, which
    loses the answer while the client is still sending. Nothing of it is kept."""
    left = min(length, DRAIN_LIMIT)
    while left > 0:
        try:
            block = stream.read(min(READ_BLOCK, left))
        except OSError:
            return
        if not block:
            return
        left -= len(block)


def is_count(text: str) -> bool:
    """Only ASCII digits: str.isdigit() also takes '²', which int() refuses."""
    return text.isascii() and text.isdigit()


def checksum(header: str | None):
    """The expected digest and a fresh hasher for an Upload-Checksum header (None: none)."""
    if header is None:
        return None
    algorithm, _, value = header.strip().partition(" ")
    factory = CHECKSUMS.get(algorithm.lower())
    if factory is None:
        raise IngestError(f"unsupported checksum algorithm {algorithm!r}", field="Upload-Checksum")
    try:
        expected = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        raise IngestError("Upload-Checksum value is not base64", field="Upload-Checksum") from None
    digest = factory()
    if len(expected) != digest.digest_size:
        raise IngestError(
            f"Upload-Checksum {algorithm} value must hold {digest.digest_size} bytes, "
            f"not {len(expected)}",
            field="Upload-Checksum",
        )
    return expected, digest


def disk_error(exc: OSError) -> IngestError:
    """A write's OSError as the answer a camera gets: 507 when the disk is full, else 500."""
    if exc.errno in (28, 122):
        return IngestError("the box's disk is full; keep the recording and retry later", status=507)
    return IngestError(f"storage error: {exc.strerror}", status=500)
