"""Writing an evidence package: the one code path of `edgebox export` and `edgebox central export`.

A package is one folder:

- the decrypted clip, whose SHA-256 is the evidence hash the box signed;
- `<recording>.ebv`, the still-encrypted vault file (as central received it, or as the box
  holds it);
- `manifest.json`: the box-signed manifest, its signature and the box's identity key;
- `custody.json`: the recording's custody entries, the contiguous chain segment from its
  first entry to the nearest signed checkpoint at or after its last one, and the
  checkpoints in that segment;
- `SHA256SUMS` (`sha256sum -c` format) over every other file, and `VERIFY.md`.

The caller gathers a `PackageSource` from wherever it holds the recording. `write_package`
builds the folder in a hidden staging folder beside the output, checks it with
`verify_package`, and only then renames it into place, so a failure leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgebox import vault
from edgebox.clock import iso
from edgebox.errors import CustodyError, EdgeboxError, VaultError
from edgebox.evidence.verify import (
    CHECKPOINT_FIELDS,
    CUSTODY,
    ENTRY_FIELDS,
    FORMAT,
    MANIFEST,
    README,
    SUMS,
    identity_key,
    verify_package,
)
from edgebox.keys import key_id
from edgebox.lowlevel.durable import fsync_dir
from edgebox.sync.protocol import check_signature

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class PackageError(EdgeboxError):
    """An evidence package cannot be written (bad output folder, missing store)."""

    status = 400


@dataclass(frozen=True)
class PackageSource:
    """Everything a package is made of, gathered by the box or by central."""

    box_id: str
    recording_id: str
    vault_path: Path
    data_key: bytes
    manifest: dict
    signature: str
    identity: str  # the box's raw Ed25519 public key, base64
    trail: dict  # recording_entries, chain, checkpoints (see `custody_segment`)
    vault_origin: str  # "as central received it" / "as the box holds it"
    extra: dict = field(default_factory=dict)  # more facts for manifest.json


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


def check_out(out: Path) -> None:
    """Refuse an output that is a file or a folder that already holds something."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PackageError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise PackageError(f"{out} is not empty; choose a new folder for the package")


def custody_segment(
    recording_id: str, mine: list[dict], chain: list[dict], checkpoints: list[dict], where: str
) -> dict:
    """The custody part of a package from rows read by the caller: the recording's entries,
    the chain from its first entry to the covering checkpoint (which must be contiguous), and
    the checkpoints inside it. `where` names the chain's keeper in errors."""
    if not mine:
        raise CustodyError(f"{where} holds no custody entries for recording {recording_id} yet")
    if not checkpoints or checkpoints[-1]["seq"] < mine[-1]["seq"]:
        raise CustodyError(
            f"no signed checkpoint in {where} covers custody entry {mine[-1]['seq']} of "
            f"recording {recording_id} yet"
        )
    first, end = mine[0]["seq"], checkpoints[-1]["seq"]
    if [e["seq"] for e in chain] != list(range(first, end + 1)):
        raise CustodyError(f"the custody chain in {where} has gaps in {first}..{end}")
    return {
        "recording_entries": [_pick(e, ENTRY_FIELDS) for e in mine],
        "chain": [_pick(e, ENTRY_FIELDS) for e in chain],
        "checkpoints": [_pick(c, CHECKPOINT_FIELDS) for c in checkpoints],
    }


def write_package(source: PackageSource, out: Path) -> dict:
    """Write the evidence package of `source` to `out` (all or nothing); returns a summary."""
    out = Path(out)
    check_out(out)
    manifest, recording_id = source.manifest, source.recording_id
    public = identity_key(source.identity)
    if public is None or not check_signature(manifest, source.signature, public):
        raise VaultError(
            f"recording {recording_id}: the manifest signature does not verify with box "
            f"{source.box_id}'s identity key"
        )
    recording = manifest.get("recording", {})
    evidence, stored = recording.get("evidence_sha256"), manifest.get("stored_sha256")
    problems = vault.check_structure(source.vault_path, stored)
    if problems:
        raise VaultError(f"recording {recording_id}: vault file damaged: {problems[0]}")
    clip = clip_name(recording, recording_id)
    vault_name = f"{recording_id}.ebv"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    except OSError as exc:
        raise PackageError(f"cannot create the package beside {out}: {exc.strerror}") from None
    try:
        _write_clip(source, staging, clip, evidence)
        shutil.copyfile(source.vault_path, staging / vault_name)
        fsync_dir(staging / vault_name)
        if vault.file_sha256(staging / vault_name) != stored:
            raise VaultError(f"recording {recording_id}: the copy of the vault file differs")
        package = {
            "format": FORMAT,
            "box_id": source.box_id,
            "recording_id": recording_id,
            "clip": clip,
            "vault_file": vault_name,
            "manifest": manifest,
            "signature": source.signature,
            "identity": source.identity,
            "identity_key_id": key_id(public),
            "exported_at": iso(),
            **source.extra,
        }
        _write(staging / MANIFEST, _json(package))
        custody_doc = {"box_id": source.box_id, "recording_id": recording_id, **source.trail}
        _write(staging / CUSTODY, _json(custody_doc))
        _write(staging / README, verify_text(package, source.trail, source.vault_origin).encode())
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
    trail = source.trail
    return {
        "package": str(out),
        "box_id": source.box_id,
        "recording_id": recording_id,
        "clip": clip,
        "evidence_sha256": evidence,
        "stored_sha256": stored,
        "identity_key_id": package["identity_key_id"],
        "custody": {
            "first_seq": trail["chain"][0]["seq"],
            "last_seq": trail["chain"][-1]["seq"],
            "recording_entries": len(trail["recording_entries"]),
            "checkpoint_seq": trail["checkpoints"][-1]["seq"],
        },
        "files": sorted(p.name for p in out.iterdir()),
    }


def _write_clip(source: PackageSource, staging: Path, clip: str, evidence: str) -> None:
    """Decrypt segment by segment into a temp file, check the evidence hash, then rename."""
    reader = vault.Reader(source.vault_path, source.data_key)
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
            f"recording {source.recording_id}: decrypted content hash {digest.hexdigest()} "
            f"differs from the evidence hash {evidence}"
        )
    os.replace(part, staging / clip)


def _sums(folder: Path) -> bytes:
    lines = [
        f"{vault.file_sha256(p)}  {p.name}\n"
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != SUMS
    ]
    return "".join(lines).encode()


def verify_text(package: dict, trail: dict, vault_origin: str) -> str:
    """VERIFY.md: what each file is and how to check the package by hand or with the tool."""
    recording = package["manifest"].get("recording", {})
    first, last = trail["chain"][0]["seq"], trail["chain"][-1]["seq"]
    return f"""# Evidence package: recording {package["recording_id"]}

Box `{package["box_id"]}`, identity key id `{package["identity_key_id"]}`
(the first 16 hex digits of SHA-256 over the raw Ed25519 public key in `{MANIFEST}`).
Compare this key id with the one on record for the box before trusting any signature.

| file | what it is |
| --- | --- |
| `{package["clip"]}` | the recording, decrypted; SHA-256 `{recording.get("evidence_sha256")}` |
| `{package["vault_file"]}` | the encrypted vault file {vault_origin} |
| `{MANIFEST}` | the manifest the box signed, its signature and the box's identity key |
| `{CUSTODY}` | custody entries {first}..{last} of the box's chain and the signed checkpoints |
| `{SUMS}` | SHA-256 of every other file |

## 1. The files are the ones exported

    cd <this folder> && sha256sum -c {SUMS}

## 2. The evidence and its custody

    edgebox verify-package <this folder>

(`edgebox central verify-package` on a central host is the same check.) It needs no key, no
box and no central; it prints OK or FAIL for each check and exits 0 only when all pass:

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


def _pick(row: dict, fields: tuple[str, ...]) -> dict:
    return {k: row[k] for k in fields}


def _json(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
