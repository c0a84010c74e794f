"""A small tus 1.0.0 client for the box: metadata, answers sorted by what to do, requests.

Every answer of the box is sorted into one of: done, `RetryLater` (back off, ask for the
offset, continue), `UploadGone` (start a new upload), `UploadRejected` (keep the clip, tell
the operator) or `AuthError` (pair again). `TusClient` sends the create, offset (HEAD) and
chunk (PATCH) requests over one reused connection, opened afresh after any transport error.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from collections.abc import Callable, Mapping
from urllib.parse import urljoin

import requests

from edgebox.camera.errors import AuthError, error_message

TUS_VERSION = "1.0.0"
TUS_PATH = "/tus/"
_META_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# -- metadata -----------------------------------------------------------------------------


def encode_tus_metadata(values: Mapping[str, object]) -> str:
    """Encode metadata as tus `Upload-Metadata`: `key base64(value)` pairs joined by commas."""
    pairs = []
    for key, value in values.items():
        if value is None:
            continue
        if not _META_KEY.match(key):
            raise ValueError(f"metadata key {key!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        text = metadata_text(value)
        if text == "":
            pairs.append(key)
        else:
            pairs.append(f"{key} {base64.b64encode(text.encode('utf-8')).decode('ascii')}")
    return ",".join(pairs)


def decode_tus_metadata(header: str) -> dict[str, str]:
    """Decode a tus `Upload-Metadata` header back into text values."""
    values: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, encoded = pair.partition(" ")
        try:
            values[key] = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"metadata {key!r} is not base64 of UTF-8 text") from exc
    return values


def rfc3339(moment: dt.datetime) -> str:
    """RFC 3339 UTC text with a Z, e.g. 2026-11-28T16:00:00Z (fraction only when present)."""
    if moment.tzinfo is None:
        raise ValueError("a timezone-aware datetime is required")
    moment = moment.astimezone(dt.UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def metadata_text(value: object) -> str:
    """A metadata value as text: booleans as true/false, datetimes as RFC 3339, else str()."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return rfc3339(value)
    return str(value)


# -- what to do about an answer -----------------------------------------------------------


class RetryLater(Exception):
    """A transient failure: back off, ask the box for its offset, continue."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class UploadGone(Exception):
    """The upload no longer exists on the box (expired, failed, unknown): start a new one."""


class UploadRejected(Exception):
    """The box refused this clip for good; keep it and tell the operator."""


# -- requests -----------------------------------------------------------------------------


class TusClient:
    """tus requests with a device token over one reused HTTPS connection to the box.

    `connect` opens a new (pinned) session; it is called for the first request and again
    after any transport failure or `close()`. `token` and `timeout` are read at every
    request, so they always reflect the camera's current pairing and settings.
    """

    def __init__(
        self,
        connect: Callable[[], requests.Session],
        token: Callable[[], str],
        timeout: Callable[[], float],
    ):
        self._connect, self._token, self._timeout = connect, token, timeout
        self._session: requests.Session | None = None

    def create(
        self, endpoint: str, length: int, metadata: Mapping[str, object]
    ) -> tuple[str, dict | None]:
        """POST a new upload of `length` bytes to `endpoint`: the upload's absolute URL, and
        the box's confirmation when it answered 200 because it already holds this clip (the
        caller still compares the confirmed hash with its own before deleting anything)."""
        response = self._request(
            "POST",
            endpoint,
            headers={
                "Upload-Length": str(length),
                "Upload-Metadata": encode_tus_metadata(metadata),
            },
        )
        _raise_for_tus(response, expected=200 if response.status_code == 200 else 201)
        location = response.headers.get("Location")
        if not location:
            raise UploadRejected("the box created an upload but sent no Location")
        held = _confirmation(response) if response.status_code == 200 else None
        return urljoin(endpoint, location), held

    def offset(self, upload_url: str, length: int) -> tuple[int, dict | None]:
        """HEAD the upload: the box's offset, and its confirmation once the upload is complete."""
        response = self._request("HEAD", upload_url)
        _raise_for_tus(response, expected=200)
        offset = _header_int(response, "Upload-Offset")
        if offset > length:
            raise UploadGone(f"the box reports offset {offset} past the file's {length} bytes")
        return offset, _confirmation(response)

    def patch(self, upload_url: str, offset: int, chunk: bytes) -> tuple[int, dict | None]:
        """PATCH `chunk` at `offset` with its checksum: the new offset and any confirmation."""
        digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode("ascii")
        response = self._request(
            "PATCH",
            upload_url,
            data=chunk,
            headers={
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                "Upload-Checksum": f"sha256 {digest}",
            },
        )
        _raise_for_tus(response, expected=204)
        new_offset = _header_int(response, "Upload-Offset")
        if new_offset > offset + len(chunk):
            raise UploadGone(
                f"the box reports offset {new_offset} past the {offset + len(chunk)} sent"
            )
        return new_offset, _confirmation(response)

    def close(self) -> None:
        """Close the connection; the next request opens a new one."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def _request(self, method: str, url: str, **kwargs) -> requests.Response:
        headers = {"Tus-Resumable": TUS_VERSION, "Authorization": f"Bearer {self._token()}"}
        headers.update(kwargs.pop("headers", {}))
        timeout = self._timeout()
        try:
            if self._session is None:
                self._session = self._connect()
            return self._session.request(
                method,
                url,
                headers=headers,
                timeout=(min(10.0, timeout), timeout),
                **kwargs,
            )
        except requests.RequestException as exc:
            self.close()  # a fresh connection after any transport failure
            raise RetryLater(f"{method} failed: {exc}") from exc


def _raise_for_tus(response: requests.Response, expected: int) -> None:
    status = response.status_code
    if status == expected:
        return
    message = f"{status} {error_message(response)}"
    if status in (401, 403):
        raise AuthError(f"the box refused the device token ({message}); pair the camera again")
    if status in (404, 410):
        raise UploadGone(f"upload is gone ({message})")
    if status == 507 or status == 429 or status == 503:
        raise RetryLater(message, _retry_after(response))
    if status in (409, 460) or status >= 500:
        raise RetryLater(message)
    raise UploadRejected(message)


def _confirmation(response: requests.Response) -> dict | None:
    recording_id = response.headers.get("EdgeBox-Recording-Id")
    evidence = response.headers.get("EdgeBox-Evidence-Sha256")
    if recording_id and evidence:
        return {"recording_id": recording_id, "evidence_sha256": evidence}
    return None


def _header_int(response: requests.Response, name: str) -> int:
    value = response.headers.get(name, "")
    if not value.isdigit():
        raise RetryLater(f"the box sent no valid {name} header")
    return int(value)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None
