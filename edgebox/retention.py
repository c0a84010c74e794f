"""Retention: which recordings the rules let go, and crypto-shredding the ones that go.

A recording may leave the box only when all of these hold (docs/retention.md):

- central confirmed a complete, hash-checked copy: `sync_state == 'synced'`, nothing else;
- no legal hold is on it;
- it is older than its rule: `retention.category_days[category]`, else `default_days`,
  never less than `floor_days` (the config refuses such settings; the sweep re-applies
  the floor anyway). Age counts from `started_at` (the camera's start), else `received_at`.

Under disk pressure `edgebox.storage` may also free synced copies older than
`keep_synced_days`, and younger ones when ingest would otherwise refuse new footage; the
first two conditions hold for every deletion, whoever asks.

Deleting is crypto-shredding: the header is rewritten with no key stanzas (so no
key, not even central's, opens what is left), the file is removed, the row is
kept but marked deleted (`sync_state = 'deleted'`), and a `recording.deleted` custody
entry and upstream event record the reason and the hashes, in one transaction.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgebox import custody, header_changes, vault
from edgebox.clock import iso, parse_rfc3339, utcnow
from edgebox.lowlevel.durable import fsync_dir
from edgebox.sync.outbox import queue_meta

log = logging.getLogger(__name__)

DELETED = "deleted"  # recordings.sync_state of a shredded recording (it was 'synced' before)
TOMB_SUFFIX = ".shredded"  # a shredded file waiting for its removal to be recorded
KEEP_HOLD = "legal_hold"
KEEP_UNSYNCED = "not_synced"
KEEP_YOUNG = "younger_than_rule"
REASON_RETENTION = "retention"
REASON_PRESSURE = "storage_pressure"
REASON_ROOM = "room_for_new_footage"
LIVE = "sync_state != 'deleted'"  # SQL: the recording's vault file is still on the box


@dataclass(frozen=True)
class Policy:
    """Days each category is kept, with the floor no rule goes below."""

    floor_days: int = 30
    default_days: int = 31
    category_days: Mapping[str, int] = field(default_factory=dict)
    keep_synced_days: int = 7

    @classmethod
    def from_config(cls, section) -> Policy:
        """The policy of a `RetentionSection`; category names match case-insensitively."""
        return cls(
            floor_days=section.floor_days,
            default_days=section.default_days,
            category_days={k.strip().lower(): v for k, v in section.category_days.items()},
            keep_synced_days=section.keep_synced_days,
        )

    def days_for(self, category: str | None) -> int:
        """Days kept for a category, raised to the floor (a defence behind the config check)."""
        key = (category or "").strip().lower()
        days = self.category_days.get(key, self.default_days) if key else self.default_days
        return max(days, self.floor_days, 1)


@dataclass(frozen=True)
class Verdict:
    """What the rules say about one recording at one moment."""

    recording_id: str
    delete: bool
    reason: str
    age_days: float
    rule_days: int
    due_at: str

    def to_dict(self) -> dict:
        """Plain data for reports."""
        return {
            "recording_id": self.recording_id,
            "delete": self.delete,
            "reason": self.reason,
            "age_days": round(self.age_days, 3),
            "rule_days": self.rule_days,
            "due_at": self.due_at,
        }


def origin(rec: Mapping) -> tuple[dt.datetime, str]:
    """When a recording's age starts: its `started_at`, else `received_at` (and which one)."""
    for column in ("started_at", "received_at"):
        text = rec.get(column)
        if text:
            try:
                return parse_rfc3339(text), column
            except ValueError:
                continue
    raise ValueError(f"recording {rec.get('id')} has no usable started_at or received_at")


def is_deleted(rec: Mapping) -> bool:
    """Whether a recording row was crypto-shredded."""
    return rec["sync_state"] == DELETED


def evaluate(rec: Mapping, policy: Policy, now: dt.datetime) -> Verdict:
    """Apply the rules to one recording row: delete it, or keep it and say why."""
    start, _ = origin(rec)
    rule = policy.days_for(rec.get("category"))
    age = now - start
    due = start + dt.timedelta(days=rule)
    if rec.get("legal_hold"):
        reason = KEEP_HOLD
    elif now < due:
        reason = KEEP_YOUNG
    elif rec.get("sync_state") != "synced":
        reason = KEEP_UNSYNCED
    else:
        reason = REASON_RETENTION
    return Verdict(
        recording_id=rec["id"],
        delete=reason == REASON_RETENTION,
        reason=reason,
        age_days=age.total_seconds() / 86400,
        rule_days=rule,
        due_at=iso(due),
    )


@dataclass
class SweepReport:
    """What a sweep deleted, what it kept and why, and what failed."""

    at: str
    deleted: list[dict] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)
    kept_past_rule: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        """Bytes of vault files removed."""
        return sum(item["stored_size"] for item in self.deleted)

    def to_dict(self) -> dict:
        """Plain data for job results, status and logs."""
        return {
            "at": self.at,
            "deleted": self.deleted,
            "freed_bytes": self.freed_bytes,
            "kept": self.kept,
            "kept_past_rule": self.kept_past_rule,
            "failed": self.failed,
        }


def live_recordings(store) -> list[dict]:
    """Rows of recordings whose vault file is still on the box, oldest received first."""
    return store.query(
        "SELECT id, started_at, received_at, category, legal_hold, sync_state, sealed, "  # noqa: S608
        "evidence_sha256, stored_sha256, size, stored_size "
        f"FROM recordings WHERE {LIVE} ORDER BY received_at, id"
    )


def sweep(box, now: dt.datetime | None = None, actor: str = "box") -> SweepReport:
    """Delete every recording the rules let go; report what was kept and why."""
    now = now or utcnow()
    policy = Policy.from_config(box.config.retention)
    report = SweepReport(at=iso(now))
    finish_interrupted(box)
    for rec in live_recordings(box.store):
        try:
            verdict = evaluate(rec, policy, now)
        except ValueError as exc:
            report.failed.append({"recording_id": rec["id"], "error": str(exc)})
            continue
        if not verdict.delete:
            report.kept[verdict.reason] = report.kept.get(verdict.reason, 0) + 1
            if verdict.reason != KEEP_YOUNG and now >= parse_rfc3339(verdict.due_at):
                report.kept_past_rule.append(verdict.to_dict())
            continue
        try_shred(box, rec["id"], report, REASON_RETENTION, now, actor, policy, _past_rule)
    if report.deleted or report.failed:
        log.info(
            "retention: deleted %d recordings (%d bytes), kept %s, %d failed",
            len(report.deleted),
            report.freed_bytes,
            report.kept,
            len(report.failed),
        )
    return report


def _past_rule(row: Mapping, policy: Policy, now: dt.datetime) -> dict | None:
    verdict = evaluate(row, policy, now)
    if not verdict.delete:
        return None
    return {
        "rule": {
            "category": row.get("category"),
            "days": verdict.rule_days,
            "floor_days": policy.floor_days,
        },
        "age_days": round(verdict.age_days, 3),
    }


def old_synced_copy(row: Mapping, policy: Policy, now: dt.datetime) -> dict | None:
    """A shred check for disk pressure: a synced copy kept past `keep_synced_days` may go."""
    start, _ = origin(row)
    age = now - start
    if age < dt.timedelta(days=policy.keep_synced_days):
        return None
    return {
        "rule": {"keep_synced_days": policy.keep_synced_days},
        "age_days": round(age.total_seconds() / 86400, 3),
    }


def synced_copy_for_room(row: Mapping, policy: Policy, now: dt.datetime) -> dict | None:
    """A shred check for a disk that refuses new footage: a synced copy kept for local review
    gives way, whatever its age (central holds it; the new clip exists only on a camera)."""
    start, _ = origin(row)
    return {
        "rule": {"keep_synced_days": policy.keep_synced_days, "gave_way_to": "new footage"},
        "age_days": round((now - start).total_seconds() / 86400, 3),
    }


def try_shred(box, recording_id, report, reason, now, actor, policy, check) -> dict | None:
    """Shred one recording if `check` (and the iron rule) allow; failures go into `report`."""
    try:
        done = shred(box, recording_id, reason, now, actor, policy, check)
    except (OSError, sqlite3.Error) as exc:
        log.error("could not shred recording %s: %s", recording_id, exc)
        report.failed.append({"recording_id": recording_id, "error": str(exc)})
        return None
    if done is not None:
        report.deleted.append(done)
    return done


Check = Callable[[Mapping, Policy, dt.datetime], "dict | None"]


def shred(
    box,
    recording_id: str,
    reason: str,
    now: dt.datetime,
    actor: str = "box",
    policy: Policy | None = None,
    check: Check = _past_rule,
) -> dict | None:
    """Crypto-shred one recording if it may go now; returns what was deleted, or None.

    Everything happens in one write transaction (BEGIN IMMEDIATE, under the single
    writer), so a hold placed or a state changed by anyone else is seen before the
    keys are destroyed. The iron rule (synced, not held) is enforced here for every
    caller; `check` adds the caller's own condition (past its rule, or past
    `keep_synced_days`).
    """
    policy = policy or Policy.from_config(box.config.retention)
    with vault.header_change(box.uploads.vault_dir):
        header_changes.settle(box, recording_id)  # the row's hash is the file's before it goes
        return _shred_locked(box, recording_id, reason, now, actor, policy, check)


def _shred_locked(box, recording_id, reason, now, actor, policy, check) -> dict | None:
    """`shred`, under the vault's header lock."""
    path = box.uploads.vault_path(recording_id)
    tomb = path.with_name(path.name + TOMB_SUFFIX)
    with box.store.write() as db:
        row = db.execute("SELECT * FROM recordings WHERE id = ?", [recording_id]).fetchone()
        if row is None:
            return None
        row = dict(row)
        if is_deleted(row) or row["legal_hold"] or row["sync_state"] != "synced":
            return None
        why = check(row, policy, now)
        if why is None:
            return None
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "vault file missing; nothing was deleted", path)
        # The file leaves its place first: a crash from here on leaves a tomb, which
        # `finish_interrupted` shreds and records, never a keyless file at the live path.
        os.replace(path, tomb)
        fsync_dir(path.parent)
        shredded = destroy_keys(tomb)
        entry = _record_deletion(box.store, db, row, reason, actor, now, shredded, why)
    _remove(tomb)
    return {
        "recording_id": recording_id,
        "reason": reason,
        "stored_size": row["stored_size"],
        "custody_seq": entry["seq"],
        **why,
    }


def destroy_keys(path: Path) -> str:
    """Rewrite a vault header with no key stanzas; returns the file's new SHA-256.

    Afterwards no key opens the file, central's included. When the header journal
    cannot be written (a disk full to the last block) or the header no longer
    parses, the header area is zeroed in place instead: overwriting blocks the
    file already owns needs no free space on ext4, and the file goes next anyway.
    """
    try:
        return vault.rewrite_header(path, [])
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        path.with_name(path.name + ".header-journal").unlink(missing_ok=True)
        log.warning("disk full: zeroing the header of %s instead of rewriting it", path.name)
    except vault.VaultError as exc:
        log.warning("unreadable header of %s zeroed: %s", path.name, exc.message)
    _zero_header(path)
    return vault.file_sha256(path)


def _zero_header(path: Path) -> None:
    try:
        area = vault.read_header(path).area
    except vault.VaultError:
        area = vault.HEADER_AREA
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\x00" * min(area, os.fstat(fd).st_size), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _record_deletion(store, db, row, reason, actor, now, shredded, why) -> dict:
    # Runs inside the caller's write transaction: the row, the custody entry and the
    # upstream event commit together (`store.write()` below joins it as a savepoint).
    synced = db.execute(
        "SELECT seq, details FROM custody WHERE subject = ? AND event = 'recording.synced' "
        "ORDER BY seq DESC LIMIT 1",
        [row["id"]],
    ).fetchone()
    start, column = origin(row)
    details = {
        "reason": reason,
        **why,
        "age_from": column,
        "origin": iso(start),
        "evaluated_at": iso(now),
        "evidence_sha256": row["evidence_sha256"],
        "stored_sha256": row["stored_sha256"],
        "shredded_sha256": shredded,
        "size": row["size"],
        "stored_size": row["stored_size"],
        "central_confirmed_seq": synced[0] if synced else None,
    }
    db.execute("UPDATE recordings SET sync_state = ? WHERE id = ?", [DELETED, row["id"]])
    entry = custody.append(db, "recording.deleted", actor, row["id"], details)
    queue_meta(
        store,
        {
            "type": "recording.deleted",
            "recording": row["id"],
            "reason": reason,
            "custody_seq": entry["seq"],
            "deleted_at": entry["ts"],
            "evidence_sha256": row["evidence_sha256"],
            "stored_sha256": row["stored_sha256"],
            "shredded_sha256": shredded,
        },
    )
    return entry


def _remove(tomb: Path) -> None:
    try:
        tomb.unlink(missing_ok=True)
        fsync_dir(tomb.parent)
    except OSError as exc:  # the deletion is recorded; the leftover goes next sweep
        log.warning("could not remove %s: %s", tomb, exc)


def finish_interrupted(box) -> list[str]:
    """Complete shreds cut short by a crash or a full disk; returns the recordings concerned.

    A `<id>.ebv.shredded` file was taken from its place to be shredded. If its deletion was
    recorded, its keys are gone and only the file is left to remove. If not, and a legal hold
    was placed since while the file still has its keys, the hold wins: the file goes back.
    Otherwise its keys are destroyed (again, if the crash came after) and the deletion is
    recorded now.
    """
    done = []
    for tomb in sorted(box.uploads.vault_dir.glob("*" + TOMB_SUFFIX)):
        recording_id = tomb.name.split(".", 1)[0]
        row = box.store.one("SELECT * FROM recordings WHERE id = ?", (recording_id,))
        if row is not None and not is_deleted(row) and row["legal_hold"] and _has_keys(tomb):
            os.replace(tomb, box.uploads.vault_path(recording_id))
            fsync_dir(tomb.parent)
            log.warning("recording %s: put on hold during a cut-short shred; kept", recording_id)
            continue
        try:
            if row is not None and not is_deleted(row):
                shredded = destroy_keys(tomb)
                with box.store.write() as db:
                    _record_deletion(
                        box.store,
                        db,
                        row,
                        "interrupted_shred",
                        "box",
                        utcnow(),
                        shredded,
                        {"note": "shred interrupted; keys destroyed and removal completed now"},
                    )
        except (OSError, sqlite3.Error) as exc:  # still no room: try again next sweep
            log.error("could not record the shred of %s: %s", recording_id, exc)
            continue
        _remove(tomb)
        done.append(recording_id)
    return done


def _has_keys(path: Path) -> bool:
    """Whether a vault file's header still holds any key stanza."""
    try:
        return bool(vault.read_header(path).stanzas)
    except vault.VaultError:
        return False


def deletion_problems(box, rec: Mapping) -> list[str]:
    """For `edgebox verify`: a row marked deleted needs its custody entry and no file left."""
    problems = []
    entry = box.store.one(
        "SELECT seq FROM custody WHERE subject = ? AND event = 'recording.deleted'", (rec["id"],)
    )
    if entry is None:
        problems.append(
            f"recording {rec['id']}: marked deleted but the custody log has no recording.deleted"
        )
    if box.uploads.vault_path(rec["id"]).exists():
        problems.append(f"recording {rec['id']}: marked deleted but its vault file is still there")
    return problems
