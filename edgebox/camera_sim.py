"""A simulated body-worn camera: pairs with a box over pinned HTTPS and offloads clips by tus.

It behaves like a real camera would: it pins the box's certificate at pairing, keeps
its device token, its queued clips and the tus URL of every unfinished upload in a
state directory (so a restarted camera resumes instead of starting over), reuses one
HTTPS connection for all chunks, backs off and asks the box for its offset after any
network error or 5xx, and deletes a clip only after the box answered with an evidence
hash equal to the camera's own.

State directory layout::

    camera.json        device id, token, pinned certificate, pending uploads (mode 0600)
    box-cert.pem       the pinned certificate as a file, the CA bundle for `verify=`
    outbox/*.mp4       recorded clips waiting for the box
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from edgebox.clips import make_clip

TUS_VERSION = "1.0.0"
DEFAULT_CHUNK = 4 << 20
DEFAULT_MODEL = "EdgeBox SimCam 1"
DEFAULT_USER = "user-1"
DEFAULT_CATEGORY = "unclassified"
STATE_FILE = "camera.json"
CERT_FILE = "box-cert.pem"
OUTBOX = "outbox"
ENROLL_PATH = "/api/v1/cameras/enroll"
TUS_PATH = "/tus/"
_KEEP_DELIVERED = 50
_MAX_RESTARTS = 3
_META_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_logger = logging.getLogger(__name__)


class CameraError(Exception):
    """A camera operation failed; the message says what to do about it."""


class PinningError(CameraError):
    """The box presented a certificate other than the one the operator's pairing code names."""


class PairingError(CameraError):
    """The box refused to enroll this camera."""


class AuthError(CameraError):
    """The box refused the device token (401/403): the camera must be paired again."""


@dataclass
class UploadResult:
    """The outcome of offloading one clip.

    status is one of: delivered (the box holds a hash-checked copy, local copy deleted),
    deferred (kept, will retry), rejected (the box refused this clip; kept), mismatch
    (the box's evidence hash differs from the camera's; kept), missing (the file vanished).
    """

    path: str
    status: str
    recording_id: str | None = None
    evidence_sha256: str | None = None
    bytes_sent: int = 0
    message: str = ""

    @property
    def delivered(self) -> bool:
        """True when the box confirmed a complete, hash-checked copy."""
        return self.status == "delivered"


# -- small public helpers ---------------------------------------------------------------


def encode_tus_metadata(values: Mapping[str, object]) -> str:
    """Encode metadata as tus `Upload-Metadata`: `key base64(value)` pairs joined by commas."""
    pairs = []
    for key, value in values.items():
        if value is None:
            continue
        if not _META_KEY.match(key):
            raise ValueError(f"metadata key {key!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        text = _metadata_text(value)
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


def certificate_sha256(pem: str) -> str:
    """Hex SHA-256 of a PEM certificate's DER form: the fingerprint a pairing code carries."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def fetch_certificate(box_url: str, timeout: float = 10.0) -> str:
    """The certificate the box at `box_url` presents, as PEM (not verified: pin it!)."""
    host, port = _host_port(box_url)
    try:
        return ssl.get_server_certificate((host, port), timeout=timeout)
    except (OSError, ssl.SSLError) as exc:
        raise CameraError(f"cannot reach the box at {box_url}: {exc}") from exc


def pin_certificate(box_url: str, expected_sha256: str, timeout: float = 10.0) -> str:
    """Fetch the box certificate and return its PEM only if its SHA-256 is the expected one."""
    expected = _normalise_fingerprint(expected_sha256)
    pem = fetch_certificate(box_url, timeout)
    actual = certificate_sha256(pem)
    if not hmac.compare_digest(actual, expected):
        raise PinningError(
            f"the box at {box_url} presented certificate {actual}, but the pairing code "
            f"names {expected}: refusing to pair (wrong box or someone in between)"
        )
    return pem


# -- the camera ---------------------------------------------------------------------------


class CameraSim:
    """One simulated body-worn camera whose identity and queue live in `state_dir`."""

    def __init__(
        self,
        state_dir: str | os.PathLike,
        *,
        serial: str | None = None,
        model: str = DEFAULT_MODEL,
        width: int = 640,
        height: int = 360,
        fps: int = 15,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_attempts: int = 8,
        timeout: float = 30.0,
        log: Callable[[str], None] | None = None,
    ):
        self.state_dir = Path(state_dir)
        self.outbox = self.state_dir / OUTBOX
        self.outbox.mkdir(parents=True, exist_ok=True)
        self.clip_size = (width, height, fps)
        self.backoff, self.max_backoff, self.max_attempts = backoff, max_backoff, max_attempts
        self.timeout = timeout
        self._log = log or _logger.info
        self._lock = threading.RLock()
        self._session: requests.Session | None = None
        self._not_before = 0.0
        self._stop = threading.Event()
        self._state = self._load_state(serial, model)

    # -- identity ---------------------------------------------------------------------
    @property
    def serial(self) -> str:
        """The camera's serial number, as sent at pairing and in every upload."""
        return self._state["serial"]

    @property
    def device_id(self) -> str | None:
        """The id the box gave this camera at pairing, or None when not paired."""
        return self._state.get("device_id")

    @property
    def box_url(self) -> str | None:
        """The base URL of the box this camera is paired with."""
        return self._state.get("box_url")

    @property
    def paired(self) -> bool:
        """True once the camera holds a device token and a pinned certificate."""
        return bool(self._state.get("token") and self._state.get("cert_pem"))

    @property
    def pending(self) -> list[dict]:
        """A copy of the queued clips, oldest first, with their tus upload URL if started."""
        with self._lock:
            return json.loads(json.dumps(self._state["pending"]))

    def pair(self, box_url: str, code: str, cert_sha256: str) -> str:
        """Pin the box certificate, then exchange the one-time code for a device token."""
        url = _normalise_box_url(box_url)
        fingerprint = _normalise_fingerprint(cert_sha256)
        pem = pin_certificate(url, fingerprint, timeout=self.timeout)  # before sending anything
        with self._lock:
            pairing_cert = self.state_dir / (CERT_FILE + ".pairing")
            _write_private(pairing_cert, pem.encode("ascii"))
            try:
                body = self._enroll(url, pairing_cert, fingerprint, code)
            finally:
                pairing_cert.unlink(missing_ok=True)
            self._state.update(
                box_url=url,
                cert_sha256=fingerprint,
                cert_pem=pem,
                device_id=body["device_id"],
                token=body["token"],
            )
            for entry in self._state["pending"]:
                entry["upload_url"] = None  # uploads belong to the old pairing
            self._save_state()  # the commit point: token and pinned certificate together
            self._reset_session()
        self._log(f"[{self.serial}] paired with {url} as device {body['device_id']}")
        return body["device_id"]

    # -- recording --------------------------------------------------------------------
    def record(self, seconds: float = 40, pre_event_seconds: float = 30, **metadata) -> Path:
        """Record a clip that ends now into the outbox and queue it with its metadata."""
        pre = min(float(pre_event_seconds), float(seconds))
        stopped = dt.datetime.now(dt.UTC).replace(microsecond=0)
        started = stopped - dt.timedelta(seconds=seconds)
        with self._lock:
            sequence = self._state["next_sequence"]
            self._state["next_sequence"] = sequence + 1
            self._save_state()
        name = f"{_SAFE_NAME.sub('_', self.serial)}_{started:%Y%m%dT%H%M%SZ}_{sequence:05d}.mp4"
        width, height, fps = self.clip_size
        info = make_clip(
            self.outbox / name,
            seconds=seconds,
            pre_event_seconds=pre,
            width=width,
            height=height,
            fps=fps,
            serial=self.serial,
            started_at=started,
        )
        entry = {
            "file": name,
            "size": info.size,
            "sha256": info.sha256,
            "upload_url": None,
            "status": "queued",
            "message": "",
            "metadata": self._metadata(name, info.sha256, started, info.stopped_at, pre, metadata),
        }
        with self._lock:
            self._state["pending"].append(entry)
            self._save_state()
        self._log(f"[{self.serial}] recorded {name} ({info.size} bytes, {seconds:g} s)")
        return info.path

    # -- offloading -------------------------------------------------------------------
    def upload_pending(
        self, chunk_size: int = DEFAULT_CHUNK, stop_event: threading.Event | None = None
    ) -> list[UploadResult]:
        """Offload every queued clip, oldest first; raises AuthError if the token is refused."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if not self.paired:
            raise CameraError("the camera is not paired: run pair() with a code from the box")
        stop = stop_event or self._stop
        results = []
        with self._lock:
            for entry in self.pending:
                if entry["status"] != "queued":
                    continue
                if stop.is_set() or time.monotonic() < self._not_before:
                    results.append(
                        self._result(entry, "deferred", message=self._defer_reason(stop))
                    )
                    continue
                results.append(self._deliver(entry, chunk_size, stop))
        return results

    def run(
        self,
        count: int | None = 1,
        interval: float = 0.0,
        stop_event: threading.Event | None = None,
        *,
        seconds: float = 40,
        pre_event_seconds: float = 30,
        chunk_size: int = DEFAULT_CHUNK,
        **metadata,
    ) -> list[UploadResult]:
        """Record `count` clips (None: until stopped), offloading after each, `interval` s apart."""
        stop = stop_event or self._stop
        results: list[UploadResult] = []
        for number in itertools.count():
            if (count is not None and number >= count) or stop.is_set():
                break
            if number and stop.wait(interval):
                break
            self.record(seconds, pre_event_seconds, **metadata)
            results.extend(self.upload_pending(chunk_size, stop))
        return results

    def stop(self) -> None:
        """Ask a running run() or upload_pending() to stop at the next safe point."""
        self._stop.set()

    def close(self) -> None:
        """Close the HTTPS connection to the box."""
        with self._lock:
            self._reset_session()

    def __enter__(self) -> CameraSim:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one upload -------------------------------------------------------------------
    def _deliver(self, entry: dict, chunk_size: int, stop: threading.Event) -> UploadResult:
        path = self.outbox / entry["file"]
        if not path.is_file():
            self._drop(entry)
            return self._result(entry, "missing", message=f"{path} no longer exists")
        progress = _Progress()
        with path.open("rb") as handle:
            while not stop.is_set():
                try:
                    confirmation = self._step(entry, handle, progress, chunk_size)
                    if confirmation:
                        return self._finish(entry, confirmation, progress.sent)
                except _Gone as gone:
                    progress.restarts += 1
                    if progress.restarts > _MAX_RESTARTS:
                        return self._result(
                            entry, "deferred", bytes_sent=progress.sent, message=str(gone)
                        )
                    self._log(f"[{self.serial}] {entry['file']}: {gone}; starting a new upload")
                    self._set(entry, upload_url=None)
                    progress.offset = None
                except _Rejected as rejected:
                    self._set(entry, status="rejected", message=str(rejected))
                    self._log(f"[{self.serial}] {entry['file']} rejected: {rejected}")
                    return self._result(
                        entry, "rejected", bytes_sent=progress.sent, message=str(rejected)
                    )
                except _Retry as retry:
                    progress.failures += 1
                    progress.offset = None  # ask the box where to continue
                    outcome = self._pause(entry, retry, progress.failures, stop)
                    if outcome is not None:
                        return self._result(
                            entry, "deferred", bytes_sent=progress.sent, message=outcome
                        )
        return self._result(entry, "deferred", bytes_sent=progress.sent, message="stopped")

    def _step(self, entry: dict, handle, progress: _Progress, chunk_size: int) -> dict | None:
        """One protocol step (create, learn the offset, or send a chunk); the box's
        confirmation once the upload is complete."""
        if entry["upload_url"] is None:
            self._create_upload(entry)
            progress.offset = 0
        elif progress.offset is None:
            progress.offset, confirmation = self._server_offset(entry)
            if confirmation:
                return confirmation
        if progress.offset >= entry["size"]:
            raise _Retry("the box has every byte but sent no evidence hash yet")
        handle.seek(progress.offset)
        chunk = handle.read(chunk_size)
        progress.offset, confirmation = self._patch(entry, progress.offset, chunk)
        progress.sent += len(chunk)
        progress.failures = 0
        return confirmation

    def _pause(
        self, entry: dict, retry: _Retry, failures: int, stop: threading.Event
    ) -> str | None:
        """Wait before the next attempt; returns a reason when the upload should be deferred."""
        if failures > self.max_attempts:
            return f"gave up for now after {failures - 1} retries: {retry}"
        if retry.retry_after is not None and retry.retry_after > self.max_backoff:
            self._not_before = time.monotonic() + retry.retry_after
            return f"{retry} (retry after {retry.retry_after:g} s)"
        delay = retry.retry_after
        if delay is None:
            delay = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
            delay *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security
        self._log(f"[{self.serial}] {entry['file']}: {retry}; retrying in {delay:.1f} s")
        if stop.wait(delay):
            return "stopped"
        return None

    def _create_upload(self, entry: dict) -> None:
        response = self._request(
            "POST",
            self.box_url + TUS_PATH,
            headers={
                "Upload-Length": str(entry["size"]),
                "Upload-Metadata": encode_tus_metadata(entry["metadata"]),
            },
        )
        _raise_for_tus(response, expected=201)
        location = response.headers.get("Location")
        if not location:
            raise _Rejected("the box created an upload but sent no Location")
        self._set(entry, upload_url=urljoin(self.box_url + TUS_PATH, location))
        self._log(f"[{self.serial}] {entry['file']}: upload created at {entry['upload_url']}")

    def _server_offset(self, entry: dict) -> tuple[int, dict | None]:
        response = self._request("HEAD", entry["upload_url"])
        _raise_for_tus(response, expected=200)
        offset = _header_int(response, "Upload-Offset")
        if offset > entry["size"]:
            raise _Gone(f"the box reports offset {offset} past the file's {entry['size']} bytes")
        return offset, _confirmation(response)

    def _patch(self, entry: dict, offset: int, chunk: bytes) -> tuple[int, dict | None]:
        digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode("ascii")
        response = self._request(
            "PATCH",
            entry["upload_url"],
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
            raise _Gone(f"the box reports offset {new_offset} past the {offset + len(chunk)} sent")
        return new_offset, _confirmation(response)

    def _finish(self, entry: dict, confirmation: dict, sent: int) -> UploadResult:
        evidence = confirmation["evidence_sha256"].lower()
        recording_id = confirmation["recording_id"]
        if not hmac.compare_digest(evidence, entry["sha256"]):
            message = (
                f"the box stored sha256 {evidence} but the camera's file is "
                f"{entry['sha256']}: keeping the local copy"
            )
            self._set(entry, status="mismatch", message=message)
            self._log(f"[{self.serial}] {entry['file']}: {message}")
            return self._result(entry, "mismatch", recording_id, evidence, sent, message)
        self._drop(entry, delivered={"recording_id": recording_id, "sha256": evidence})
        (self.outbox / entry["file"]).unlink(missing_ok=True)  # only now: the box holds it
        self._log(
            f"[{self.serial}] {entry['file']}: delivered as recording {recording_id}, "
            "hash verified, local copy deleted"
        )
        return self._result(entry, "delivered", recording_id, evidence, sent)

    def _request(self, method: str, url: str, **kwargs) -> requests.Response:
        headers = {"Tus-Resumable": TUS_VERSION, "Authorization": f"Bearer {self._state['token']}"}
        headers.update(kwargs.pop("headers", {}))
        try:
            return self._http().request(
                method,
                url,
                headers=headers,
                timeout=(min(10.0, self.timeout), self.timeout),
                **kwargs,
            )
        except requests.RequestException as exc:
            self._reset_session()  # a fresh connection after any transport failure
            raise _Retry(f"{method} failed: {exc}") from exc

    # -- state ------------------------------------------------------------------------
    def _load_state(self, serial: str | None, model: str) -> dict:
        path = self.state_dir / STATE_FILE
        if path.is_file():
            state = json.loads(path.read_text(encoding="utf-8"))
            if serial and serial != state["serial"] and state.get("token"):
                raise CameraError(
                    f"{self.state_dir} belongs to camera {state['serial']}, "
                    f"not {serial}; use another state directory"
                )
            if serial:
                state["serial"] = serial
            return state
        self._state = {
            "version": 1,
            "serial": serial or f"SIM-{secrets.token_hex(3).upper()}",
            "model": model,
            "box_url": None,
            "cert_sha256": None,
            "cert_pem": None,
            "device_id": None,
            "token": None,
            "next_sequence": 1,
            "pending": [],
            "delivered": [],
        }
        self._save_state()
        return self._state

    def _save_state(self) -> None:
        _write_private(
            self.state_dir / STATE_FILE,
            json.dumps(self._state, indent=2, sort_keys=True).encode("utf-8"),
        )

    def _set(self, entry: dict, **changes) -> None:
        with self._lock:
            entry.update(changes)
            for stored in self._state["pending"]:
                if stored["file"] == entry["file"]:
                    stored.update(changes)
            self._save_state()

    def _drop(self, entry: dict, delivered: dict | None = None) -> None:
        with self._lock:
            self._state["pending"] = [
                e for e in self._state["pending"] if e["file"] != entry["file"]
            ]
            if delivered is not None:
                history = self._state["delivered"] + [{"file": entry["file"], **delivered}]
                self._state["delivered"] = history[-_KEEP_DELIVERED:]
            self._save_state()

    def _metadata(
        self,
        name: str,
        sha256: str,
        started: dt.datetime,
        stopped: dt.datetime,
        pre: float,
        given: dict,
    ) -> dict[str, str]:
        given = dict(given)
        exemption = given.pop("exemption", None)
        warned = given.pop("warned", None if exemption else True)
        metadata = {
            "filename": name,
            "serial": self.serial,
            "user_id": given.pop("user_id", DEFAULT_USER),
            "started_at": rfc3339(started),
            "stopped_at": rfc3339(stopped),
            "trigger_on": given.pop("trigger_on", "button"),
            "trigger_off": given.pop("trigger_off", "button"),
            "pre_event_seconds": f"{pre:g}",
            "gps": given.pop("gps", self._position()),
            "category": given.pop("category", DEFAULT_CATEGORY),
            "sha256": sha256,
        }
        if exemption:
            metadata["exemption"] = str(exemption)
        elif warned is not None:
            metadata["warned"] = _metadata_text(warned)
        for key, value in given.items():
            if value is not None:
                metadata[key] = _metadata_text(value)
        encode_tus_metadata(metadata)  # fail now, not at upload time, on a bad key
        return metadata

    def _position(self) -> str:
        """A GPS fix near Brussels, stable per camera and jittering a little per clip."""
        seed = int(hashlib.sha256(self.serial.encode()).hexdigest()[:8], 16)
        lat = 50.8466 + (seed % 1000 - 500) / 20000 + random.uniform(-2e-4, 2e-4)  # noqa: S311
        lon = 4.3528 + (seed // 1000 % 1000 - 500) / 20000 + random.uniform(-2e-4, 2e-4)  # noqa: S311
        return f"{lat:.6f},{lon:.6f}"

    # -- HTTP session -----------------------------------------------------------------
    def _http(self) -> requests.Session:
        if self._session is None:
            self._session = _pinned_session(self._cert_file(), self._state["cert_sha256"])
        return self._session

    def _cert_file(self) -> Path:
        """The pinned certificate as a file for `verify=`, rewritten from the state if stale."""
        path = self.state_dir / CERT_FILE
        pem = self._state["cert_pem"].encode("ascii")
        if not path.is_file() or path.read_bytes() != pem:
            _write_private(path, pem)
        return path

    def _reset_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _enroll(self, url: str, cert: Path, fingerprint: str, code: str) -> dict:
        session = _pinned_session(cert, fingerprint)
        try:
            response = session.post(
                url + ENROLL_PATH,
                json={"code": code, "serial": self.serial, "model": self._state["model"]},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise PairingError(f"pairing with {url} failed: {exc}") from exc
        finally:
            session.close()
        if response.status_code != 201:
            raise PairingError(
                f"the box refused pairing ({response.status_code}): {_error_message(response)}"
            )
        try:
            body = response.json()
            if not (isinstance(body.get("device_id"), str) and isinstance(body.get("token"), str)):
                raise ValueError
        except (ValueError, AttributeError):
            raise PairingError("the box answered pairing without a device_id and token") from None
        return body

    def _result(
        self,
        entry: dict,
        status: str,
        recording_id: str | None = None,
        evidence: str | None = None,
        bytes_sent: int = 0,
        message: str = "",
    ) -> UploadResult:
        return UploadResult(
            str(self.outbox / entry["file"]), status, recording_id, evidence, bytes_sent, message
        )

    def _defer_reason(self, stop: threading.Event) -> str:
        if stop.is_set():
            return "stopped"
        return f"the box asked to wait {self._not_before - time.monotonic():.0f} s more"


def run_camera(
    state_dir: str | os.PathLike,
    *,
    box_url: str | None = None,
    code: str | None = None,
    cert_sha256: str | None = None,
    clips: int | None = 1,
    seconds: float = 40,
    pre_event: float = 30,
    user_id: str = DEFAULT_USER,
    category: str = DEFAULT_CATEGORY,
    chunk_size: int = DEFAULT_CHUNK,
    interval: float = 0.0,
    serial: str | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = print,
) -> list[UploadResult]:
    """Pair if needed, offload leftovers, then record and offload `clips` clips; for the CLI."""
    stop = stop or threading.Event()
    with CameraSim(state_dir, serial=serial, log=log) as camera:
        _ensure_paired(camera, box_url, code, cert_sha256, log)
        results = camera.upload_pending(chunk_size, stop) if camera.pending else []
        results += camera.run(
            clips,
            interval,
            stop,
            seconds=seconds,
            pre_event_seconds=pre_event,
            chunk_size=chunk_size,
            user_id=user_id,
            category=category,
        )
    delivered = sum(result.delivered for result in results)
    log(
        f"[{camera.serial}] {delivered} of {len(results)} clip(s) delivered, "
        f"{len(camera.pending)} still queued in {camera.outbox}"
    )
    return results


# -- private helpers --------------------------------------------------------------------


class _Retry(Exception):
    """A transient failure: back off, ask the box for its offset, continue."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Progress:
    """Where one upload stands: offset None means "ask the box"."""

    offset: int | None = None
    sent: int = 0
    failures: int = 0
    restarts: int = 0


class _Gone(Exception):
    """The upload no longer exists on the box (expired, failed, unknown): start a new one."""


class _Rejected(Exception):
    """The box refused this clip for good; keep it and tell the operator."""


class _PinnedAdapter(HTTPAdapter):
    """Accepts only the exact certificate pinned at pairing, whatever address the box has."""

    def __init__(self, fingerprint: str, **kwargs):
        self._fingerprint = fingerprint
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["assert_fingerprint"] = self._fingerprint
        super().init_poolmanager(*args, **kwargs)


def _pinned_session(cert_path: Path, fingerprint: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies or CA bundle from the environment
    session.verify = str(cert_path)
    session.mount("https://", _PinnedAdapter(fingerprint))
    session.mount("http://", HTTPAdapter(max_retries=0))
    return session


def _raise_for_tus(response: requests.Response, expected: int) -> None:
    status = response.status_code
    if status == expected:
        return
    message = f"{status} {_error_message(response)}"
    if status in (401, 403):
        raise AuthError(f"the box refused the device token ({message}); pair the camera again")
    if status in (404, 410):
        raise _Gone(f"upload is gone ({message})")
    if status == 507 or status == 429 or status == 503:
        raise _Retry(message, _retry_after(response))
    if status in (409, 460) or status >= 500:
        raise _Retry(message)
    raise _Rejected(message)


def _confirmation(response: requests.Response) -> dict | None:
    recording_id = response.headers.get("EdgeBox-Recording-Id")
    evidence = response.headers.get("EdgeBox-Evidence-Sha256")
    if recording_id and evidence:
        return {"recording_id": recording_id, "evidence_sha256": evidence}
    return None


def _header_int(response: requests.Response, name: str) -> int:
    value = response.headers.get(name, "")
    if not value.isdigit():
        raise _Retry(f"the box sent no valid {name} header")
    return int(value)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except ValueError:
        pass
    return (response.text or response.reason or "").strip()[:200]


def _metadata_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return rfc3339(value)
    return str(value)


def _normalise_box_url(box_url: str) -> str:
    parts = urlsplit(box_url.strip())
    if parts.scheme != "https" or not parts.hostname:
        raise CameraError(f"box URL must be https://host:port, got {box_url!r}")
    return f"https://{parts.netloc}"


def _host_port(box_url: str) -> tuple[str, int]:
    parts = urlsplit(_normalise_box_url(box_url))
    return parts.hostname, parts.port or 443


def _normalise_fingerprint(fingerprint: str) -> str:
    cleaned = re.sub(r"[\s:]", "", fingerprint or "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", cleaned):
        raise CameraError("cert_sha256 must be the 64 hex digits of the box certificate's SHA-256")
    return cleaned


def _write_private(path: Path, data: bytes) -> None:
    """Write a file atomically (temp file, fsync, rename) with mode 0600."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _ensure_paired(camera: CameraSim, box_url, code, cert_sha256, log) -> None:
    if camera.paired and (box_url is None or _normalise_box_url(box_url) == camera.box_url):
        if code:
            log(f"[{camera.serial}] already paired with {camera.box_url}; ignoring the code")
        return
    if not (box_url and code and cert_sha256):
        raise CameraError(
            "the camera is not paired: give box_url, code and cert_sha256 "
            "(from `edgebox cameras pair --json` on the box)"
        )
    camera.pair(box_url, code, cert_sha256)
