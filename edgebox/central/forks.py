"""A box restored from its replica continues its custody chain from an earlier entry.

Litestream's replica trails the box by about a second, so a box rebuilt after losing its disk
may have sent central entries that its restored database no longer holds. Its next entry is
`database.restored`, linked to the last entry both still share, and numbered like an entry
central already has: a fork. Central accepts that fork, and only that one, when

- the first differing entry is a `database.restored` event,
- it links to the entry central holds just before it (the histories agree up to there), and
- the same message carries a checkpoint over the new history, which the receiver then checks
  against the box's identity key like every checkpoint (a party holding only the box's MQTT
  credentials cannot rewrite history).

Central's replaced entries and checkpoints are moved to `custody_superseded` and
`checkpoints_superseded`, never deleted, and an alarm names the range. Any other fork is
refused as before.
"""

from __future__ import annotations

RESTORED = "database.restored"


def refusal(index, box: str, entries: list[dict], checkpoints: list[dict], at: int) -> str | None:
    """Why a fork at entry `at` is not an accepted restore; None when it is one."""
    entry = next(e for e in entries if int(e["seq"]) == at)
    if entry.get("event") != RESTORED:
        return f"fork at entry {at}: history rewritten"
    before = index.one("SELECT hash FROM custody WHERE box_id = ? AND seq = ?", (box, at - 1))
    shared = before["hash"] if before else None
    if at > 1 and entry.get("prev_hash") != shared:
        return f"fork at entry {at}: the restored chain does not continue central's entry {at - 1}"
    carried = {int(e["seq"]) for e in entries}
    if not any(int(cp.get("seq", 0)) >= at and int(cp["seq"]) in carried for cp in checkpoints):
        return f"fork at entry {at}: a restore must come with a checkpoint signed over it"
    return None


def supersede(db, box: str, at: int, when: str) -> int:
    """Move central's entries and checkpoints from `at` on aside (inside the caller's
    transaction); returns how many entries were moved."""
    moved = db.execute(
        "INSERT INTO custody_superseded (box_id, superseded_at, seq, ts, event, actor, subject, "
        "details, prev_hash, hash) SELECT box_id, ?, seq, ts, event, actor, subject, details, "
        "prev_hash, hash FROM custody WHERE box_id = ? AND seq >= ?",
        [when, box, at],
    ).rowcount
    db.execute("DELETE FROM custody WHERE box_id = ? AND seq >= ?", [box, at])
    db.execute(
        "INSERT INTO checkpoints_superseded (box_id, superseded_at, seq, ts, head_hash, key_id, "
        "signature) SELECT box_id, ?, seq, ts, head_hash, key_id, signature FROM checkpoints "
        "WHERE box_id = ? AND seq >= ?",
        [when, box, at],
    )
    db.execute("DELETE FROM checkpoints WHERE box_id = ? AND seq >= ?", [box, at])
    return moved
