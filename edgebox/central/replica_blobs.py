"""The boxes' replica copies in the blob store, when that store is not central's work folder.

Central gathers and checks each box's Litestream replica files in its work folder
(`edgebox.central.replicas`). With an object store, every set that becomes current there is
also written to the store before the box hears `ok`:

- `replicas/<box>/files/<sha256>`: each file of the set, named by its content (a file shared
  by several sets is stored once; one already there is not sent again);
- `replicas/<box>/sets/<n>.json`: the set's record (paths, sizes, hashes, txid);
- `replicas/<box>/current.json`: the same record, written last.

`restore_set` rebuilds a set's folder from the store, from which `edgebox restore --from`
rebuilds the box's database; `check_set` re-reads and re-hashes the set where it lies.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from edgebox.central.replicas import ReplicaCopyError, ReplicaStore
from edgebox.vault import file_sha256


def _prefix(box_id: str) -> str:
    return f"replicas/{box_id}"


def mirror_set(blobs, replicas: ReplicaStore) -> None:
    """Write the box's current set to `blobs` (nothing when `blobs` is the work folder)."""
    if blobs.folder() == replicas.root:
        return
    current = replicas.current()
    if current is None:
        return
    prefix = _prefix(replicas.box_id)
    for path, entry in sorted(current["files"].items()):
        key = f"{prefix}/files/{entry['sha256']}"
        held = blobs.head(key)
        if held is None or (held.size, held.sha256) != (entry["size"], entry["sha256"]):
            upload = blobs.begin(key, entry["sha256"])
            with open(Path(current["path"]) / path, "rb") as handle:
                while chunk := handle.read(8 << 20):
                    upload.part(chunk)
            upload.commit()
    record = json.dumps({k: v for k, v in current.items() if k != "path"}, indent=1).encode()
    blobs.put(f"{prefix}/sets/{current['seq']}.json", record)
    blobs.put(f"{prefix}/current.json", record)


def current_set(blobs, box_id: str) -> dict:
    """The record of the box's current set in the store."""
    try:
        return json.loads(blobs.get(f"{_prefix(box_id)}/current.json"))
    except FileNotFoundError:
        raise ReplicaCopyError(f"the store holds no replica of box {box_id}") from None


def check_set(blobs, box_id: str) -> tuple[dict, list[str]]:
    """Read back and hash every file of the box's current set in the store; answers the
    record and the paths found damaged or missing. A damaged object is moved aside to
    `replicas/<box>/damaged/<sha256>` (kept to look at), so the next set central mirrors
    writes the file again from its own checked copy."""
    prefix, record, damaged = _prefix(box_id), current_set(blobs, box_id), []
    with tempfile.TemporaryDirectory(prefix="edgebox-replica-check-") as scratch:
        target = Path(scratch) / "file"
        for path, entry in sorted(record["files"].items()):
            key = f"{prefix}/files/{entry['sha256']}"
            try:
                blobs.download(key, target)
            except FileNotFoundError:
                damaged.append(path)
                continue
            if target.stat().st_size != entry["size"] or file_sha256(target) != entry["sha256"]:
                damaged.append(path)
                blobs.put(f"{prefix}/damaged/{entry['sha256']}", target.read_bytes())
                blobs.delete(key)
    return record, damaged


def restore_set(blobs, box_id: str, out: Path) -> dict:
    """Lay the box's current set from the store into `out` (new or empty), every file's
    hash checked; answers the set's record. A set that cannot be laid out whole leaves
    `out` as it found it."""
    prefix, record = _prefix(box_id), current_set(blobs, box_id)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ReplicaCopyError(f"{out} exists and is not empty", status=409)
    created = not out.exists()
    try:
        for path, entry in sorted(record["files"].items()):
            _fetch(blobs, f"{prefix}/files/{entry['sha256']}", out / path, path, entry)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    return record


def _fetch(blobs, key: str, target: Path, path: str, entry: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        blobs.download(key, target)
    except FileNotFoundError:
        raise ReplicaCopyError(
            f"the store has no copy of {path} (a check found it damaged, or it was "
            "removed); the box's next replica set brings it again, or restore from "
            "central's work folder",
            status=500,
        ) from None
    if file_sha256(target) != entry["sha256"]:
        raise ReplicaCopyError(f"the store's copy of {path} fails its hash", status=500)
