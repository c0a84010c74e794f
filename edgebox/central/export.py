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

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgebox import vault
from edgebox.central.files import manifest_key, recording_key, recording_path
from edgebox.central.index import Index, open_index
from edgebox.central.package import (
    CHECKPOINT_FIELDS,
    CUSTODY,
    ENTRY_FIELDS,
    FORMAT,
    MANIFEST,
    README,
    SUMS,
    identity_key,
    load_json,
    verify_package,
)
from edgebox.clock import iso
from edgebox.errors import CustodyError, EdgeboxError, KeyAccessError, NotFound, VaultError
from edgebox.keys import key_id
from edgebox.lowlevel.durable import fsync_dir
from edgebox.recordings import data_key_for
from edgebox.sync.protocol import check_signature

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BLOCK = 1 << 20


class PackageError(EdgeboxError):
    """An evidence package cannot be written (bad output folder, missing store)."""

    status = 400


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
    blobs=None,
    index_spec: str = "sqlite",
) -> dict:
    """Write the evidence package of one recording to `out` (all or nothing); returns a summary.

    `store_dir` is central's folder (its work folder with an object store); `blobs` the blob
    store when it is not that folder (the files are fetched beside `out` first, then checked
    like a folder's), `index_spec` the index as `open_index` takes it."""
    store_dir, out = Path(store_dir), Path(out)
    if index_spec == "sqlite" and not (store_dir / "central.db").is_file():
        raise NotFound(f"no central store at {store_dir} (central.db is missing)")
    _check_out(out)
    fetched: list[Path] = []
    try:
        return _export(
            store_dir, recording_id, private_key, out, box_id, blobs, index_spec, fetched
        )
    finally:
        for folder in fetched:
            shutil.rmtree(folder, ignore_errors=True)


def _locate(store_dir: Path, blobs, box_id: str, recording_id: str, out: Path, fetched) -> Path:
    """The recording's vault file (its manifest beside it) as a local path."""
    if blobs is None or blobs.folder() is not None:
        return recording_path(blobs.folder() if blobs else store_dir, box_id, recording_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.fetch-", dir=out.parent))
    fetched.append(folder)
    key = recording_key(box_id, recording_id)
    source = folder / f"{recording_id}.ebv"
    try:
        blobs.download(key, source)
        blobs.download(manifest_key(key), source.with_suffix(".manifest.json"))
    except FileNotFoundError:
        raise VaultError(
            f"recording {recording_id}: indexed, but missing from {blobs.url}"
        ) from None
    return source


def _export(store_dir, recording_id, private_key, out, box_id, blobs, index_spec, fetched):
    index = open_index(index_spec, store_dir)
    try:
        row = _recording_row(index, recording_id, box_id)
        box_id = row["box_id"]
        box = index.one("SELECT identity FROM boxes WHERE box_id = ?", (box_id,))
        if box is None:
            raise NotFound(f"central has no identity key for box {box_id}")
        identity, manifest = box["identity"], json.loads(row["manifest"])
        public = identity_key(identity)
        if public is None or not check_signature(manifest, row["signature"], public):
            raise VaultError(
                f"recording {recording_id}: the manifest signature does not verify with box "
                f"{box_id}'s pinned identity key"
            )
        evidence = row["evidence_sha256"]
        if manifest.get("recording", {}).get("evidence_sha256") != evidence:
            raise VaultError(f"recording {recording_id}: index and signed manifest disagree")
        source = _locate(store_dir, blobs, box_id, recording_id, out, fetched)
        beside, _ = load_json(source.with_suffix(".manifest.json"))
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
        fsync_dir(staging / vault_name)
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


def _pick(row: dict, fields: tuple[str, ...]) -> dict:
    return {k: row[k] for k in fields}


def _json(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
