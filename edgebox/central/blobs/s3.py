"""The blob store as an S3-compatible bucket (boto3): SeaweedFS in tests, MinIO or AWS S3 in a
region; only the URL and the credentials differ.

Writes go by parts (multipart upload once an object outgrows one part); each part carries
its SHA-256 (`ChecksumSHA256`), which the store checks on arrival (a part damaged on the
way is refused with BadDigest). After the upload completes, a HEAD must show the size
written and the composite checksum of the parts (SHA-256 over the parts' SHA-256s, "-N"),
plus the whole object's SHA-256 kept in its metadata: only then does `commit()` return, and
only then may central acknowledge. Transient failures are retried with back-off by botocore
(standard retry mode); a store still unreachable after that raises `StoreUnavailable`.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from edgebox.central.blobs import Stat, StoreMismatch, StoreUnavailable, check_key
from edgebox.errors import ConfigError

PART_SIZE = 8 << 20  # S3 wants parts of at least 5 MiB, the last one excepted
META_SHA = "sha256"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _client():
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError("an s3:// store needs boto3: pip install 'edgebox[central]'") from None

    config = Config(
        retries={"mode": "standard", "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "5"))},
        connect_timeout=float(os.environ.get("EDGEBOX_S3_CONNECT_TIMEOUT", "5")),
        read_timeout=60,
        max_pool_connections=32,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A session of its own: boto3's default session keeps the credentials it first found,
    # and each store (a test's own server, rotated credentials) must read them afresh.
    return boto3.session.Session().client("s3", config=config)


def _unavailable(store: S3Blobs, key: str, exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"object store {store.url}: {key}: {type(exc).__name__}: {exc}")


class S3Upload:
    """Parts buffered up to `PART_SIZE`; the first full part starts a multipart upload; an
    object smaller than one part goes in one PutObject, with its checksum too."""

    def __init__(self, store: S3Blobs, key: str, sha256: str | None, part_size: int):
        self.store, self.key, self.sha256, self.part_size = store, key, sha256, part_size
        self.buffer = bytearray()
        self.digest = hashlib.sha256()
        self.size = 0
        self.upload_id: str | None = None
        self.parts: list[dict] = []

    def part(self, data: bytes) -> None:
        """Append bytes; full parts are sent as they fill."""
        self.digest.update(data)
        self.size += len(data)
        self.buffer += data
        while len(self.buffer) >= self.part_size:
            self._send(bytes(self.buffer[: self.part_size]))
            del self.buffer[: self.part_size]

    def _send(self, chunk: bytes) -> None:
        client, bucket = self.store.client, self.store.bucket
        try:
            if self.upload_id is None:
                self.upload_id = client.create_multipart_upload(
                    Bucket=bucket,
                    Key=self.store.full(self.key),
                    ChecksumAlgorithm="SHA256",
                    Metadata={META_SHA: self.sha256} if self.sha256 else {},
                )["UploadId"]
            number = len(self.parts) + 1
            checksum = _b64(hashlib.sha256(chunk).digest())
            answer = client.upload_part(
                Bucket=bucket,
                Key=self.store.full(self.key),
                UploadId=self.upload_id,
                PartNumber=number,
                Body=chunk,
                ChecksumSHA256=checksum,
            )
        except Exception as exc:  # noqa: BLE001 - every failure of the store is reported alike
            self.abort()
            raise _unavailable(self.store, self.key, exc) from exc
        if answer.get("ChecksumSHA256", checksum) != checksum:
            self.abort()
            raise StoreMismatch(
                f"object store {self.store.url}: part {number} of {self.key} differs"
            )
        self.parts.append(
            {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}
        )

    def commit(self) -> Stat:
        """Send the rest, complete the upload, then HEAD: size, checksum and SHA-256 must be
        what was written."""
        whole = self.digest.hexdigest()
        if self.sha256 is not None and whole != self.sha256:
            self.abort()
            raise StoreMismatch(f"{self.key}: the bytes given hash to {whole}, not {self.sha256}")
        client, bucket, full = self.store.client, self.store.bucket, self.store.full(self.key)
        try:
            if self.upload_id is None:
                expected = _b64(hashlib.sha256(self.buffer).digest())
                client.put_object(
                    Bucket=bucket,
                    Key=full,
                    Body=bytes(self.buffer),
                    ChecksumSHA256=expected,
                    Metadata={META_SHA: whole},
                )
            else:
                if self.buffer:
                    self._send(bytes(self.buffer))
                    self.buffer.clear()
                joined = b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in self.parts)
                expected = f"{_b64(hashlib.sha256(joined).digest())}-{len(self.parts)}"
                client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=full,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": self.parts},
                )
        except StoreMismatch:
            raise
        except Exception as exc:  # noqa: BLE001
            self.abort()
            raise _unavailable(self.store, self.key, exc) from exc
        recorded = whole if self.upload_id is None or self.sha256 else None
        return self.store.verify(self.key, self.size, recorded, expected)

    def abort(self) -> None:
        """Abort the multipart upload, if one was started (best effort: a store that is down
        keeps the parts until its own lifecycle rule drops them)."""
        upload_id, self.upload_id = self.upload_id, None
        if upload_id is not None:
            try:
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.store.full(self.key), UploadId=upload_id
                )
            except Exception:  # noqa: BLE001, S110 - the original failure is the one reported
                pass


class S3Blobs:
    """Keys under `s3://bucket/prefix/`."""

    def __init__(self, bucket: str, prefix: str = "", part_size: int = PART_SIZE, client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.client = client or _client()
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")

    @classmethod
    def from_url(cls, url: str) -> S3Blobs:
        """`s3://bucket/prefix`; credentials and endpoint from the environment."""
        rest = url.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(f"no bucket in {url!r}")
        return cls(bucket, prefix)

    def full(self, key: str) -> str:
        """The object key in the bucket."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def folder(self) -> None:
        """Not a local folder."""
        return None

    def begin(self, key: str, sha256: str | None = None) -> S3Upload:
        """Start writing `key`."""
        return S3Upload(self, check_key(key), sha256, self.part_size)

    def keep(self, key: str, path: Path, sha256: str, size: int) -> Stat:
        """Upload a checked local file by parts and verify it (the caller then drops the file)."""
        upload = self.begin(key, sha256)
        with open(path, "rb") as handle:
            while chunk := handle.read(self.part_size):
                upload.part(chunk)
        stat = upload.commit()
        if stat.size != size:
            raise StoreMismatch(f"{key}: stored {stat.size} bytes, expected {size}")
        return stat

    def put(self, key: str, data: bytes) -> Stat:
        """Write a small object whole (one PutObject with its checksum, then HEAD)."""
        upload = self.begin(key)
        upload.part(data)
        return upload.commit()

    def verify(self, key: str, size: int, sha256: str | None, checksum: str) -> Stat:
        """HEAD the object: its size, the store's checksum and the SHA-256 in its metadata
        (when one was declared) must be those written."""
        answer = self._head(key)
        if answer is None:
            raise StoreMismatch(f"object store {self.url}: {key} is missing after its upload")
        held = (
            answer["ContentLength"],
            answer.get("ChecksumSHA256"),
            answer["Metadata"].get(META_SHA),
        )
        if held != (size, checksum, sha256):
            raise StoreMismatch(
                f"object store {self.url}: {key} holds size {held[0]}, checksum {held[1]}, "
                f"sha256 {held[2]}; wrote {size}, {checksum}, {sha256}"
            )
        return Stat(size, sha256)

    def _head(self, key: str) -> dict | None:
        try:
            return self.client.head_object(
                Bucket=self.bucket, Key=self.full(key), ChecksumMode="ENABLED"
            )
        except Exception as exc:  # noqa: BLE001
            if _is_missing(exc):
                return None
            raise _unavailable(self, key, exc) from exc

    def head(self, key: str) -> Stat | None:
        """Size and SHA-256 (from the object's metadata) of `key`, or None."""
        answer = self._head(key)
        if answer is None:
            return None
        return Stat(answer["ContentLength"], answer["Metadata"].get(META_SHA))

    def exists(self, key: str) -> bool:
        """Whether the object is there (one HEAD)."""
        return self._head(key) is not None

    def get(self, key: str) -> bytes:
        """The object's bytes."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.full(key))["Body"].read()
        except Exception as exc:  # noqa: BLE001
            if _is_missing(exc):
                raise FileNotFoundError(key) from None
            raise _unavailable(self, key, exc) from exc

    def download(self, key: str, path: Path) -> None:
        """Stream the object into a local file."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.full(key))["Body"]
            with open(path, "wb") as handle:
                for chunk in body.iter_chunks(1 << 20):
                    handle.write(chunk)
        except Exception as exc:  # noqa: BLE001
            if _is_missing(exc):
                raise FileNotFoundError(key) from None
            raise _unavailable(self, key, exc) from exc

    def delete(self, key: str) -> None:
        """Remove the object."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.full(key))
        except Exception as exc:  # noqa: BLE001
            raise _unavailable(self, key, exc) from exc

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under `prefix`, in key order."""
        start = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start + prefix
            )
            keys = [o["Key"][len(start) :] for page in pages for o in page.get("Contents", [])]
        except Exception as exc:  # noqa: BLE001
            raise _unavailable(self, prefix, exc) from exc
        return iter(sorted(keys))


def _is_missing(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return code in ("404", "NoSuchKey", "NotFound")
