"""`edgebox verify`: the custody chain, its checkpoints, and every stored vault file."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from edgebox import custody, vault
from edgebox.errors import EdgeboxError

SETTLE_SECONDS = 3  # in all, for re-reading recordings that change under a running box


@dataclass
class Report:
    """Everything verification found; `ok` only when nothing is wrong."""

    entries: int = 0
    checkpoints: int = 0
    recordings: int = 0
    decrypted: int = 0
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
            "problems": self.problems,
        }


def verify_box(box, review_key=None) -> Report:
    """Check chain and checkpoints, then each recording's file (with a review key, decrypt it)."""
    from edgebox.recordings import data_key_for
    from edgebox.retention import deletion_problems

    chain = custody.verify_chain(box.store, box.config.box.box_id, box.keys.identity_public())
    report = Report(
        entries=chain.entries, checkpoints=chain.checkpoints, problems=list(chain.problems)
    )
    evidence, stored = _logged_hashes(box)
    settle_until = time.monotonic() + SETTLE_SECONDS
    known = set()
    for rec in box.store.query("SELECT * FROM recordings ORDER BY received_at"):
        report.recordings += 1
        path = box.uploads.vault_path(rec["id"])
        known.add(path.name)
        problems = _settled_problems(box, rec, evidence, stored, settle_until)
        if problems is None:  # crypto-shredded by retention: no file, a custody entry
            report.problems.extend(deletion_problems(box, rec))
            continue
        report.problems.extend(f"recording {rec['id']}: {p}" for p in problems)
        if review_key is not None and path.exists() and not rec["sealed"] and not problems:
            try:
                content = vault.Reader(path, data_key_for(path, review_key)).verify()
            except EdgeboxError as exc:
                report.problems.append(f"recording {rec['id']}: {exc.message}")
                continue
            report.decrypted += 1
            if content != rec["evidence_sha256"]:
                report.problems.append(
                    f"recording {rec['id']}: decrypted content hash differs from the evidence hash"
                )
    for orphan in sorted(p.name for p in box.uploads.vault_dir.glob("*.ebv")):
        if orphan not in known:
            report.problems.append(f"vault file {orphan} has no recording in the database")
    return report


def _logged_hashes(box, subject: str | None = None) -> tuple[dict, dict]:
    """({recording: evidence hash}, {recording: latest stored hash}) from the custody log (of
    one recording with `subject`)."""
    evidence, stored = {}, {}
    one = " AND subject = ?" if subject else ""
    for row in box.store.query(
        "SELECT subject, event, details FROM custody WHERE event IN "  # noqa: S608 - fixed text
        f"('recording.ingested', 'recording.sealed', 'recording.rewrapped'){one} ORDER BY seq",
        (subject,) if subject else (),
    ):
        details = json.loads(row["details"])
        if row["event"] == "recording.ingested":
            evidence[row["subject"]] = details.get("evidence_sha256")
        stored[row["subject"]] = details.get("stored_sha256")
    return evidence, stored


def _file_problems(box, rec: dict, evidence: dict, stored: dict) -> list[str] | None:
    """What is wrong with one recording's hashes and file (None: retention deleted it)."""
    from edgebox.retention import is_deleted

    problems = [
        f"{name} hash in the database differs from the custody log"
        for name, logged in (("evidence", evidence), ("stored", stored))
        if logged.get(rec["id"]) != rec[f"{name}_sha256"]
    ]
    if is_deleted(rec):
        return None
    return problems + vault.check_structure(box.uploads.vault_path(rec["id"]), rec["stored_sha256"])


def _settled_problems(
    box, rec: dict, evidence: dict, stored: dict, until: float, tries: int = 4
) -> list[str] | None:
    """`_file_problems`, read again while the recording is changing under a running box.

    A seal or re-wrap rewrites the header, then records the new stored hash: a check that
    falls between the two, or that read the log and the rows before it, sees a mismatch
    that is gone a moment later. A problem stands when the row and its custody entries
    did not move for a second (or the row is gone). The waiting stops at `until` for the
    whole run, so a box with many damaged files is not verified a second per file slower.
    """
    problems = _file_problems(box, rec, evidence, stored)
    for _ in range(tries):
        if not problems or time.monotonic() >= until:
            break
        time.sleep(0.25)
        fresh = box.store.one("SELECT * FROM recordings WHERE id = ?", (rec["id"],))
        if fresh is None:
            break
        logged = _logged_hashes(box, rec["id"])
        if (fresh, logged[1].get(rec["id"])) != (rec, stored.get(rec["id"])):
            rec, evidence, stored = fresh, *logged
            problems = _file_problems(box, rec, evidence, stored)
    return problems
