"""Evidence packages: central decrypts one recording and writes what a court expert can check.

A package is one folder:

- the decrypted clip, whose SHA-256 is the evidence hash the box signed;
- `<recording>.ebv`, the still-encrypted vault file as central received it;
- `manifest.json`: the box-signed manifest, its signature and the box's identity key;
- `custody.json`: the recording's custody entries, the contiguous chain segment from
  its first entry to the nearest signed checkpoint at or after its last one, and the
  checkpoints in that segment;
- `SHA256SUMS` (`sha256sum -c` format) over every other file, and `VERIFY.md`.

`export_package` builds the package in a hidden staging folder beside the output,
checks it with `verify_package`, and only then renames it into place, so a failure
leaves nothing behind. `verify_package` needs no key and no access to central.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgebox import custody, vault
from edgebox.central.files import recording_path
from edgebox.central.index import Index
from edgebox.clock import iso
from edgebox.durable import fsync_dir
from edgebox.errors import CustodyError, EdgeboxError, KeyAccessError, NotFound, VaultError
from edgebox.keys import key_id
from edgebox.recordings import data_key_for
from edgebox.sync.protocol import check_signature

FORMAT = "edgebox-evidence-package/1"
MANIFEST = "manifest.json"
CUSTODY = "custody.json"
SUMS = "SHA256SUMS"
README = "VERIFY.md"
ENTRY_FIELDS = ("seq", "ts", "event", "actor", "subject", "details", "prev_hash", "hash")
CHECKPOINT_FIELDS = ("seq", "ts", "head_hash", "key_id", "signature")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
_BLOCK = 1 << 20


class PackageError(EdgeboxError):
    """An evidence package cannot be written (bad output folder, missing store)."""

    status = 400


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


# -- export ------------------------------------------------------------------------------


def clip_name(recording: dict, recording_id: str) -> str:
    """The clip's file name: the camera's filename when it is a plain safe name, else ID.mp4."""
    name = recording.get("filename") if isinstance(recording, dict) else None
    reserved = {MANIFEST, CUSTODY, SUMS, README, f"{recording_id}.ebv"}
    if (
        isinstance(name, str)
        and _SAFE_NAME.match(name)
        and name not in reserved
        and not name.lower().endswith((".ebv", ".part", ".tmp"))
    ):
        return name
    return f"{recording_id}.mp4"


def export_package(
    store_dir: Path,
    recording_id: str,
    private_key: X25519PrivateKey,
    out: Path,
    box_id: str | None = None,
) -> dict:
    """Write the evidence package of one recording to `out` (all or nothing); returns a summary."""
    store_dir, out = Path(store_dir), Path(out)
    if not (store_dir / "central.db").is_file():
        raise NotFound(f"no central store at {store_dir} (central.db is missing)")
    _check_out(out)
    index = Index(store_dir)
    try:
        row = _recording_row(index, recording_id, box_id)
        box_id = row["box_id"]
        box = index.one("SELECT identity FROM boxes WHERE box_id = ?", (box_id,))
        if box is None:
            raise NotFound(f"central has no identity key for box {box_id}")
        identity, manifest = box["identity"], json.loads(row["manifest"])
        public = _public(identity)
        if public is None or not check_signature(manifest, row["signature"], public):
            raise VaultError(
                f"recording {recording_id}: the manifest signature does not verify with box "
                f"{box_id}'s pinned identity key"
            )
        evidence = row["evidence_sha256"]
        if manifest.get("recording", {}).get("evidence_sha256") != evidence:
            raise VaultError(f"recording {recording_id}: index and signed manifest disagree")
        source = recording_path(store_dir, box_id, recording_id)
        beside, _ = _load(source.with_suffix(".manifest.json"))
        if beside and beside.get("manifest") != manifest:
            raise VaultError(f"recording {recording_id}: the manifest file and index disagree")
        problems = vault.check_structure(source, row["stored_sha256"])
        if problems:
            raise VaultError(f"recording {recording_id} at central is damaged: {problems[0]}")
        central_kid = key_id(private_key.public_key())
        data_key = _data_key(source, private_key, recording_id, central_kid)
        trail = _custody_segment(index, box_id, recording_id)
    finally:
        index.close()

    clip = clip_name(manifest.get("recording", {}), recording_id)
    vault_name = f"{recording_id}.ebv"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    except OSError as exc:
        raise PackageError(f"cannot create the package beside {out}: {exc.strerror}") from None
    try:
        _write_clip(source, data_key, staging, clip, evidence, recording_id)
        shutil.copyfile(source, staging / vault_name)
        _fsync(staging / vault_name)
        if vault.file_sha256(staging / vault_name) != row["stored_sha256"]:
            raise VaultError(f"recording {recording_id}: the copy of the vault file differs")
        package = {
            "format": FORMAT,
            "box_id": box_id,
            "recording_id": recording_id,
            "clip": clip,
            "vault_file": vault_name,
            "manifest": manifest,
            "signature": row["signature"],
            "identity": identity,
            "identity_key_id": key_id(public),
            "tid": row["tid"],
            "received_at": row["received_at"],
            "exported_at": iso(),
            "exported_with_central_key": central_kid,
        }
        _write(staging / MANIFEST, _json(package))
        custody_doc = {"box_id": box_id, "recording_id": recording_id, **trail}
        _write(staging / CUSTODY, _json(custody_doc))
        _write(staging / README, _verify_text(package, trail).encode())
        _write(staging / SUMS, _sums(staging))
        report = verify_package(staging)
        if not report.ok:
            failed = next(c for c in report.checks if not c.ok)
            raise CustodyError(f"the package does not verify ({failed.name}: {failed.detail})")
        os.rename(staging, out)  # replaces `out` only when it is an empty folder
        fsync_dir(out.parent)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise PackageError(f"cannot write the package to {out}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "package": str(out),
        "box_id": box_id,
        "recording_id": recording_id,
        "clip": clip,
        "evidence_sha256": evidence,
        "stored_sha256": row["stored_sha256"],
        "identity_key_id": package["identity_key_id"],
        "custody": {
            "first_seq": trail["chain"][0]["seq"],
            "last_seq": trail["chain"][-1]["seq"],
            "recording_entries": len(trail["recording_entries"]),
            "checkpoint_seq": trail["checkpoints"][-1]["seq"],
        },
        "files": sorted(p.name for p in out.iterdir()),
    }


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PackageError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise PackageError(f"{out} is not empty; choose a new folder for the package")


def _recording_row(index: Index, recording_id: str, box_id: str | None) -> dict:
    if box_id:
        rows = index.query(
            "SELECT * FROM recordings WHERE recording_id = ? AND box_id = ?", (recording_id, box_id)
        )
    else:
        rows = index.query("SELECT * FROM recordings WHERE recording_id = ?", (recording_id,))
    if not rows:
        where = f" from box {box_id}" if box_id else ""
        raise NotFound(f"central holds no complete recording {recording_id}{where}")
    if len(rows) > 1:
        boxes = ", ".join(sorted(r["box_id"] for r in rows))
        raise PackageError(
            f"recording {recording_id} is held for several boxes ({boxes}): pass --box"
        )
    return rows[0]


def _custody_segment(index: Index, box_id: str, recording_id: str) -> dict:
    """The recording's entries, the chain from its first entry to a covering checkpoint, and
    the checkpoints inside that segment."""
    mine = index.query(
        "SELECT * FROM custody WHERE box_id = ? AND subject = ? ORDER BY seq",
        (box_id, recording_id),
    )
    if not mine:
        raise CustodyError(f"central holds no custody entries for recording {recording_id} yet")
    first, last = mine[0]["seq"], mine[-1]["seq"]
    cover = index.one(
        "SELECT * FROM checkpoints WHERE box_id = ? AND seq >= ? ORDER BY seq LIMIT 1",
        (box_id, last),
    )
    if cover is None:
        head = index.one("SELECT custody_seq FROM boxes WHERE box_id = ?", (box_id,))
        raise CustodyError(
            f"no signed checkpoint from box {box_id} covers custody entry {last} of recording "
            f"{recording_id} yet (central holds the chain up to entry "
            f"{head['custody_seq'] if head else 0}); export again after the box's next checkpoint"
        )
    chain = index.query(
        "SELECT * FROM custody WHERE box_id = ? AND seq BETWEEN ? AND ? ORDER BY seq",
        (box_id, first, cover["seq"]),
    )
    if [e["seq"] for e in chain] != list(range(first, cover["seq"] + 1)):
        raise CustodyError(f"central's custody chain of box {box_id} has gaps in {first}..{last}")
    checkpoints = index.query(
        "SELECT * FROM checkpoints WHERE box_id = ? AND seq BETWEEN ? AND ? ORDER BY seq",
        (box_id, first, cover["seq"]),
    )
    return {
        "recording_entries": [_pick(e, ENTRY_FIELDS) for e in mine],
        "chain": [_pick(e, ENTRY_FIELDS) for e in chain],
        "checkpoints": [_pick(c, CHECKPOINT_FIELDS) for c in checkpoints],
    }


def _data_key(source: Path, private_key: X25519PrivateKey, recording_id: str, kid: str) -> bytes:
    try:
        return data_key_for(source, private_key, role="central")
    except EdgeboxError as exc:
        raise KeyAccessError(
            f"central key {kid} cannot open recording {recording_id} ({exc.message})"
        ) from None


def _write_clip(
    source: Path, data_key: bytes, staging: Path, clip: str, evidence: str, recording_id: str
) -> None:
    """Decrypt segment by segment into a temp file, check the evidence hash, then rename."""
    reader = vault.Reader(source, data_key)
    part = staging / f".{clip}.part"
    digest = hashlib.sha256()
    with open(part, "wb") as handle:
        for index in range(reader.header.segments):
            plain = reader.segment(index)
            digest.update(plain)
            handle.write(plain)
        handle.flush()
        os.fsync(handle.fileno())
    if digest.hexdigest() != evidence:
        part.unlink()
        raise VaultError(
            f"recording {recording_id}: decrypted content hash {digest.hexdigest()} differs "
            f"from the evidence hash {evidence}"
        )
    os.replace(part, staging / clip)


def _sums(folder: Path) -> bytes:
    lines = [
        f"{vault.file_sha256(p)}  {p.name}\n"
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != SUMS
    ]
    return "".join(lines).encode()


def _verify_text(package: dict, trail: dict) -> str:
    recording = package["manifest"].get("recording", {})
    first, last = trail["chain"][0]["seq"], trail["chain"][-1]["seq"]
    return f"""# Evidence package: recording {package["recording_id"]}

Box `{package["box_id"]}`, identity key id `{package["identity_key_id"]}`
(the first 16 hex digits of SHA-256 over the raw Ed25519 public key in `{MANIFEST}`).
Compare this key id with the one on record for the box before trusting any signature.

| file | what it is |
| --- | --- |
| `{package["clip"]}` | the recording, decrypted; SHA-256 `{recording.get("evidence_sha256")}` |
| `{package["vault_file"]}` | the encrypted vault file as central received it |
| `{MANIFEST}` | the manifest the box signed, its signature and the box's identity key |
| `{CUSTODY}` | custody entries {first}..{last} of the box's chain and the signed checkpoints |
| `{SUMS}` | SHA-256 of every other file |

## 1. The files are the ones exported

    cd <this folder> && sha256sum -c {SUMS}

## 2. The evidence and its custody

    edgebox central verify-package <this folder>

It needs no key and prints OK or FAIL for each check; it exits 0 only when all pass:

- `{SUMS}`: every file matches its hash and no file is unlisted;
- manifest signature: the box's Ed25519 signature over the canonical JSON of the manifest;
- evidence hash: the clip's SHA-256 equals the signed evidence hash;
- vault file: its header and size are sound and its SHA-256 equals the signed stored hash;
- custody chain: every entry's hash matches its content and links to the entry before it;
- recording entries: each copy equals the chain entry at its place, none is left out;
- checkpoints: each signature verifies with the box's key over the chain head it names,
  and one signs the last entry of the segment;
- ingest entry: the recording's `recording.ingested` entry names the same evidence hash
  and is the entry the signed manifest points at.

Canonical JSON: keys sorted, separators `,` and `:` without spaces, UTF-8. An entry's hash
is SHA-256 of the canonical JSON of `seq, ts, event, actor, subject, details, prev_hash`; a
checkpoint signs the canonical JSON of `box_id, seq, head_hash, ts`.
"""


# -- verification ------------------------------------------------------------------------


def verify_package(folder: Path) -> PackageReport:
    """Check an evidence package without any key; every check is reported, failed or not."""
    folder = Path(folder)
    report = PackageReport(str(folder))
    report.add(SUMS, *_check_sums(folder))
    package, problem = _load(folder / MANIFEST)
    trail, trail_problem = _load(folder / CUSTODY)
    signed = package.get("manifest") if isinstance(package.get("manifest"), dict) else {}
    recording = signed.get("recording") if isinstance(signed.get("recording"), dict) else {}
    recording_id = recording.get("id")
    box_id = signed.get("box_id")

    # the signed manifest and the box's identity key
    public = _public(package.get("identity"))
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


def _load(path: Path) -> tuple[dict, str | None]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, f"{path.name} is missing"
    except (OSError, ValueError) as exc:
        return {}, f"{path.name} is not readable JSON ({exc})"
    if not isinstance(value, dict):
        return {}, f"{path.name} is not a JSON object"
    return value, None


def _public(b64) -> Ed25519PublicKey | None:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))
    except (TypeError, ValueError):
        return None


def _pick(row: dict, fields: tuple[str, ...]) -> dict:
    return {k: row[k] for k in fields}


def _json(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
