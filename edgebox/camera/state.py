"""A camera's persistent state, so a restarted camera resumes instead of starting over.

State directory layout::

    camera.json        device id, token, pinned certificate, pending uploads (mode 0600)
    box-cert.pem       the pinned certificate as a file, the CA bundle for `verify=`
    outbox/*.mp4       recorded clips waiting for the box

Every change to camera.json is written through at once, atomically and with mode 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from edgebox.camera.errors import CameraError
from edgebox.lowlevel.durable import write_private

STATE_FILE = "camera.json"
CERT_FILE = "box-cert.pem"
OUTBOX = "outbox"
LOCK_FILE = ".lock"
_KEEP_DELIVERED = 50
SETTLED_SECONDS = 60  # an outbox file this old is no recording still being queued


class CameraState:
    """camera.json of one camera, held in memory and saved on every change.

    `held()` is re-entrant and works across processes: every method that changes the state
    holds it, and the camera holds it too around work that must not interleave (pairing, a
    round of uploads). Its outermost holder takes an flock on the state folder and reads
    camera.json afresh, so two processes given the same folder take turns on one state
    instead of each uploading the same clip from its own copy.
    """

    def __init__(self, state_dir: str | os.PathLike, serial: str | None, model: str):
        self.state_dir = Path(state_dir)
        self.outbox = self.state_dir / OUTBOX
        self.outbox.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._depth = 0
        self._lock_fd = -1
        self._data = self._load(serial)
        if self._data is None:
            self._data = _new_state(serial, model)
            self.save()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the state: this thread, then this process against the others (flock)."""
        with self.lock:
            if self._depth == 0:
                fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_fd = fd
                self._data = self._load(None) or self._data  # what another process saved
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    os.close(self._lock_fd)  # releases the flock
                    self._lock_fd = -1

    def tidy_outbox(self) -> list[tuple[Path, bool]]:
        """After a crash: delete outbox copies of clips the box already confirmed, and return
        settled clips that no queue entry names, each with whether it is incomplete: clips
        recorded just before the camera died, and what a killed encoder left half-written
        (renamed to a clip name; footage is kept until the box holds it, never dropped)."""
        with self.held():
            queued = {e["file"] for e in self._data["pending"]}
            delivered = {e["file"] for e in self._data["delivered"]}
            settled = time.time() - SETTLED_SECONDS
            stranded = []
            for path in sorted(self.outbox.iterdir()):
                if path.name in delivered and path.name not in queued:
                    path.unlink()
                    continue
                if path.stat().st_mtime >= settled:
                    continue  # may still be written or queued by a live recording
                if path.name.startswith(".") and path.name.endswith(".mp4.part"):
                    whole = path.with_name(path.name[1 : -len(".part")])
                    if not whole.exists():
                        path.rename(whole)
                        stranded.append((whole, True))
                elif path.suffix == ".mp4" and path.name not in queued:
                    stranded.append((path, False))
            return stranded

    def __getitem__(self, key: str):
        """One field of camera.json, e.g. state["serial"]."""
        return self._data[key]

    def get(self, key: str, default=None):
        """One field of camera.json, or `default` when it is missing."""
        return self._data.get(key, default)

    def pending(self) -> list[dict]:
        """A copy of the queued clips, oldest first, with their tus upload URL if started."""
        with self.held():
            return json.loads(json.dumps(self._data["pending"]))

    def pair(self, **identity) -> None:
        """Store a new pairing (box URL, certificate, device id, token) in one write.

        Uploads started under an earlier pairing are forgotten: they belong to the old one.
        """
        with self.held():
            self._data.update(identity)
            for entry in self._data["pending"]:
                entry["upload_url"] = None
            self.save()  # the commit point: token and pinned certificate together

    def take_sequence(self) -> int:
        """The next clip sequence number, persisted as used."""
        with self.held():
            sequence = self._data["next_sequence"]
            self._data["next_sequence"] = sequence + 1
            self.save()
            return sequence

    def enqueue(self, entry: dict) -> None:
        """Queue a recorded clip for upload (once: a clip already queued stays as it is)."""
        with self.held():
            if all(e["file"] != entry["file"] for e in self._data["pending"]):
                self._data["pending"].append(entry)
                self.save()

    def update_entry(self, entry: dict, **changes) -> None:
        """Apply `changes` to a queued clip and to the caller's copy `entry`, and save."""
        with self.held():
            entry.update(changes)
            for stored in self._data["pending"]:
                if stored["file"] == entry["file"]:
                    stored.update(changes)
            self.save()

    def drop(self, entry: dict, delivered: dict | None = None) -> None:
        """Remove a clip from the queue; record it in the delivery history if `delivered`."""
        with self.held():
            self._data["pending"] = [e for e in self._data["pending"] if e["file"] != entry["file"]]
            if delivered is not None:
                history = self._data["delivered"] + [{"file": entry["file"], **delivered}]
                self._data["delivered"] = history[-_KEEP_DELIVERED:]
            self.save()

    def cert_file(self) -> Path:
        """The pinned certificate as a file for `verify=`, rewritten from the state if stale."""
        path = self.state_dir / CERT_FILE
        pem = self._data["cert_pem"].encode("ascii")
        if not path.is_file() or path.read_bytes() != pem:
            write_private(path, pem)
        return path

    def save(self) -> None:
        """Write camera.json atomically with mode 0600."""
        write_private(
            self.state_dir / STATE_FILE,
            json.dumps(self._data, indent=2, sort_keys=True).encode("utf-8"),
        )

    def _load(self, serial: str | None) -> dict | None:
        path = self.state_dir / STATE_FILE
        if not path.is_file():
            return None
        state = json.loads(path.read_text(encoding="utf-8"))
        if serial and serial != state["serial"] and state.get("token"):
            raise CameraError(
                f"{self.state_dir} belongs to camera {state['serial']}, "
                f"not {serial}; use another state directory"
            )
        if serial:
            state["serial"] = serial
        return state


def _new_state(serial: str | None, model: str) -> dict:
    return {
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
