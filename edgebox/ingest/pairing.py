"""Camera pairing: short-lived one-time codes, device tokens stored hashed, revocation."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import threading
import time
import uuid

from edgebox import custody
from edgebox.clock import iso, utcnow
from edgebox.db import Store
from edgebox.errors import IngestError, NotFound

CODE_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"  # no 0/O, 1/I/L, U
CODE_LENGTH = 10
_SERIAL = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_FAILURES_PER_MINUTE = 20  # per client address
_ALL_FAILURES_PER_MINUTE = 500  # all clients together


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def normalise_code(code: str) -> str:
    """Upper-case a typed code and drop spaces and dashes."""
    return re.sub(r"[\s-]", "", code).upper()


class Pairing:
    """Issues pairing codes, enrolls cameras, and authenticates their bearer tokens."""

    def __init__(self, store: Store, code_minutes: int = 10, revoke_on_repair: bool = True):
        self.store = store
        self.code_minutes = code_minutes
        self.revoke_on_repair = revoke_on_repair
        self._failures: list[tuple[float, str]] = []  # (when, client address)
        self._lock = threading.Lock()
        self._last_seen: dict[str, float] = {}

    def new_code(self, actor: str = "operator") -> dict:
        """Create a one-time pairing code; only its hash is stored."""
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        now = utcnow()
        expires = now + dt.timedelta(minutes=self.code_minutes)
        with self.store.write() as db:
            db["pairing_codes"].insert(
                {"code_hash": _digest(code), "created_at": iso(now), "expires_at": iso(expires)}
            )
            custody.append(db, "camera.pairing_code", actor, None, {"expires_at": iso(expires)})
        return {"code": code, "expires_at": iso(expires)}

    def _throttle(self, client: str) -> None:
        """429 for a client with too many recent failures, or when all clients together have
        (a code has ~49 bits and lives minutes: guessing stays hopeless either way, while one
        client's guessing no longer blocks every other camera's pairing)."""
        with self._lock:
            now = time.monotonic()
            self._failures = [(t, c) for t, c in self._failures if now - t < 60]
            mine = sum(1 for _, c in self._failures if c == client)
            if mine >= _FAILURES_PER_MINUTE or len(self._failures) >= _ALL_FAILURES_PER_MINUTE:
                raise IngestError("too many failed pairing attempts; wait a minute", status=429)

    def _failed(self, client: str) -> None:
        with self._lock:
            self._failures.append((time.monotonic(), client))

    def enroll(self, code: str, serial: str, model: str, client: str = "local") -> dict:
        """Exchange a valid unused code for a device id and a bearer token (shown once);
        `client` (the caller's address) is what failed attempts are counted by."""
        self._throttle(client)
        if not isinstance(serial, str) or not _SERIAL.match(serial):
            raise IngestError("serial must be 1-64 letters, digits or ._:-", field="serial")
        if not isinstance(model, str) or not 0 < len(model) <= 128 or not model.isprintable():
            raise IngestError(
                "model must be 1-128 printable characters (no control characters)", field="model"
            )
        if not isinstance(code, str):
            raise IngestError("code must be a string", field="code")
        digest = _digest(normalise_code(code))
        now = iso()
        device_id = uuid.uuid4().hex
        token = secrets.token_urlsafe(32)
        with self.store.write() as db:
            row = db.execute(
                "SELECT expires_at, used_at FROM pairing_codes WHERE code_hash = ?", [digest]
            ).fetchone()
            if row is None or row[1] is not None or row[0] < now:
                self._failed(client)
                reason = "unknown" if row is None else ("used" if row[1] else "expired")
                raise IngestError(f"pairing code is {reason}", status=403, field="code")
            db["devices"].insert(
                {
                    "id": device_id,
                    "serial": serial,
                    "model": model,
                    "token_hash": _digest(token),
                    "paired_at": now,
                }
            )
            db.execute(
                "UPDATE pairing_codes SET used_at = ?, device_id = ? WHERE code_hash = ?",
                [now, device_id, digest],
            )
            custody.append(
                db,
                "camera.paired",
                f"device:{device_id}",
                device_id,
                {"serial": serial, "model": model},
            )
            revoked = (
                self._revoke_older(db, serial, device_id, now) if self.revoke_on_repair else []
            )
        return {"device_id": device_id, "token": token, "revoked": revoked}

    def _revoke_older(self, db, serial: str, device_id: str, now: str) -> list[str]:
        """Revoke the older pairings of a camera paired again (same serial), in the pairing's
        transaction: a lost or stolen camera's old token stops working the moment it is
        paired anew."""
        older = [
            row[0]
            for row in db.execute(
                "SELECT id FROM devices WHERE serial = ? AND id != ? AND revoked_at IS NULL",
                [serial, device_id],
            ).fetchall()
        ]
        for old in older:
            db.execute("UPDATE devices SET revoked_at = ? WHERE id = ?", [now, old])
            custody.append(
                db,
                "camera.revoked",
                "box",
                old,
                {"reason": "re-paired", "serial": serial, "replaced_by": device_id},
            )
        return older

    def authenticate(self, authorization: str | None) -> dict:
        """The device row for an `Authorization: Bearer` header, or 401/403."""
        if not authorization or not authorization.startswith("Bearer "):
            raise IngestError("missing bearer token", status=401)
        device = self.store.one(
            "SELECT * FROM devices WHERE token_hash = ?", (_digest(authorization[7:].strip()),)
        )
        if device is None:
            raise IngestError("unknown device token", status=401)
        if device["revoked_at"]:
            raise IngestError("this camera has been revoked", status=403)
        self._touch(device["id"])
        return device

    def _touch(self, device_id: str) -> None:
        now = time.monotonic()
        if now - self._last_seen.get(device_id, 0) < 30:
            return
        self._last_seen[device_id] = now
        with self.store.write() as db:
            db.execute("UPDATE devices SET last_seen_at = ? WHERE id = ?", [iso(), device_id])

    def revoke(self, device_id: str, actor: str = "operator") -> dict:
        """Revoke a camera's token; its finished recordings stay untouched."""
        with self.store.write() as db:
            row = db.execute("SELECT revoked_at FROM devices WHERE id = ?", [device_id]).fetchone()
            if row is None:
                raise NotFound(f"no camera with id {device_id}")
            if row[0]:
                raise IngestError(f"camera {device_id} is already revoked", status=409)
            db.execute("UPDATE devices SET revoked_at = ? WHERE id = ?", [iso(), device_id])
            custody.append(db, "camera.revoked", actor, device_id, {})
        return self.store.one("SELECT * FROM devices WHERE id = ?", (device_id,))

    def devices(self) -> list[dict]:
        """Every paired camera, newest first, without token hashes."""
        return self.store.query(
            "SELECT id, serial, model, paired_at, revoked_at, last_seen_at, source, "
            "controller_serial FROM devices "
            "ORDER BY paired_at DESC"
        )
