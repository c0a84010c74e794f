"""Certificate pinning: the camera trusts the box's certificate only by its SHA-256.

The pairing code the operator reads off the box comes with the SHA-256 of the box's TLS
certificate. The camera fetches the certificate, compares it with that fingerprint before
it sends anything, and from then on talks to the box only through sessions that accept
exactly that certificate, whatever address the box has.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from edgebox.camera.errors import CameraError, PairingError, PinningError, error_message

ENROLL_PATH = "/api/v1/cameras/enroll"


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
    expected = normalise_fingerprint(expected_sha256)
    pem = fetch_certificate(box_url, timeout)
    actual = certificate_sha256(pem)
    if not hmac.compare_digest(actual, expected):
        raise PinningError(
            f"the box at {box_url} presented certificate {actual}, but the pairing code "
            f"names {expected}: refusing to pair (wrong box or someone in between)"
        )
    return pem


def normalise_box_url(box_url: str) -> str:
    """The box's base URL as `https://host[:port]`; anything but an https URL is refused."""
    parts = urlsplit(box_url.strip())
    if parts.scheme != "https" or not parts.hostname:
        raise CameraError(f"box URL must be https://host:port, got {box_url!r}")
    return f"https://{parts.netloc}"


def normalise_fingerprint(fingerprint: str) -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits (colons and spaces are dropped)."""
    cleaned = re.sub(r"[\s:]", "", fingerprint or "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", cleaned):
        raise CameraError("cert_sha256 must be the 64 hex digits of the box certificate's SHA-256")
    return cleaned


def pinned_session(cert_path: Path, fingerprint: str) -> requests.Session:
    """A requests session that accepts only the pinned certificate and ignores the environment."""
    session = requests.Session()
    session.trust_env = False  # no proxies or CA bundle from the environment
    session.verify = str(cert_path)
    session.mount("https://", _PinnedAdapter(fingerprint))
    session.mount("http://", HTTPAdapter(max_retries=0))
    return session


def enroll(
    box_url: str,
    cert_path: Path,
    fingerprint: str,
    code: str,
    *,
    serial: str,
    model: str,
    timeout: float,
) -> dict:
    """Exchange a one-time pairing code for the box's `device_id` and `token`, pinned."""
    session = pinned_session(cert_path, fingerprint)
    try:
        response = session.post(
            box_url + ENROLL_PATH,
            json={"code": code, "serial": serial, "model": model},
            timeout=timeout,
        )
    except requests.RequestException as exc:
        raise PairingError(f"pairing with {box_url} failed: {exc}") from exc
    finally:
        session.close()
    if response.status_code != 201:
        raise PairingError(
            f"the box refused pairing ({response.status_code}): {error_message(response)}"
        )
    try:
        body = response.json()
        if not (isinstance(body.get("device_id"), str) and isinstance(body.get("token"), str)):
            raise ValueError
    except (ValueError, AttributeError):
        raise PairingError("the box answered pairing without a device_id and token") from None
    return body


class _PinnedAdapter(HTTPAdapter):
    """Accepts only the exact certificate pinned at pairing, whatever address the box has."""

    def __init__(self, fingerprint: str, **kwargs):
        self._fingerprint = fingerprint
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        """Make every pooled connection assert the pinned fingerprint."""
        kwargs["assert_fingerprint"] = self._fingerprint
        super().init_poolmanager(*args, **kwargs)


def _host_port(box_url: str) -> tuple[str, int]:
    parts = urlsplit(normalise_box_url(box_url))
    return parts.hostname, parts.port or 443
