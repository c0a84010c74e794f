"""Seals the restored database missed: a recording sealed after the replica's last position.

The box seals a recording (drops the review key from its header) only after central confirmed
a complete, hash-checked copy. If that happened after the last transaction Litestream shipped,
the restored database still says "unsealed, stored hash X" while the file on disk has the
sealed header and another hash; the uplink would then call the file damaged. `edgebox restore`
finds such files by their header (no review stanza, though the database says unsealed, and an
otherwise sound structure), and records them as sealed, with the file's hash, in the restored
chain. Files that fail the structure check are left for `edgebox verify` to name. A file that
has the hash of a change the replica holds as pending (`header_changes`) is left to the box's
start, which completes it; a pending change the file has gone past is forgotten.
"""

from __future__ import annotations

from pathlib import Path

from edgebox import custody, header_changes, vault
from edgebox.db import Store


def _sealed_on_disk(path: Path) -> bool:
    try:
        header = vault.read_header(path)
    except vault.VaultError:
        return False
    return not any(s["recipient"].startswith("review:") for s in header.stanzas)


def find(store: Store, vault_dir: Path) -> list[dict]:
    """Recordings the database holds unsealed whose vault file carries a sealed header, but
    not those whose file has the hash of a change the replica holds as pending: the box's
    start completes those (`header_changes.settle`)."""
    pending = {c["recording_id"]: c["stored_sha256"] for c in header_changes.pending(store)}
    found = []
    for rec in store.query(
        "SELECT id, vault_file, stored_sha256 FROM recordings WHERE sealed = 0 "
        "AND sync_state != 'deleted' ORDER BY id"
    ):
        path = vault_dir / rec["vault_file"]
        journal = path.with_name(path.name + ".header-journal")
        if not path.exists() or journal.exists() or not _sealed_on_disk(path):
            continue
        if vault.check_structure(path):
            continue
        stored = vault.file_sha256(path)
        if stored not in (rec["stored_sha256"], pending.get(rec["id"])):
            found.append({"id": rec["id"], "previous": rec["stored_sha256"], "stored": stored})
    return found


def record(store: Store, found: list[dict]) -> None:
    """Mark each found recording sealed and synced (a seal follows central's confirmation), with
    a `recording.sealed` custody entry that says it was found after a restore."""
    with store.write() as db:
        for rec in found:
            db.execute(
                "UPDATE recordings SET sealed = 1, sync_state = 'synced', stored_sha256 = ? "
                "WHERE id = ?",
                [rec["stored"], rec["id"]],
            )
            header_changes.forget(db, rec["id"])  # a change pending in the replica, overtaken
            custody.append(
                db,
                "recording.sealed",
                "operator",
                rec["id"],
                {
                    "dropped": "review",
                    "found_after_restore": True,
                    "stored_sha256": rec["stored"],
                    "previous_stored_sha256": rec["previous"],
                },
            )
