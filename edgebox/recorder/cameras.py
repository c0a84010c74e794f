"""The cameras the box pulls from: add by RTSP URL, credentials sealed, live state.

An RTSP camera is a `devices` row (model `rtsp`, a token hash nobody holds, so it can
never upload over tus) plus a `rtsp_cameras` row. Its user name and password never sit
in the URL, the config or a log: they are sealed with AES-GCM under a key derived from
the box's ingest key, bound to the camera's id, and opened only to start ffmpeg.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgebox import custody
from edgebox.clock import iso
from edgebox.errors import EdgeboxError, KeyAccessError, NotFound

PRE_EVENT_FLOOR = 30.0  # seconds; the police-function floor, never configurable below
PRE_EVENT_MAX = 600.0
POST_EVENT_MAX = 3600.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_PURPOSE = b"edgebox-rtsp-camera-credentials"


@dataclass(frozen=True)
class CameraSpec:
    """What a puller needs to know about one camera."""

    device_id: str
    name: str
    url: str  # without credentials
    pre_event_seconds: float
    post_event_seconds: float
    username: str | None = None
    password: str | None = None
    onvif_xaddr: str | None = None

    def source_url(self) -> str:
        """The URL given to ffmpeg, credentials included (never logged, never shown)."""
        if not self.username:
            return self.url
        parts = urlsplit(self.url)
        userinfo = quote(self.username, safe="") + ":" + quote(self.password or "", safe="")
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))

    def redact(self, text: str) -> str:
        """`text` with the credentials (raw and URL-encoded) replaced by `***`."""
        for secret in (self.password, self.username):
            if secret:
                text = text.replace(quote(secret, safe=""), "***").replace(secret, "***")
        return text


def _bad(field: str, message: str) -> EdgeboxError:
    return EdgeboxError(message, status=400, field=field)


def _credentials_key(ingest_key: bytes) -> AESGCM:
    return AESGCM(
        HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(ingest_key)
    )


def seal_credentials(ingest_key: bytes, device_id: str, username: str, password: str) -> str:
    """The sealed form of a camera's credentials (base64 of nonce and ciphertext)."""
    nonce = secrets.token_bytes(12)
    body = json.dumps({"username": username, "password": password}).encode()
    sealed = _credentials_key(ingest_key).encrypt(nonce, body, device_id.encode())
    return base64.b64encode(nonce + sealed).decode()


def open_credentials(ingest_key: bytes, device_id: str, sealed: str) -> tuple[str, str]:
    """(username, password) from their sealed form, or KeyAccessError."""
    raw = base64.b64decode(sealed)
    try:
        body = _credentials_key(ingest_key).decrypt(raw[:12], raw[12:], device_id.encode())
    except InvalidTag:
        raise KeyAccessError(f"the credentials of camera {device_id} do not open") from None
    values = json.loads(body)
    return values["username"], values["password"]


def split_url(url: str) -> tuple[str, str | None, str | None]:
    """(URL without credentials, user name, password) of an rtsp:// or rtsps:// URL, or a
    400 naming what is wrong."""
    if not isinstance(url, str) or len(url) > 1000 or any(ord(c) < 33 for c in url):
        raise _bad("url", "url must be one rtsp:// URL without spaces")
    parts = urlsplit(url)
    if parts.scheme not in ("rtsp", "rtsps"):
        raise _bad("url", "url must start with rtsp:// or rtsps://")
    try:
        port = parts.port
    except ValueError:
        raise _bad("url", "url has a bad port") from None
    if not parts.hostname:
        raise _bad("url", "url has no host")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    clean = urlunsplit(parts._replace(netloc=netloc))
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return clean, username, password


def _seconds(value, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _bad(field, f"{field} must be a number of seconds from {low:g} to {high:g}")
    return float(value)


class CameraRegistry:
    """Adds, lists and removes RTSP cameras in the box's database."""

    def __init__(self, store, keys, default_pre: float = PRE_EVENT_FLOOR, default_post=10.0):
        self.store = store
        self.keys = keys
        self.default_pre = max(PRE_EVENT_FLOOR, default_pre)
        self.default_post = default_post
        self._opened: dict[tuple[str, str], tuple[str, str]] = {}

    def add(
        self,
        name: str,
        url: str,
        actor: str,
        username: str | None = None,
        password: str | None = None,
        pre_event_seconds: float | None = None,
        post_event_seconds: float | None = None,
        onvif_xaddr: str | None = None,
    ) -> dict:
        """Add a camera (credentials in the URL or given apart; both at once is refused);
        `onvif_xaddr`: its ONVIF device service, whose events then trigger recordings."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise _bad("name", "name must be 1-63 letters, digits, '.', '_' or '-'")
        clean, url_user, url_password = split_url(url)
        if onvif_xaddr is not None and not str(onvif_xaddr).startswith(("http://", "https://")):
            raise _bad("onvif_xaddr", "onvif_xaddr must be an http:// or https:// address")
        if url_user and username:
            raise _bad("username", "give the credentials in the URL or apart, not both")
        username, password = (url_user, url_password) if url_user else (username, password)
        if password and not username:
            raise _bad("username", "a password needs a user name")
        pre = _seconds(
            self.default_pre if pre_event_seconds is None else pre_event_seconds,
            "pre_event_seconds",
            PRE_EVENT_FLOOR,
            PRE_EVENT_MAX,
        )
        post = _seconds(
            self.default_post if post_event_seconds is None else post_event_seconds,
            "post_event_seconds",
            0,
            POST_EVENT_MAX,
        )
        if self.store.one("SELECT 1 FROM rtsp_cameras WHERE name = ?", (name,)):
            raise EdgeboxError(f"a camera named {name} exists already", status=409, field="name")
        device_id = uuid.uuid4().hex
        sealed = (
            seal_credentials(self.keys.ingest_key(), device_id, username, password or "")
            if username
            else None
        )
        now = iso()
        with self.store.write() as db:
            db["devices"].insert(
                {
                    "id": device_id,
                    "serial": name,
                    "model": "rtsp",
                    # A hash of a token nobody was ever given: the camera cannot use tus.
                    "token_hash": hashlib.sha256(secrets.token_bytes(32)).hexdigest(),
                    "paired_at": now,
                }
            )
            db["rtsp_cameras"].insert(
                {
                    "device_id": device_id,
                    "name": name,
                    "url": clean,
                    "credentials": sealed,
                    "pre_event_seconds": pre,
                    "post_event_seconds": post,
                    "added_at": now,
                    "added_by": actor,
                    "onvif_xaddr": onvif_xaddr,
                    "state_since": now,
                }
            )
            custody.append(
                db,
                "camera.added",
                actor,
                device_id,
                {"name": name, "url": clean, "credentials": bool(sealed), "pre_event": pre},
            )
        return self.get(device_id)

    def get(self, camera: str) -> dict:
        """One camera's public row (by id or name), with its live state; 404 if unknown."""
        row = self.store.one(f"{_PUBLIC} WHERE r.device_id = ? OR r.name = ?", (camera, camera))
        if row is None:
            raise NotFound(f"no RTSP camera {camera}")
        return row

    def list(self) -> list[dict]:
        """Every RTSP camera with its live state (no credentials), by name."""
        return self.store.query(f"{_PUBLIC} ORDER BY r.name")

    def active_specs(self) -> list[CameraSpec]:
        """The cameras the recorder should pull (not revoked), credentials opened."""
        rows = self.store.query(
            "SELECT r.* FROM rtsp_cameras r JOIN devices d ON d.id = r.device_id "
            "WHERE d.revoked_at IS NULL"
        )
        specs = []
        for row in rows:
            username = password = None
            if row["credentials"]:
                key = (row["device_id"], row["credentials"])
                if key not in self._opened:  # opened once, not on every reconcile
                    self._opened[key] = open_credentials(
                        self.keys.ingest_key(), row["device_id"], row["credentials"]
                    )
                username, password = self._opened[key]
            specs.append(
                CameraSpec(
                    row["device_id"],
                    row["name"],
                    row["url"],
                    row["pre_event_seconds"],
                    row["post_event_seconds"],
                    username,
                    password,
                    row["onvif_xaddr"],
                )
            )
        return specs

    def set_state(self, device_id: str, state: str, error: str | None = None) -> None:
        """Record a puller's new live state (called on changes only)."""
        now = iso()
        with self.store.write() as db:
            db.execute(
                "UPDATE rtsp_cameras SET state = ?, state_since = ?, error = ?, "
                "streaming_since = CASE WHEN ? = 'streaming' THEN ? ELSE NULL END, "
                "offline_since = CASE WHEN ? = 'streaming' THEN NULL "
                "ELSE COALESCE(offline_since, ?) END WHERE device_id = ?",
                [state, now, error, state, now, state, now, device_id],
            )


_PUBLIC = (
    "SELECT r.device_id AS id, r.name, r.url, r.credentials IS NOT NULL AS has_credentials, "
    "r.pre_event_seconds, r.post_event_seconds, r.added_at, r.state, r.state_since, "
    "r.streaming_since, r.offline_since, r.error, r.onvif_xaddr, d.revoked_at "
    "FROM rtsp_cameras r JOIN devices d ON d.id = r.device_id"
)


ALARM_AFTER_SECONDS = 60  # a camera down this long raises an alarm (not a brief reconnect)


def camera_alarms(store, now: float) -> list[dict]:
    """Warnings for RTSP cameras not streaming for a minute or more, for the status `alarms`."""
    from edgebox.clock import parse_rfc3339

    alarms = []
    for row in store.query(
        "SELECT r.name, r.state, r.offline_since, r.error FROM rtsp_cameras r "
        "JOIN devices d ON d.id = r.device_id WHERE d.revoked_at IS NULL "
        "AND r.state != 'streaming' AND r.offline_since IS NOT NULL"
    ):
        if now - parse_rfc3339(row["offline_since"]).timestamp() < ALARM_AFTER_SECONDS:
            continue
        alarms.append(
            {
                "source": f"camera:{row['name']}",
                "severity": "warning",
                "since": row["offline_since"],
                "message": f"camera {row['name']} is {row['state']}: {row['error'] or 'no stream'}",
            }
        )
    return alarms
