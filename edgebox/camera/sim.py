"""A simulated body-worn camera: pairs with a box over pinned HTTPS and offloads clips by tus.

It behaves like a real camera would: it pins the box's certificate at pairing, keeps
its device token, its queued clips and the tus URL of every unfinished upload in a
state directory (so a restarted camera resumes instead of starting over), reuses one
HTTPS connection for all chunks, backs off and asks the box for its offset after any
network error or 5xx, and deletes a clip only after the box answered with an evidence
hash equal to the camera's own.
"""

from __future__ import annotations

import datetime as dt
import hmac
import itertools
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from edgebox.camera.errors import CameraError
from edgebox.camera.metadata import DEFAULT_CATEGORY, DEFAULT_USER, clip_metadata
from edgebox.camera.pinning import (
    enroll,
    normalise_box_url,
    normalise_fingerprint,
    pin_certificate,
    pinned_session,
)
from edgebox.camera.state import CERT_FILE, CameraState
from edgebox.camera.tus import TUS_PATH, RetryLater, TusClient, UploadGone, UploadRejected
from edgebox.clips import make_clip, sha256_file
from edgebox.lowlevel.durable import write_private

DEFAULT_CHUNK = 4 << 20
DEFAULT_MODEL = "EdgeBox SimCam 1"
_MAX_RESTARTS = 3
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_CLIP_NAME = re.compile(r"^.+_(?P<started>\d{8}T\d{6}Z)_\d{5}\.mp4$")  # as record() names
_logger = logging.getLogger(__name__)


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
        self.clip_size = (width, height, fps)
        self.backoff, self.max_backoff, self.max_attempts = backoff, max_backoff, max_attempts
        self.timeout = timeout
        self._log = log or _logger.info
        self._not_before = 0.0
        self._stop = threading.Event()
        self._state = CameraState(self.state_dir, serial, model)
        self.outbox = self._state.outbox
        self._lock = self._state.lock
        self._tus = TusClient(self._connect, lambda: self._state["token"], lambda: self.timeout)

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
        return self._state.pending()

    def pair(self, box_url: str, code: str, cert_sha256: str) -> str:
        """Pin the box certificate, then exchange the one-time code for a device token."""
        url = normalise_box_url(box_url)
        fingerprint = normalise_fingerprint(cert_sha256)
        pem = pin_certificate(url, fingerprint, timeout=self.timeout)  # before sending anything
        with self._state.held():
            pairing_cert = self.state_dir / (CERT_FILE + ".pairing")
            write_private(pairing_cert, pem.encode("ascii"))
            try:
                body = enroll(
                    url,
                    pairing_cert,
                    fingerprint,
                    code,
                    serial=self.serial,
                    model=self._state["model"],
                    timeout=self.timeout,
                )
            finally:
                pairing_cert.unlink(missing_ok=True)
            self._state.pair(
                box_url=url,
                cert_sha256=fingerprint,
                cert_pem=pem,
                device_id=body["device_id"],
                token=body["token"],
            )
            self._tus.close()
        self._log(f"[{self.serial}] paired with {url} as device {body['device_id']}")
        return body["device_id"]

    # -- recording --------------------------------------------------------------------
    def record(self, seconds: float = 40, pre_event_seconds: float = 30, **metadata) -> Path:
        """Record a clip that ends now into the outbox and queue it with its metadata."""
        pre = min(float(pre_event_seconds), float(seconds))
        stopped = dt.datetime.now(dt.UTC).replace(microsecond=0)
        started = stopped - dt.timedelta(seconds=seconds)
        sequence = self._state.take_sequence()
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
        metadata = clip_metadata(
            self.serial, name, info.sha256, started, info.stopped_at, pre, metadata
        )
        entry = {
            "file": name,
            "size": info.size,
            "sha256": info.sha256,
            "upload_url": None,
            "status": "queued",
            "message": "",
            "metadata": metadata,
        }
        self._state.enqueue(entry)
        self._log(f"[{self.serial}] recorded {name} ({info.size} bytes, {seconds:g} s)")
        return info.path

    def _queue_stranded(self, path: Path, incomplete: bool) -> None:
        """Queue a clip found in the outbox with no queue entry: the camera died between
        recording it and queueing it (or, `incomplete`, while recording it). What the name
        holds (serial, start time) and the file itself (hash, size) are sent; `recovered`
        tells the box the rest was lost."""
        found = _CLIP_NAME.match(path.name)
        metadata = {"filename": path.name, "serial": self.serial, "recovered": "true"}
        if incomplete:
            metadata["incomplete"] = "true"  # the encoder was killed: no playable index
        if found:
            started = dt.datetime.strptime(found["started"], "%Y%m%dT%H%M%SZ")
            metadata["started_at"] = started.strftime("%Y-%m-%dT%H:%M:%SZ")
        metadata["sha256"] = sha256_file(path)
        entry = {
            "file": path.name,
            "size": path.stat().st_size,
            "sha256": metadata["sha256"],
            "upload_url": None,
            "status": "queued",
            "message": "",
            "metadata": metadata,
        }
        self._state.enqueue(entry)
        self._log(f"[{self.serial}] queued {path.name}, recorded before a crash")

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
        with self._state.held():
            for path, incomplete in self._state.tidy_outbox():
                self._queue_stranded(path, incomplete)
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
            self._tus.close()

    def __enter__(self) -> CameraSim:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one upload -------------------------------------------------------------------
    def _deliver(self, entry: dict, chunk_size: int, stop: threading.Event) -> UploadResult:
        path = self.outbox / entry["file"]
        if not path.is_file():
            self._state.drop(entry)
            return self._result(entry, "missing", message=f"{path} no longer exists")
        progress = _Progress()
        with path.open("rb") as handle:
            while not stop.is_set():
                try:
                    confirmation = self._step(entry, handle, progress, chunk_size)
                    if confirmation:
                        return self._finish(entry, confirmation, progress.sent)
                except UploadGone as gone:
                    progress.restarts += 1
                    if progress.restarts > _MAX_RESTARTS:
                        return self._result(
                            entry, "deferred", bytes_sent=progress.sent, message=str(gone)
                        )
                    self._log(f"[{self.serial}] {entry['file']}: {gone}; starting a new upload")
                    self._state.update_entry(entry, upload_url=None)
                    progress.offset = None
                except UploadRejected as rejected:
                    self._state.update_entry(entry, status="rejected", message=str(rejected))
                    self._log(f"[{self.serial}] {entry['file']} rejected: {rejected}")
                    return self._result(
                        entry, "rejected", bytes_sent=progress.sent, message=str(rejected)
                    )
                except RetryLater as retry:
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
            held = self._create_upload(entry)
            if held:  # the box already holds this clip: _finish checks the hash
                return held
            progress.offset = 0
        elif progress.offset is None:
            progress.offset, confirmation = self._tus.offset(entry["upload_url"], entry["size"])
            if confirmation:
                return confirmation
        if progress.offset >= entry["size"]:
            raise RetryLater("the box has every byte but sent no evidence hash yet")
        handle.seek(progress.offset)
        chunk = handle.read(chunk_size)
        progress.offset, confirmation = self._tus.patch(entry["upload_url"], progress.offset, chunk)
        progress.sent += len(chunk)
        progress.failures = 0
        return confirmation

    def _pause(
        self, entry: dict, retry: RetryLater, failures: int, stop: threading.Event
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

    def _create_upload(self, entry: dict) -> dict | None:
        upload_url, held = self._tus.create(
            self.box_url + TUS_PATH, entry["size"], entry["metadata"]
        )
        self._state.update_entry(entry, upload_url=upload_url)
        if held:
            self._log(f"[{self.serial}] {entry['file']}: the box already holds it at {upload_url}")
        else:
            self._log(f"[{self.serial}] {entry['file']}: upload created at {entry['upload_url']}")
        return held

    def _finish(self, entry: dict, confirmation: dict, sent: int) -> UploadResult:
        evidence = confirmation["evidence_sha256"].lower()
        recording_id = confirmation["recording_id"]
        if not hmac.compare_digest(evidence, entry["sha256"]):
            message = (
                f"the box stored sha256 {evidence} but the camera's file is "
                f"{entry['sha256']}: keeping the local copy"
            )
            self._state.update_entry(entry, status="mismatch", message=message)
            self._log(f"[{self.serial}] {entry['file']}: {message}")
            return self._result(entry, "mismatch", recording_id, evidence, sent, message)
        self._state.drop(entry, delivered={"recording_id": recording_id, "sha256": evidence})
        (self.outbox / entry["file"]).unlink(missing_ok=True)  # only now: the box holds it
        self._log(
            f"[{self.serial}] {entry['file']}: delivered as recording {recording_id}, "
            "hash verified, local copy deleted"
        )
        return self._result(entry, "delivered", recording_id, evidence, sent)

    def _connect(self) -> requests.Session:
        return pinned_session(self._state.cert_file(), self._state["cert_sha256"])

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


@dataclass
class _Progress:
    """Where one upload stands: offset None means "ask the box"."""

    offset: int | None = None
    sent: int = 0
    failures: int = 0
    restarts: int = 0


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


def _ensure_paired(camera: CameraSim, box_url, code, cert_sha256, log) -> None:
    if camera.paired and (box_url is None or normalise_box_url(box_url) == camera.box_url):
        if code:
            log(f"[{camera.serial}] already paired with {camera.box_url}; ignoring the code")
        return
    if not (box_url and code and cert_sha256):
        raise CameraError(
            "the camera is not paired: give box_url, code and cert_sha256 "
            "(from `edgebox cameras pair --json` on the box)"
        )
    camera.pair(box_url, code, cert_sha256)
