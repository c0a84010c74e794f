"""Reading recordings back (data keys) and rewriting their headers (seal, re-wrap)."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgebox import header_changes, vault
from edgebox.errors import NotFound
from edgebox.keys import HPKE_NAME, key_id, unwrap_key, wrap_key
from edgebox.retention import is_deleted


def data_key_for(path: Path, private: X25519PrivateKey, role: str = "review") -> bytes:
    """Unwrap a vault file's data key with the review key (or central's, role='central')."""
    header = vault.read_header(path)
    wrapped = header.stanza(f"{role}:{key_id(private.public_key())}")
    data_key = unwrap_key(wrapped, private, header.core["recording_id"].encode())
    header.check_mac(data_key)
    return data_key


def _rewrite(box, rec: dict, stanzas: list[dict], event: str, actor: str, details: dict) -> dict:
    """Rewrite a recording's header so that no crash leaves the file and the database apart
    (`edgebox.header_changes`: the change is pending in the database before the file changes).
    The caller holds `vault.header_change`."""
    path = box.uploads.vault_path(rec["id"])
    raw, change = header_changes.plan(path, rec, stanzas, event, actor, details)
    header_changes.begin(box.store, change)
    vault.journal_header(path, raw)
    with box.store.write() as db:
        header_changes.complete(db, change)
    return box.store.one("SELECT * FROM recordings WHERE id = ?", (rec["id"],))


def _recording(box, recording_id: str) -> dict:
    rec = box.store.one("SELECT * FROM recordings WHERE id = ?", (recording_id,))
    if rec is None:
        raise NotFound(f"no recording {recording_id}")
    return rec


def _live_recording(box, recording_id: str) -> dict:
    """The recording's row, after any header change left pending for it was settled (the
    caller holds the header lock); NotFound once it was crypto-shredded (its file is gone)."""
    header_changes.settle(box, recording_id)
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
