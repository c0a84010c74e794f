"""Parse and validate tus `Upload-Metadata` for a recording; unknown keys are kept."""

from __future__ import annotations

import base64
import math
import re

from edgebox import exemptions
from edgebox.clock import parse_rfc3339
from edgebox.errors import IngestError

MAX_HEADER = 16 * 1024
_KEY = re.compile(r"^[^\s,]{1,64}$")  # tus: any key without spaces or commas
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SHORT = 128


def decode_header(header: str | None) -> dict[str, str]:
    """Decode the tus encoding `key base64,key base64,...` into text values."""
    if not header:
        return {}
    if len(header) > MAX_HEADER:
        raise IngestError(
            f"Upload-Metadata longer than {MAX_HEADER} bytes", field="Upload-Metadata"
        )
    values: dict[str, str] = {}
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        key = parts[0]
        if not _KEY.match(key) or len(parts) > 2:
            raise IngestError(
                f"malformed metadata pair {pair.strip()[:40]!r}", field="Upload-Metadata"
            )
        if key in values:
            raise IngestError(f"metadata key {key!r} given twice", field=key)
        try:
            values[key] = (
                base64.b64decode(parts[1], validate=True).decode("utf-8") if len(parts) == 2 else ""
            )
        except ValueError:  # binascii.Error, UnicodeDecodeError, or non-ASCII "base64"
            raise IngestError(f"metadata {key!r} is not base64 of UTF-8 text", field=key) from None
    return values


def _text(values: dict, key: str, limit: int = _SHORT) -> str | None:
    value = values.get(key)
    if value is None or value == "":
        return None
    if len(value) > limit or any(ord(c) < 32 for c in value):
        raise IngestError(f"{key} must be printable text of at most {limit} characters", field=key)
    return value


def _filename(values: dict) -> str | None:
    name = _text(values, "filename", 255)
    if name is None:
        return None
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise IngestError("filename must be a plain file name without a path", field="filename")
    return name


def _time(values: dict, key: str) -> str | None:
    text = _text(values, key, 64)
    if text is None:
        return None
    try:
        moment = parse_rfc3339(text)
        if not 1970 <= moment.year <= 9999:
            raise ValueError("outside the years 1970..9999")
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except (ValueError, OverflowError):  # OverflowError: a zone pushing it past year 1..9999
        raise IngestError(
            f"{key} must be an RFC 3339 time with a zone, e.g. 2026-11-28T16:00:00Z", field=key
        ) from None


def _gps(values: dict) -> str | None:
    text = _text(values, "gps", 64)
    if text is None:
        return None
    try:
        lat, lon = (float(part) for part in text.split(","))
    except ValueError:
        raise IngestError(
            "gps must be 'latitude,longitude' in decimal degrees", field="gps"
        ) from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise IngestError("gps coordinates out of range", field="gps")
    return f"{lat:.6f},{lon:.6f}"


def _pre_event(values: dict) -> float | None:
    text = _text(values, "pre_event_seconds", 32)
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise IngestError("pre_event_seconds must be a number", field="pre_event_seconds") from None
    if not math.isfinite(seconds) or not 0 <= seconds <= 3600:
        raise IngestError("pre_event_seconds must be between 0 and 3600", field="pre_event_seconds")
    return seconds


def _warned(values: dict) -> int | None:
    text = _text(values, "warned", 8)
    if text is None:
        return None
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise IngestError("warned must be true or false", field="warned")
    return 1 if text.lower() in ("true", "1", "yes") else 0


def parse_recording_metadata(header: str | None, device_serial: str) -> tuple[dict, dict]:
    """Validate metadata; returns (typed recording columns, every key as sent)."""
    values = decode_header(header)
    serial = _text(values, "serial", 64) or device_serial
    if serial != device_serial:
        raise IngestError(
            f"serial {serial!r} is not the paired camera's serial", status=403, field="serial"
        )
    sha = _text(values, "sha256", 64)
    if sha is not None and not _HEX64.match(sha.lower()):
        raise IngestError("sha256 must be 64 hexadecimal digits", field="sha256")
    columns = {
        "serial": serial,
        "filename": _filename(values),
        "user_id": _text(values, "user_id"),
        "started_at": _time(values, "started_at"),
        "stopped_at": _time(values, "stopped_at"),
        "trigger_on": _text(values, "trigger_on"),
        "trigger_off": _text(values, "trigger_off"),
        "pre_event_seconds": _pre_event(values),
        "gps": _gps(values),
        "category": _text(values, "category", 64),
        "warned": _warned(values),
        "exemption": exemptions.from_camera(_text(values, "exemption", 500)),
        "camera_sha256": sha.lower() if sha else None,
    }
    if (
        columns["started_at"]
        and columns["stopped_at"]
        and columns["stopped_at"] < columns["started_at"]
    ):
        raise IngestError("stopped_at is before started_at", field="stopped_at")
    if columns["warned"] == 1 and columns["exemption"]:
        raise IngestError(
            "give either warned=true or an exemption reason, not both", field="exemption"
        )
    return columns, values
