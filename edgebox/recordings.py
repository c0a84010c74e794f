"""Reading recordings back (data keys) and rewriting their headers (seal, re-wrap)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgebox import custody, vault
from edgebox.clock import iso
from edgebox.errors import NotFound
from edgebox.keys import HPKE_NAME, key_id, unwrap_key, wrap_key
from edgebox.retention import is_deleted

log = logging.getLogger(__name__)


def data_key_for(path: Path, private: X25519PrivateKey, role: str = "review") -> bytes:
    """Unwrap a vault file's data key with the review key (or central's, role='central')."""
    header = vault.read_header(path)
    wrapped = header.stanza(f"{role}:{key_id(private.public_key())}")
    data_key = unwrap_key(wrapped, private, header.core["recording_id"].encode())
    header.check_mac(data_key)
    return data_key


def _rewrite(box, rec: dict, stanzas: list[dict], event: str, actor: str, details: dict) -> dict:
    """Rewrite a recording's header so that no crash leaves the file and the database apart.

    Three steps, each durable before the next: the change is recorded as pending (the new
    stored hash and the custody entry it will log, in `header_changes`); the header is
    rewritten (journaled, fsynced); the row takes the new hash with its custody entry and the
    pending change goes, in one transaction. A crash between them is settled at the next
    start by `finish_header_changes`, which goes by the file's own hash.
    """
    path = box.uploads.vault_path(rec["id"])
    raw, stored = vault.planned_header(path, stanzas)
    change = {
        "recording_id": rec["id"],
        "stored_sha256": stored,
        "sealed": int(event == "recording.sealed" or rec["sealed"]),
        "event": event,
        "actor": actor,
        "details": json.dumps(
            {**details, "stored_sha256": stored, "previous_stored_sha256": rec["stored_sha256"]}
        ),
        "created_at": iso(),
    }
    with box.store.write() as db:
        db["header_changes"].insert(change, replace=True)
    vault.journal_header(path, raw)
    with box.store.write() as db:
        _complete(db, change)
    return box.store.one("SELECT * FROM recordings WHERE id = ?", (rec["id"],))


def _complete(db, change: dict, **extra) -> None:
    """The file carries the change: the row takes its hash, custody logs it, it is no longer
    pending (inside the caller's write transaction)."""
    db.execute(
        "UPDATE recordings SET stored_sha256 = ?, sealed = ? WHERE id = ?",
        [change["stored_sha256"], change["sealed"], change["recording_id"]],
    )
    details = {**json.loads(change["details"]), **extra}
    custody.append(db, change["event"], change["actor"], change["recording_id"], details)
    db.execute("DELETE FROM header_changes WHERE recording_id = ?", [change["recording_id"]])


def finish_header_changes(box) -> dict[str, list[str]]:
    """At start, after the header journals were replayed: settle each header rewrite a crash
    left pending, by the file's hash. The new hash: the change is completed and logged (with
    `finished_at_start`). The old hash: it never reached the file and is dropped (a seal is
    simply done again). Anything else is left pending and logged as an error, for `edgebox
    verify` to name as damage. Returns the recordings finished, dropped and left."""
    settled: dict[str, list[str]] = {
        "headers_finished": [],
        "headers_dropped": [],
        "headers_left": [],
    }
    for change in box.store.query("SELECT * FROM header_changes ORDER BY created_at"):
        rid = change["recording_id"]
        rec = box.store.one("SELECT stored_sha256 FROM recordings WHERE id = ?", (rid,))
        path = box.uploads.vault_path(rid)
        actual = vault.file_sha256(path) if path.exists() else None
        with box.store.write() as db:
            if actual == change["stored_sha256"]:
                _complete(db, change, finished_at_start=True)
                settled["headers_finished"].append(rid)
            elif rec is None or actual is None or actual == rec["stored_sha256"]:
                db.execute("DELETE FROM header_changes WHERE recording_id = ?", [rid])
                settled["headers_dropped"].append(rid)
            else:
                log.error("recording %s: its file matches neither the old nor the new hash", rid)
                settled["headers_left"].append(rid)
    return settled


def _recording(box, recording_id: str) -> dict:
    rec = box.store.one("SELECT * FROM recordings WHERE id = ?", (recording_id,))
    if rec is None:
        raise NotFound(f"no recording {recording_id}")
    return rec


def _live_recording(box, recording_id: str) -> dict:
    """The recording's row; NotFound once it was crypto-shredded (its file is gone)."""
    rec = _recording(box, recording_id)
    if is_deleted(rec):
        raise NotFound(f"recording {recording_id} was deleted")
    return rec


def seal_recording(box, recording_id: str, actor: str = "box") -> dict:
    """Drop the review stanza so the box can no longer decrypt it (after central's copy is safe)."""
    with vault.header_change(box.uploads.vault_dir):
        rec = _live_recording(box, recording_id)
        header = vault.read_header(box.uploads.vault_path(recording_id))
        kept = [s for s in header.stanzas if not s["recipient"].startswith("review:")]
        if len(kept) == len(header.stanzas):
            raise vault.VaultError(f"recording {recording_id} is already sealed", status=409)
        return _rewrite(box, rec, kept, "recording.sealed", actor, {"dropped": "review"})


def rewrap_recording(box, recording_id: str, review_key: X25519PrivateKey, actor: str) -> dict:
    """Wrap a recording's data key to the active central key (after a rotation), header only."""
    with vault.header_change(box.uploads.vault_dir):
        rec = _live_recording(box, recording_id)
        path = box.uploads.vault_path(recording_id)
        data_key = data_key_for(path, review_key)
        kid, public = box.keys.central()
        header = vault.read_header(path)
        stanza = {
            "recipient": f"central:{kid}",
            "type": HPKE_NAME,
            "body": base64.b64encode(wrap_key(data_key, public, recording_id.encode())).decode(),
        }
        kept = [s for s in header.stanzas if not s["recipient"].startswith("central:")]
        return _rewrite(
            box, rec, [stanza, *kept], "recording.rewrapped", actor, {"central_key_id": kid}
        )
