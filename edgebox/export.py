"""`edgebox export`: the box writes the same evidence package central writes.

The box decrypts with a supervisor's review key (so only until central confirmed its copy
and the box sealed the recording), signs the same manifest it sends central, logs the export
in custody, and signs a fresh checkpoint when none covers the recording's entries yet, so the
package's custody segment always ends at a signed checkpoint. The package is written by
`edgebox.evidence.writer`, the code path central uses too.
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgebox import custody
from edgebox.errors import EdgeboxError, KeyAccessError, NotFound
from edgebox.evidence.writer import PackageSource, check_out, custody_segment, write_package
from edgebox.keys import key_id
from edgebox.recordings import data_key_for
from edgebox.retention import is_deleted
from edgebox.sync import protocol
from edgebox.sync.transfer import recording_manifest


def export_package(
    box, recording_id: str, review_key: X25519PrivateKey, out: Path, actor: str
) -> dict:
    """Write one recording's evidence package to `out` (all or nothing) and log the export."""
    out = Path(out)
    check_out(out)
    rec = box.store.one("SELECT * FROM recordings WHERE id = ?", (recording_id,))
    if rec is None or is_deleted(rec):
        raise NotFound(f"no recording {recording_id} on this box")
    if rec["sealed"]:
        raise KeyAccessError(
            f"recording {recording_id} is sealed: central confirmed its copy and the box can no "
            "longer decrypt it; export it at central (`edgebox central export`)",
            status=409,
        )
    path = box.uploads.vault_path(recording_id)
    data_key = data_key_for(path, review_key)  # a wrong key fails here, before any entry
    details = {
        "package": out.name,
        "evidence_sha256": rec["evidence_sha256"],
        "stored_sha256": rec["stored_sha256"],
        "review_key_id": key_id(review_key.public_key()),
    }
    custody.record(box.store, "recording.exported", actor, recording_id, details)
    try:
        box.checkpoint()  # signs the head (this export included) unless it is signed already
        identity = box.keys.identity()
        manifest = recording_manifest(box.store, box.config.box.box_id, rec)
        source = PackageSource(
            box_id=box.config.box.box_id,
            recording_id=recording_id,
            vault_path=path,
            data_key=data_key,
            manifest=manifest,
            signature=protocol.sign(manifest, identity),
            identity=base64.b64encode(identity.public_key().public_bytes_raw()).decode(),
            trail=_custody_segment(box.store, recording_id),
            vault_origin="as the box holds it",
            extra={"exported_from": "box", "exported_by": actor, **details},
        )
        return write_package(source, out)
    except EdgeboxError as exc:
        custody.record(
            box.store,
            "recording.export_failed",
            actor,
            recording_id,
            {"package": out.name, "error": exc.message},
        )
        raise


def _custody_segment(store, recording_id: str) -> dict:
    """The recording's entries, the chain from the first to the covering checkpoint, and the
    checkpoints in it (entries and checkpoints never change once written, so entries appended
    meanwhile only fall outside the segment)."""
    mine = store.query("SELECT * FROM custody WHERE subject = ? ORDER BY seq", (recording_id,))
    first, last = (mine[0]["seq"], mine[-1]["seq"]) if mine else (0, 0)
    cover = store.one("SELECT seq FROM checkpoints WHERE seq >= ? ORDER BY seq LIMIT 1", (last,))
    end = cover["seq"] if cover else last
    chain = store.query(
        "SELECT * FROM custody WHERE seq BETWEEN ? AND ? ORDER BY seq", (first, end)
    )
    checkpoints = store.query(
        "SELECT * FROM checkpoints WHERE seq BETWEEN ? AND ? ORDER BY seq", (first, end)
    )
    return custody_segment(recording_id, mine, chain, checkpoints, "the box's custody log")
