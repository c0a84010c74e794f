"""Header rewrites (seal, re-wrap) that the database knows of before the file changes.

A seal or a re-wrap replaces a vault file's key stanzas, so the file's hash changes and the
database and the custody log must follow. It goes in three steps, each durable before the
next:
1. `plan` computes the new header and the file's hash with it, after checking that the file
   still has the hash the database recorded (a file that rotted is refused, not given a
   fresh hash), and `begin` records the change as pending: the new hash, the sealed flag and
   the custody entry to log.
2. The caller rewrites the header (`vault.journal_header`: journaled, fsynced).
3. `complete` gives the row its new hash and logs the custody entry, in the transaction that
   removes the pending change.

A crash between the steps, or a commit that failed, leaves a pending change. `settle` decides
it by the file's own hash. If the file has the new hash, the change is completed, and the
entry says when it was asked for and that it was completed late. If the file has the old
hash, or is gone, the change is dropped (a seal is simply done again). Anything else is left
pending, and `edgebox verify` names it. The box settles everything at start; a seal, a re-wrap
and a shred settle their recording's change first. The caller holds `vault.header_change`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgebox import custody, vault
from edgebox.clock import iso

log = logging.getLogger(__name__)
OUTCOMES = ("completed", "dropped", "left")


def plan(
    path: Path, rec: dict, stanzas: list[dict], event: str, actor: str, details: dict
) -> tuple[bytes, dict]:
    """The new header area for `rec`'s file and the pending change that records it."""
    raw, stored = vault.planned_header(path, stanzas, expect=rec["stored_sha256"])
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
    return raw, change


def begin(store, change: dict) -> None:
    """Record the change as pending (its own transaction, committed before the file changes)."""
    with store.write() as db:
        db["header_changes"].insert(change, replace=True)


def complete(db, change: dict, **extra) -> None:
    """The file carries the change: the row takes its hash, custody logs it with `extra`, and
    it is no longer pending (inside the caller's write transaction)."""
    db.execute(
        "UPDATE recordings SET stored_sha256 = ?, sealed = ? WHERE id = ?",
        [change["stored_sha256"], change["sealed"], change["recording_id"]],
    )
    details = {**json.loads(change["details"]), **extra}
    custody.append(db, change["event"], change["actor"], change["recording_id"], details)
    forget(db, change["recording_id"])


def forget(db, recording_id: str) -> None:
    """No change is pending for the recording any more (inside the caller's transaction)."""
    db.execute("DELETE FROM header_changes WHERE recording_id = ?", [recording_id])


def pending(store, recording_id: str | None = None) -> list[dict]:
    """The pending changes (of one recording), oldest first."""
    if recording_id is None:
        return store.query("SELECT * FROM header_changes ORDER BY created_at")
    return store.query("SELECT * FROM header_changes WHERE recording_id = ?", (recording_id,))


def settle(box, recording_id: str | None = None) -> dict[str, list[str]]:
    """Decide each pending change (of one recording) by its file's hash; returns the
    recordings whose change was completed, dropped and left. The caller holds the vault's
    header lock (`vault.header_change`)."""
    outcomes: dict[str, list[str]] = {outcome: [] for outcome in OUTCOMES}
    for change in pending(box.store, recording_id):
        outcome = _settle_one(box, change)
        outcomes[outcome].append(change["recording_id"])
    return outcomes


def _settle_one(box, change: dict) -> str:
    rid = change["recording_id"]
    row = box.store.one("SELECT stored_sha256 FROM recordings WHERE id = ?", (rid,))
    path = box.uploads.vault_path(rid)
    actual = vault.file_sha256(path) if path.exists() else None
    with box.store.write() as db:
        if actual == change["stored_sha256"]:
            complete(db, change, requested_at=change["created_at"], completed_late=True)
            log.warning("recording %s: %s completed after an interruption", rid, change["event"])
            return "completed"
        if actual is None or actual == row["stored_sha256"]:
            forget(db, rid)
            log.warning("recording %s: %s never reached the file; dropped", rid, change["event"])
            return "dropped"
    log.error("recording %s: its file has neither the recorded nor the pending hash", rid)
    return "left"


def problem(change: dict, actual: str | None, recorded: str) -> str:
    """What `edgebox verify` says of a pending change, given the file's hash and the one the
    database recorded."""
    if actual == change["stored_sha256"]:
        state = "the file has its new hash; the box completes it at its next start"
    elif actual == recorded:
        state = "it never reached the file; the box drops it at its next start"
    else:
        state = "the file has neither the recorded nor the pending hash"
    return (
        f"a {change['event']} asked for at {change['created_at']} by {change['actor']} is "
        f"pending: {state}"
    )
