"""What a replica set is: the files of a Litestream replica folder that restore together.

Box and central share these rules. A set maps each file's path (relative to the
replica folder) to its size and SHA-256. The only paths a set may hold are
Litestream's `ltx/<level>/<min txid>-<max txid>.ltx` and edgebox's marker
`edgebox-replica.json`, so a path can never point outside the folder.

`plan` follows Litestream 0.5's restore planner: start from the newest snapshot
(level 9), extend the range of transactions with any file that continues it,
and fail when a file starts beyond the range reached (Litestream refuses such a
replica with "non-contiguous ltx files").
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from edgebox.errors import EdgeboxError
from edgebox.replication.config import MARKER_NAME, ltx_files
from edgebox.vault import canonical, file_sha256

SNAPSHOT_LEVEL = 9
_LTX_PATH = re.compile(
    r"^ltx/(?P<level>[0-9]|[1-9][0-9])/(?P<min>[0-9a-f]{16})-(?P<max>[0-9a-f]{16})\.ltx$"
)


class ReplicaPathError(EdgeboxError):
    """A path that is not a replica file (it could escape the replica folder)."""

    status = 400


class ReplicaChanged(EdgeboxError):
    """Litestream removed a file while the folder was being read; read it again."""

    status = 409


def check_path(path) -> str:
    """`path` if it names a replica file, else ReplicaPathError with the reason."""
    if not isinstance(path, str):
        raise ReplicaPathError("replica path must be text")
    shown = repr(path[:120])
    if path.startswith("/") or "\\" in path or ".." in path.split("/"):
        raise ReplicaPathError(f"replica path {shown} escapes the replica folder")
    if path != MARKER_NAME and not _LTX_PATH.match(path):
        raise ReplicaPathError(
            f"replica path {shown} is not a replica file "
            f"(ltx/<level>/<min txid>-<max txid>.ltx or {MARKER_NAME})"
        )
    return path


def txids(path: str) -> tuple[int, int, int] | None:
    """(level, min txid, max txid) of an LTX path; None for the marker."""
    match = _LTX_PATH.match(path)
    if not match:
        return None
    return int(match["level"]), int(match["min"], 16), int(match["max"], 16)


def scan(folder: Path, known: dict | None = None) -> dict:
    """The replica folder as a set: {path: {"size", "sha256"}}.

    Levels are read in ascending order: Litestream writes a compacted file before it
    deletes the files it replaces, so a file removed after its level was read is
    covered by a file of a higher level, read later. Files still being written carry
    a `.tmp` suffix and are not listed. LTX files never change once named, so a file
    in `known` with the same size keeps its known hash. ReplicaChanged when a file
    vanishes while it is hashed.
    """
    known = known or {}
    files = {}
    entries = [(p, str(p.relative_to(folder))) for *_, p in ltx_files(folder)]
    marker = Path(folder) / MARKER_NAME
    if marker.is_file():
        entries.append((marker, MARKER_NAME))
    for path, relative in entries:
        try:
            size = path.stat().st_size
            previous = known.get(relative)
            if previous and previous["size"] == size and relative != MARKER_NAME:
                files[relative] = {"size": size, "sha256": previous["sha256"]}
            else:
                files[relative] = {"size": size, "sha256": file_sha256(path)}
        except FileNotFoundError:
            raise ReplicaChanged(f"{relative} went away while the replica was read") from None
    return files


def plan(paths) -> dict:
    """Whether Litestream can restore from these files, and up to which transaction.

    {"restorable": bool, "txid": int (the newest transaction restored), "reason": str | None}.
    """
    files = [(t, p) for p in paths if (t := txids(p)) is not None]
    if not files:
        return {"restorable": False, "txid": 0, "reason": "the replica holds no LTX files"}
    reach = max((t[2] for t, _ in files if t[0] == SNAPSHOT_LEVEL), default=0)
    others = [(t, p) for t, p in files if t[0] != SNAPSHOT_LEVEL]
    while True:
        extend = [t[2] for t, _ in others if t[1] <= reach + 1 and t[2] > reach]
        if not extend:
            break
        reach = max(extend)
    if reach == 0:
        return {"restorable": False, "txid": 0, "reason": "no snapshot and no file from txid 1"}
    beyond = sorted(p for t, p in others if t[1] > reach + 1)
    if beyond:
        return {
            "restorable": False,
            "txid": reach,
            "reason": f"non-contiguous: restores up to txid {reach:016x}, but {beyond[0]} "
            "starts later",
        }
    return {"restorable": True, "txid": reach, "reason": None}


def set_id(body: dict) -> str:
    """A set message's id: the hash of its canonical JSON (same files, same id)."""
    return "replica-set:" + hashlib.sha256(canonical(body)).hexdigest()[:32]


def total_bytes(files: dict) -> int:
    """The size of a set's files together."""
    return sum(entry["size"] for entry in files.values())
