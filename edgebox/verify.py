"""`edgebox verify`: the custody chain, its checkpoints, and every stored vault file."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

from edgebox import custody, header_changes, vault
from edgebox.errors import EdgeboxError


@dataclass
class Report:
    """Everything verification found; `ok` only when nothing is wrong.

    The head (`head_seq`, `head_hash`), the newest signed entry (`signed_seq`) and the
    identity key are printed so they can be compared with central's copy of the chain:
    entries cut from the end, or a whole database put back to an older copy, leave a
    consistent chain that only such a comparison shows.
    """

    entries: int = 0
    checkpoints: int = 0
    recordings: int = 0
    decrypted: int = 0
    head_seq: int = 0
    head_hash: str = ""
    signed_seq: int = 0
    key_id: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the chain, checkpoints and blobs are all intact."""
        return not self.problems

    def to_dict(self) -> dict:
        """Plain data for --json."""
        return {
            "ok": self.ok,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "recordings": self.recordings,
            "decrypted": self.decrypted,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "signed_through": self.signed_seq,
            "identity_key_id": self.key_id,
            "problems": self.problems,
        }


@dataclass
class _Logged:
    """What the custody log says of recordings: the facts their files and rows must match."""

    evidence: dict = field(default_factory=dict)  # id -> hash in its (first) ingest entry
    size: dict = field(default_factory=dict)  # id -> size in that entry
    stored: dict = field(default_factory=dict)  # id -> latest stored hash (seal, re-wrap)
    ingested: dict = field(default_factory=dict)  # id -> seqs of its recording.ingested


def verify_box(box, review_key=None) -> Report:
    """Check chain and checkpoints, then each recording's file (with a review key, decrypt it).

    A database too damaged to read is reported as a problem, not raised."""
    report = Report()
    try:
        _verify_into(report, box, review_key)
    except sqlite3.DatabaseError as exc:
        report.problems.append(f"database: {exc} (the box's database is damaged)")
    return report


def _verify_into(report: Report, box, review_key) -> None:
    from edgebox.retention import deletion_problems

    chain = custody.verify_chain(box.store, box.config.box.box_id, box.keys.identity_public())
    report.entries, report.checkpoints = chain.entries, chain.checkpoints
    report.head_seq, report.head_hash = chain.head_seq, chain.head_hash
    report.signed_seq, report.key_id = chain.signed_seq, chain.key_id
    report.problems.extend(chain.problems)
    logged = _logged(box)
    report.problems.extend(_ingest_problems(box, logged))
    known = set()
    for rec in box.store.query("SELECT * FROM recordings ORDER BY received_at"):
        report.recordings += 1
        path = box.uploads.vault_path(rec["id"])
        known.add(path.name)
        problems = _settled_problems(box, rec, logged)
        if problems is None:  # crypto-shredded by retention: no file, a custody entry
            report.problems.extend(deletion_problems(box, rec))
            continue
        report.problems.extend(f"recording {rec['id']}: {p}" for p in problems)
        if review_key is not None and path.exists() and not rec["sealed"]:
            report.problems.extend(_decrypt_problems(report, rec, path, review_key, problems))
    for orphan in sorted(p.name for p in box.uploads.vault_dir.glob("*.ebv")):
        if orphan not in known:
            report.problems.append(f"vault file {orphan} has no recording in the database")


def _decrypt_problems(report: Report, rec: dict, path, review_key, found: list) -> list[str]:
    """Decrypt one file with the review key: where it fails (the segment), or whether its
    content hash is the evidence hash. A file already found damaged is decrypted too, so
    the report names the damaged segment."""
    from edgebox.recordings import data_key_for

    try:
        content = vault.Reader(path, data_key_for(path, review_key)).verify()
    except EdgeboxError as exc:
        return [f"recording {rec['id']}: {exc.message}"]
    if not found:
        report.decrypted += 1
    if content != rec["evidence_sha256"]:
        return [f"recording {rec['id']}: decrypted content hash differs from the evidence hash"]
    return []


def _ingest_problems(box, logged: _Logged) -> list[str]:
    """Recordings the log says were ingested more than once, or whose row is gone."""
    problems = []
    rows = {r["id"] for r in box.store.query("SELECT id FROM recordings")}
    for subject, seqs in logged.ingested.items():
        if len(seqs) > 1:
            problems.append(
                f"recording {subject}: ingested {len(seqs)} times in the custody log (entries "
                f"{', '.join(map(str, seqs))}); the first entry's hashes stand"
            )
        if subject not in rows:
            problems.append(
                f"recording {subject}: ingested in custody entry {seqs[0]} but missing from "
                "the database"
            )
    return problems


def _logged(box, subject: str | None = None) -> _Logged:
    """What the custody log holds about recordings (about one, with `subject`). Entries whose
    details are not JSON are left out here: the chain check reports them."""
    logged = _Logged()
    one = " AND subject = ?" if subject else ""
    for row in box.store.query(
        "SELECT seq, subject, event, details FROM custody WHERE event IN "  # noqa: S608
        f"('recording.ingested', 'recording.sealed', 'recording.rewrapped'){one} ORDER BY seq",
        (subject,) if subject else (),
    ):
        try:
            details = json.loads(row["details"])
        except ValueError:
            continue
        rec = row["subject"]
        if row["event"] == "recording.ingested":
            logged.ingested.setdefault(rec, []).append(row["seq"])
            if len(logged.ingested[rec]) > 1:
                continue  # a second ingest entry changes nothing: the first one stands
            logged.evidence[rec] = details.get("evidence_sha256")
            logged.size[rec] = details.get("size")
        logged.stored[rec] = details.get("stored_sha256")
    return logged


def _file_problems(box, rec: dict, logged: _Logged) -> list[str] | None:
    """What is wrong with one recording's row and file (None: retention deleted it)."""
    from edgebox.retention import is_deleted

    rid = rec["id"]
    problems = [
        f"{name} hash in the database differs from the custody log"
        for name, facts in (("evidence", logged.evidence), ("stored", logged.stored))
        if facts.get(rid) != rec[f"{name}_sha256"]
    ]
    logged_size = logged.size.get(rid)
    if logged_size is not None and logged_size != rec["size"]:
        problems.append(
            f"size in the database ({rec['size']}) differs from the custody log ({logged_size})"
        )
    if is_deleted(rec):
        return None
    path = box.uploads.vault_path(rid)
    problems += vault.check_structure(
        path, rec["stored_sha256"], recording_id=rid, size=rec["size"]
    )
    for change in header_changes.pending(box.store, rid):  # a seal or re-wrap cut short
        actual = vault.file_sha256(path) if path.exists() else None
        problems.append(header_changes.problem(change, actual, rec["stored_sha256"]))
    return problems


def _settled_problems(box, rec: dict, logged: _Logged):
    """`_file_problems`, and when it finds any, once more under the vault's header lock.

    A seal, re-wrap or shred rewrites the header and then records the new stored hash, both
    while holding `vault.header_change`: a check that falls between the two, or that read
    the log and the rows before them, sees a mismatch that is gone a moment later. Read
    again under that lock, the row, its custody entries and its file are one state, so a
    problem found then is real (and a box that never seals is never waited for)."""
    problems = _file_problems(box, rec, logged)
    if not problems or not box.uploads.vault_dir.is_dir():
        return problems
    with vault.header_change(box.uploads.vault_dir):
        fresh = box.store.one("SELECT * FROM recordings WHERE id = ?", (rec["id"],))
        if fresh is None:
            return problems
        return _file_problems(box, fresh, _logged(box, rec["id"]))
