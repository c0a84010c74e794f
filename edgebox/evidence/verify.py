"""Checking an evidence package with no key and neither box nor central (`verify-package`)."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgebox import custody, vault
from edgebox.keys import key_id
from edgebox.sync.protocol import check_signature

FORMAT = "edgebox-evidence-package/1"
MANIFEST = "manifest.json"
CUSTODY = "custody.json"
SUMS = "SHA256SUMS"
README = "VERIFY.md"
ENTRY_FIELDS = ("seq", "ts", "event", "actor", "subject", "details", "prev_hash", "hash")
CHECKPOINT_FIELDS = ("seq", "ts", "head_hash", "key_id", "signature")
_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
_BLOCK = 1 << 20


@dataclass
class Check:
    """One verification step of a package: its name, outcome and a short explanation."""

    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict:
        """Plain data for --json."""
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class PackageReport:
    """Every check `verify_package` ran; `ok` only when all of them passed."""

    folder: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, problems: list[str], detail: str) -> None:
        """Record a check that passed (no problems) or failed (the problems, joined)."""
        ok = not problems
        self.checks.append(Check(name, ok, detail if ok else "; ".join(problems)))

    def to_dict(self) -> dict:
        """Plain data for --json."""
        return {"folder": self.folder, "ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


def verify_package(folder: Path) -> PackageReport:
    """Check an evidence package without any key; every check is reported, failed or not."""
    folder = Path(folder)
    report = PackageReport(str(folder))
    report.add(SUMS, *_check_sums(folder))
    package, problem = load_json(folder / MANIFEST)
    trail, trail_problem = load_json(folder / CUSTODY)
    signed = package.get("manifest") if isinstance(package.get("manifest"), dict) else {}
    recording = signed.get("recording") if isinstance(signed.get("recording"), dict) else {}
    recording_id = recording.get("id")
    box_id = signed.get("box_id")

    # the signed manifest and the box's identity key
    public = identity_key(package.get("identity"))
    problems = [problem] if problem else []
    if not problem:
        if public is None:
            problems.append(f"{MANIFEST}: identity is not an Ed25519 public key")
        elif not signed or not check_signature(signed, str(package.get("signature")), public):
            problems.append(f"{MANIFEST}: the box's signature does not match the manifest")
        if (package.get("box_id"), package.get("recording_id")) != (box_id, recording_id):
            problems.append(f"{MANIFEST}: box or recording id differs from the signed manifest")
    kid = key_id(public) if public else "?"
    report.add("manifest signature", problems, f"signed by box {box_id} (identity key id {kid})")

    # the clip against the signed evidence hash
    evidence = recording.get("evidence_sha256")
    problems = [problem] if problem else []
    clip = _member(folder, package.get("clip"), problems)
    actual = vault.file_sha256(clip) if clip else None
    if clip and actual != evidence:
        problems.append(
            f"{clip.name}: SHA-256 {actual} differs from the signed evidence hash {evidence}"
        )
    report.add("evidence hash", problems, f"{package.get('clip')} has SHA-256 {evidence}")

    # the encrypted copy against the signed stored hash (no key needed)
    problems = [problem] if problem else []
    copy = _member(folder, package.get("vault_file"), problems)
    if copy:
        problems += vault.check_structure(copy, signed.get("stored_sha256") or "0" * 64)
        if copy.stat().st_size != signed.get("stored_size"):
            problems.append(f"{copy.name}: size differs from the signed stored size")
    report.add(
        "vault file", problems, f"{package.get('vault_file')} matches the signed stored hash"
    )

    # the custody segment
    chain, mine, checkpoints = _trail(trail, trail_problem)
    report.add("custody chain", *_check_chain(chain, trail_problem))
    problems, detail = _check_mine(chain, mine, recording_id, trail_problem)
    if not trail_problem and (trail.get("box_id"), trail.get("recording_id")) != (
        box_id,
        recording_id,
    ):
        problems.append(f"{CUSTODY} names another box or recording than the signed manifest")
    report.add("recording entries", problems, detail)
    report.add("checkpoints", *_check_checkpoints(chain, mine, checkpoints, box_id, public))
    report.add("ingest entry", *_check_ingest(chain, recording_id, signed, evidence))
    return report


def _check_sums(folder: Path) -> tuple[list[str], str]:
    path = folder / SUMS
    if not path.is_file():
        return [f"{SUMS} is missing"], ""
    problems, listed = [], set()
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        match = _SUM_LINE.match(line)
        if not match:
            problems.append(f"{SUMS} line {number} is malformed")
            continue
        digest, name = match.group(1).lower(), match.group(2)
        listed.add(name)
        member = _member(folder, name, problems)
        if member and vault.file_sha256(member) != digest:
            problems.append(f"{name}: SHA-256 differs from {SUMS}")
    for extra in sorted(p.name for p in folder.iterdir() if p.name not in listed | {SUMS}):
        problems.append(f"{extra}: not listed in {SUMS}")
    if not listed:
        problems.append(f"{SUMS} lists no files")
    return problems, f"{len(listed)} files match"


def _trail(trail: dict, problem: str | None) -> tuple[list, list, list]:
    if problem:
        return [], [], []
    parts = [trail.get(k) for k in ("chain", "recording_entries", "checkpoints")]
    return tuple(
        p if isinstance(p, list) and all(isinstance(i, dict) for i in p) else [] for p in parts
    )


def _check_chain(chain: list[dict], problem: str | None) -> tuple[list[str], str]:
    if problem:
        return [problem], ""
    if not chain:
        return [f"{CUSTODY} holds no chain entries"], ""
    problems = []
    previous = None
    for entry in chain:
        seq = entry.get("seq")
        try:
            if entry.get("hash") != custody.entry_hash(entry):
                problems.append(f"custody entry {seq} ({entry.get('event')}): content altered")
        except (KeyError, TypeError, ValueError):
            problems.append(f"custody entry {seq}: malformed")
            previous = entry
            continue
        if previous is not None:
            if not isinstance(seq, int) or seq != previous.get("seq", 0) + 1:
                problems.append(f"custody entry {seq}: does not follow entry {previous.get('seq')}")
            if entry.get("prev_hash") != previous.get("hash"):
                problems.append(f"custody entry {seq}: link to entry {previous.get('seq')} broken")
        previous = entry
    first, last = chain[0].get("seq"), chain[-1].get("seq")
    return problems, f"entries {first}..{last}: every hash matches and every link holds"


def _check_mine(
    chain: list[dict], mine: list[dict], recording_id, problem: str | None
) -> tuple[list[str], str]:
    if problem:
        return [problem], ""
    if not mine:
        return [f"{CUSTODY} lists no entries for recording {recording_id}"], ""
    problems = []
    by_seq = {e.get("seq"): e for e in chain}
    for entry in mine:
        seq = entry.get("seq")
        if entry.get("subject") != recording_id:
            problems.append(f"custody entry {seq} concerns {entry.get('subject')!r}")
        if by_seq.get(seq) != entry:
            problems.append(f"custody entry {seq}: differs from the chain entry at its place")
    listed = {e.get("seq") for e in mine}
    left_out = sorted(
        e.get("seq")
        for e in chain
        if e.get("subject") == recording_id and e.get("seq") not in listed
    )
    if left_out:
        problems.append(f"custody entries {left_out} of the recording are not listed")
    events = ", ".join(str(e.get("event")) for e in mine)
    return problems, f"{len(mine)} entries ({events})"


def _check_checkpoints(
    chain: list[dict], mine: list[dict], checkpoints: list[dict], box_id, public
) -> tuple[list[str], str]:
    if not checkpoints:
        return [f"{CUSTODY} holds no signed checkpoint"], ""
    if public is None:
        return ["no valid identity key to check the checkpoints with"], ""
    hashes = {e.get("seq"): e.get("hash") for e in chain}
    problems = []
    for cp in checkpoints:
        seq = cp.get("seq")
        try:
            message = custody.checkpoint_message(box_id, seq, cp["head_hash"], cp["ts"])
            signature = base64.b64decode(cp["signature"], validate=True)
            public.verify(signature, message)
        except Exception:  # noqa: BLE001 - any failure means the checkpoint does not verify
            problems.append(f"checkpoint at entry {seq}: signature invalid")
            continue
        if hashes.get(seq) != cp.get("head_hash"):
            problems.append(
                f"checkpoint at entry {seq}: chain head differs from the signed one "
                "(history rewritten)"
            )
    end = chain[-1].get("seq") if chain else None
    last_own = max((e.get("seq") or 0 for e in mine), default=0)
    if end not in {cp.get("seq") for cp in checkpoints}:
        problems.append(f"no checkpoint signs entry {end}, the end of the segment")
    elif isinstance(end, int) and end < last_own:
        problems.append(f"the segment ends at entry {end}, before the recording's entry {last_own}")
    cp = checkpoints[-1]
    return problems, f"{len(checkpoints)} valid; entry {cp.get('seq')} signed at {cp.get('ts')}"


def _check_ingest(chain: list[dict], recording_id, signed: dict, evidence) -> tuple[list[str], str]:
    ingested = [
        e
        for e in chain
        if e.get("event") == "recording.ingested" and e.get("subject") == recording_id
    ]
    if len(ingested) != 1:
        return [f"{len(ingested)} recording.ingested entries for {recording_id} in {CUSTODY}"], ""
    entry = ingested[0]
    problems = []
    try:
        details = json.loads(entry.get("details") or "")
    except (TypeError, ValueError):
        details = {}
    if not isinstance(details, dict) or details.get("evidence_sha256") != evidence:
        problems.append(
            f"custody entry {entry.get('seq')} (recording.ingested) names evidence hash "
            f"{details.get('evidence_sha256') if isinstance(details, dict) else None}, "
            f"the signed manifest {evidence}"
        )
    pointer = signed.get("custody") if isinstance(signed.get("custody"), dict) else {}
    if (pointer.get("seq"), pointer.get("hash")) != (entry.get("seq"), entry.get("hash")):
        problems.append("the signed manifest points at another recording.ingested entry")
    return problems, f"entry {entry.get('seq')} names evidence hash {evidence}"


# -- small helpers -----------------------------------------------------------------------


def _member(folder: Path, name, problems: list[str]) -> Path | None:
    """A plain file directly inside the package, or None (with a problem noted)."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        problems.append(f"{name!r} is not a plain file name")
        return None
    path = folder / name
    if path.is_symlink() or not path.is_file():
        problems.append(f"{name}: missing from the package")
        return None
    return path


def load_json(path: Path) -> tuple[dict, str | None]:
    """A package file's JSON object, or ({}, the problem)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, f"{path.name} is missing"
    except (OSError, ValueError) as exc:
        return {}, f"{path.name} is not readable JSON ({exc})"
    if not isinstance(value, dict):
        return {}, f"{path.name} is not a JSON object"
    return value, None


def identity_key(b64) -> Ed25519PublicKey | None:
    """The Ed25519 key in base64, or None when it is not one."""
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))
    except (TypeError, ValueError):
        return None
