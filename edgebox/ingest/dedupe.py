"""Uploads the box already holds: a camera that sends a clip again is answered, not stored twice.

A camera may send a clip a second time when it lost the box's confirmation (a crash between
the box's answer and deleting its copy, a reset, a re-pairing). When a new upload names a
camera-side `sha256` and that camera (by serial, across re-pairings) already delivered a
recording with that evidence hash and size, creation answers with that recording instead
of opening a second upload (docs/ingest.md, "Uploads the box already holds"), and the
answer is logged in custody as `upload.duplicate`.
"""

from __future__ import annotations

from edgebox import custody
from edgebox.db import Store


def held_recording(store: Store, device: dict, length: int, columns: dict) -> dict | None:
    """The recording this camera already delivered with the upload's camera-side sha256 and
    length (logged as `upload.duplicate`), or None when the upload is new."""
    claimed = columns.get("camera_sha256")
    if not claimed:
        return None
    held = store.one(
        "SELECT r.id, r.upload_id, r.evidence_sha256, r.size, r.sync_state, u.expires_at "
        "FROM recordings r JOIN uploads u ON u.id = r.upload_id "
        "WHERE r.serial = ? AND r.evidence_sha256 = ? AND r.size = ? "
        "ORDER BY r.received_at, r.id LIMIT 1",
        (device["serial"], claimed, length),
    )
    if held is None:
        return None
    custody.record(
        store,
        "upload.duplicate",
        f"device:{device['id']}",
        held["id"],
        {
            "camera_sha256": claimed,
            "length": length,
            "filename": columns.get("filename"),
            "device_id": device["id"],
            "sync_state": held["sync_state"],
        },
    )
    return held
