"""`edgebox verify`: the custody chain, its checkpoints, and every stored vault file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from edgebox import custody, vault
from edgebox.errors import EdgeboxError


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
    from edgebox.retention import deletion_problems, is_deleted

    chain = custody.verify_chain(box.store, box.config.box.box_id, box.keys.identity_public())
    report = Report(
        entries=chain.entries, checkpoints=chain.checkpoints, problems=list(chain.problems)
    )
    evidence, stored = {}, {}
    for row in box.store.query(
        "SELECT subject, event, details FROM custody WHERE event IN "
        "('recording.ingested', 'recording.sealed', 'recording.rewrapped') ORDER BY seq"
    ):
        details = json.loads(row["details"])
        if row["event"] == "recording.ingested":
            evidence[row["subject"]] = details.get("evidence_sha256")
        stored[row["subject"]] = details.get("stored_sha256")
    known = set()
    for rec in box.store.query("SELECT * FROM recordings ORDER BY received_at"):
        report.recordings += 1
        path = box.uploads.vault_path(rec["id"])
        known.add(path.name)
        where = f"recording {rec['id']}"
        for name, logged in (("evidence", evidence), ("stored", stored)):
            if logged.get(rec["id"]) != rec[f"{name}_sha256"]:
                report.problems.append(
                    f"{where}: {name} hash in the database differs from the custody log"
                )
        if is_deleted(rec):  # crypto-shredded by retention: no file, a custody entry
            report.problems.extend(deletion_problems(box, rec))
            continue
        for problem in vault.check_structure(path, rec["stored_sha256"]):
            report.problems.append(f"{where}: {problem}")
        if review_key is not None and path.exists() and not rec["sealed"]:
            try:
                content = vault.Reader(path, data_key_for(path, review_key)).verify()
            except EdgeboxError as exc:
                report.problems.append(f"{where}: {exc.message}")
                continue
            report.decrypted += 1
            if content != rec["evidence_sha256"]:
                report.problems.append(
                    f"{where}: decrypted content hash differs from the evidence hash"
                )
    for orphan in sorted(p.name for p in box.uploads.vault_dir.glob("*.ebv")):
        if orphan not in known:
            report.problems.append(f"vault file {orphan} has no recording in the database")
    return report
