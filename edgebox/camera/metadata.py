"""What a camera tells the box about each clip: the fields of its tus Upload-Metadata."""

from __future__ import annotations

import datetime as dt
import hashlib
import random

from edgebox.camera.tus import encode_tus_metadata, metadata_text, rfc3339

DEFAULT_USER = "user-1"
DEFAULT_CATEGORY = "unclassified"


def clip_metadata(
    serial: str,
    name: str,
    sha256: str,
    started: dt.datetime,
    stopped: dt.datetime,
    pre: float,
    given: dict,
) -> dict[str, str]:
    """The metadata of one clip: defaults for what the box requires, overridden by `given`.

    A clip is marked `warned` unless it names an `exemption`; any further keys in `given`
    are passed on as text. A bad key raises ValueError now rather than at upload time.
    """
    given = dict(given)
    exemption = given.pop("exemption", None)
    warned = given.pop("warned", None if exemption else True)
    metadata = {
        "filename": name,
        "serial": serial,
        "user_id": given.pop("user_id", DEFAULT_USER),
        "started_at": rfc3339(started),
        "stopped_at": rfc3339(stopped),
        "trigger_on": given.pop("trigger_on", "button"),
        "trigger_off": given.pop("trigger_off", "button"),
        "pre_event_seconds": f"{pre:g}",
        "gps": given.pop("gps", simulated_position(serial)),
        "category": given.pop("category", DEFAULT_CATEGORY),
        "sha256": sha256,
    }
    if exemption:
        metadata["exemption"] = str(exemption)
    elif warned is not None:
        metadata["warned"] = metadata_text(warned)
    for key, value in given.items():
        if value is not None:
            metadata[key] = metadata_text(value)
    encode_tus_metadata(metadata)  # fail now, not at upload time, on a bad key
    return metadata


def simulated_position(serial: str) -> str:
    """A GPS fix near Brussels, stable per camera and jittering a little per clip."""
    seed = int(hashlib.sha256(serial.encode()).hexdigest()[:8], 16)
    lat = 50.8466 + (seed % 1000 - 500) / 20000 + random.uniform(-2e-4, 2e-4)  # noqa: S311
    lon = 4.3528 + (seed // 1000 % 1000 - 500) / 20000 + random.uniform(-2e-4, 2e-4)  # noqa: S311
    return f"{lat:.6f},{lon:.6f}"
