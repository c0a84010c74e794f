"""Names and metadata of the Body Worn Integration API: which container and object a path
is, and the `X-Container-Meta-*` / `X-Object-Meta-*` headers as a clean dict.

Swift folds metadata keys to "Title-case per hyphen" (`StartTime` arrives as `Starttime`),
so keys are compared case-insensitively: `meta_get(meta, "StartTime")`. Values are URL-encoded
UTF-8 and are decoded here. Anything the box can never accept is an IngestError 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from edgebox.errors import IngestError

SYSTEM, USERS, DEVICES = "System", "Users", "Devices"
DIRECTORY_KINDS = {SYSTEM: "system", USERS: "users", DEVICES: "devices"}
OBJECT_KINDS = {SYSTEM: "system", USERS: "user", DEVICES: "device"}
CAPABILITIES, CATEGORIES = "Capabilities.json", "Categories.json"
BOX_OBJECTS = (CAPABILITIES, CATEGORIES)
CLIP_TYPES = ("mkv", "mp4")
# Swift's own limits on metadata (swift/common/constraints.py defaults)
MAX_META_NAME, MAX_META_VALUE, MAX_META_COUNT, MAX_META_OVERALL = 128, 256, 90, 4096
_PART = re.compile(r"^[A-Za-z0-9.:-]{1,100}$")
_TIME_PART = re.compile(r"^[0-9A-Za-z:._+-]{1,64}$")
_OBJECT = re.compile(r"^[^/\\\x00-\x1f]{1,255}$")


def bad(message: str, field: str | None = None) -> IngestError:
    """The 400 of the spec: content the box will never be able to store."""
    return IngestError(message, status=400, field=field)


@dataclass(frozen=True)
class RecordingName:
    """The parts of a recording container's name `<UserID>_<BWCSerialNumber>_<TriggerOnTime>`."""

    user_uuid: str
    serial: str
    trigger_on: str


def container_kind(name: str) -> str:
    """'system', 'users', 'devices' or 'recording' for a container name (400 if neither)."""
    if name in DIRECTORY_KINDS:
        return DIRECTORY_KINDS[name]
    parse_recording_name(name)
    return "recording"


def parse_recording_name(name: str) -> RecordingName:
    """Split a recording container name; 400 when it does not follow the spec's template."""
    parts = name.split("_", 2)
    if len(parts) != 3 or not all(parts):
        raise bad(
            f"container {name[:80]!r} is neither System, Users, Devices nor a recording "
            "named <UserID>_<BWCSerialNumber>_<TriggerOnTime>",
            "container",
        )
    user, serial, trigger = parts
    if not _PART.match(user) or not _PART.match(serial) or not _TIME_PART.match(trigger):
        raise bad(
            f"recording container name {name[:80]!r} holds characters it may not", "container"
        )
    return RecordingName(user, serial, trigger)


def object_kind(container_kind_: str, name: str) -> str:
    """What an object in a container of that kind is: clip, key, bookmark, gnss (recordings)
    or system, user, device (the directory containers); 400 for anything else."""
    if not _OBJECT.match(name):
        raise bad("object names are 1-255 characters without '/', '\\' or control characters")
    if container_kind_ != "recording":
        return {"system": "system", "users": "user", "devices": "device"}[container_kind_]
    lower = name.lower()
    if lower.endswith(".key"):
        return "key"
    if lower.startswith("bookmark_"):
        return "bookmark"
    if lower.endswith("_gpstrail.json"):
        return "gnss"
    if lower.rsplit(".", 1)[-1] in CLIP_TYPES and "." in lower:
        return "clip"
    raise bad(
        f"object {name[:80]!r} is not a clip (.mkv/.mp4), key (.key), bookmark (bookmark_*) "
        "or GNSS track (*_gpstrail.json)",
        "object",
    )


def read_meta(headers, prefix: str) -> dict[str, str]:
    """The `prefix`-ed metadata headers as {Key: decoded value} (400 past Swift's limits)."""
    meta: dict[str, str] = {}
    overall = 0
    for header, value in headers.items():
        if not header.lower().startswith(prefix.lower()) or len(header) == len(prefix):
            continue
        key = header[len(prefix) :]
        if len(key) > MAX_META_NAME:
            raise bad(f"metadata name {key[:40]!r}... is longer than {MAX_META_NAME}", key[:40])
        if len(value) > MAX_META_VALUE:
            raise bad(f"metadata {key} is longer than {MAX_META_VALUE} characters", key)
        try:
            text = unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise bad(f"metadata {key} is not URL-encoded UTF-8", key) from None
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise bad(f"metadata {key} holds control characters", key)
        overall += len(key) + len(value)
        meta[key.title()] = text
    if len(meta) > MAX_META_COUNT or overall > MAX_META_OVERALL:
        raise bad(f"at most {MAX_META_COUNT} metadata items of {MAX_META_OVERALL} bytes in all")
    return meta


def meta_get(meta: dict, key: str) -> str | None:
    """A metadata value by its spec name, whatever case it arrived in; empty counts as absent."""
    wanted = key.lower()
    for name, value in meta.items():
        if name.lower() == wanted:
            return value or None
    return None


def merge_meta(old: dict, new: dict) -> dict:
    """Swift container POST: new keys set or replace, an empty value removes the key."""
    merged = {k: v for k, v in old.items() if k.lower() not in {n.lower() for n in new}}
    merged.update({k: v for k, v in new.items() if v != ""})
    return merged


def meta_headers(meta: dict, prefix: str) -> dict[str, str]:
    """Metadata as response headers (values URL-encoded back, as Swift returns them)."""
    return {f"{prefix}{key}": quote(value, safe=" :;,./@+-_") for key, value in meta.items()}
