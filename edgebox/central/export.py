"""Evidence packages at central: decrypt one recording with central's key and write what a
court expert can check (the package format and its writing: `edgebox.evidence`).

Central's package holds the vault file as central received it, the manifest the box signed
when it sent the recording, and the custody segment central received, up to a checkpoint
the box signed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgebox import vault
from edgebox.central.files import manifest_key, recording_key, recording_path
from edgebox.central.index import Index, open_index
from edgebox.errors import CustodyError, EdgeboxError, KeyAccessError, NotFound, VaultError
from edgebox.evidence.verify import load_json
from edgebox.evidence.writer import (
    PackageError,
    PackageSource,
    check_out,
    custody_segment,
    write_package,
)
from edgebox.keys import key_id
from edgebox.recordings import data_key_for


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
    check_out(out)
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
        manifest = json.loads(row["manifest"])
        if manifest.get("recording", {}).get("evidence_sha256") != row["evidence_sha256"]:
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
    return write_package(
        PackageSource(
            box_id=box_id,
            recording_id=recording_id,
            vault_path=source,
            data_key=data_key,
            manifest=manifest,
            signature=row["signature"],
            identity=box["identity"],
            trail=trail,
            vault_origin="as central received it",
            extra={
                "exported_from": "central",
                "tid": row["tid"],
                "received_at": row["received_at"],
                "exported_with_central_key": central_kid,
            },
        ),
        out,
    )


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
    the checkpoints inside that segment, as central received them."""
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
    checkpoints = index.query(
        "SELECT * FROM checkpoints WHERE box_id = ? AND seq BETWEEN ? AND ? ORDER BY seq",
        (box_id, first, cover["seq"]),
    )
    return custody_segment(recording_id, mine, chain, checkpoints, f"central's copy of {box_id}")


def _data_key(source: Path, private_key: X25519PrivateKey, recording_id: str, kid: str) -> bytes:
    try:
        return data_key_for(source, private_key, role="central")
    except EdgeboxError as exc:
        raise KeyAccessError(
            f"central key {kid} cannot open recording {recording_id} ({exc.message})"
        ) from None
