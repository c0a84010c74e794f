"""The camera's errors, and the box's explanation of a refused request."""

from __future__ import annotations

import requests


class CameraError(Exception):
    """A camera operation failed; the message says what to do about it."""


class PinningError(CameraError):
    """The box presented a certificate other than the one the operator's pairing code names."""


class PairingError(CameraError):
    """The box refused to enroll this camera."""


class AuthError(CameraError):
    """The box refused the device token (401/403): the camera must be paired again."""


def error_message(response: requests.Response) -> str:
    """The box's reason for an answer: its JSON `message`, else the start of the body."""
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except ValueError:
        pass
    return (response.text or response.reason or "").strip()[:200]
