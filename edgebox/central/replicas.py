"""Central's copy of each box's Litestream replica: complete, restorable sets, swapped atomically.

Layout under the store folder:

- `replicas/<box>/incoming/<sha256>`: replica files received whole and hash-checked,
  named by their content, waiting for the set that lists them;
- `replicas/<box>/sets/<n>/`: one complete set, laid out like the box's replica folder
  (`ltx/<level>/<min>-<max>.ltx`, `edgebox-replica.json`); files shared between sets
  are hard links, and a set never changes once it is in place;
- `replicas/<box>/sets/<n>.json`: that set's listing, txid and when it came;
- `replicas/<box>/current`: a symbolic link to the newest set, replaced in one rename.

A set becomes current only when central holds every file of it with the listed
hash, and only if Litestream could restore from it; files the box no longer has
disappear from the copy only with that swap. `edgebox restore --from
STORE/replicas/<box>/current` rebuilds the box's database.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path

from edgebox.clock import iso
from edgebox.errors import EdgeboxError
from edgebox.lowlevel.durable import atomic_write, fsync_dir
from edgebox.replication import fileset as replication_set
from edgebox.replication.config import MARKER_NAME
from edgebox.sync import protocol
from edgebox.vault import file_sha256


class ReplicaCopyError(EdgeboxError):
    """Central holds no usable copy of this box's replica, or cannot export it."""

    status = 404


class ReplicaStore:
    """One box's replica copies at central."""

    def __init__(self, root: Path, box_id: str):
        self.root = Path(root)
        self.folder = self.root / "replicas" / box_id
        self.box_id = box_id
        self.incoming_dir = self.folder / "incoming"
        self.sets_dir = self.folder / "sets"
        self.current_link = self.folder / "current"

    # -- reading --------------------------------------------------------------------------
    def current(self) -> dict | None:
        """The current set's record (seq, id, txid, generation, files, received_at, path)."""
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        seq = int(Path(target).name)
        return {**self._record(seq), "path": str(self.sets_dir / str(seq))}

    def _record(self, seq: int) -> dict:
        return json.loads((self.sets_dir / f"{seq}.json").read_text())

    def held(self, sha256: str, size: int | None = None) -> int | None:
        """The size of the file with this hash if central holds it (incoming or current set)."""
        incoming = self.incoming_dir / sha256
        if incoming.is_file() and (size is None or incoming.stat().st_size == size):
            return incoming.stat().st_size
        current = self.current() or {}
        damaged = set(current.get("damaged", []))
        for path, entry in current.get("files", {}).items():
            if entry["sha256"] == sha256 and path not in damaged:
                if size is None or entry["size"] == size:
                    return entry["size"]
        return None

    def incoming(self, sha256: str) -> Path:
        """Where a received file waits for its set."""
        return self.incoming_dir / sha256

    @contextlib.contextmanager
    def locked(self):
        """Serialise set changes and exports across workers and processes."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- a new set ------------------------------------------------------------------------
    def commit(self, set_id: str, files: dict) -> dict:
        """Make `files` ({path: {size, sha256}}, paths already checked) the current set.

        Answers {"status": "ok", "set", "txid"}, {"status": "missing", "paths"} (nothing
        changed), or {"status": "rejected", "reason"}; "ok" may carry an `alarm` for
        operators (the box started a new replica; the previous copy is kept).
        """
        verdict = replication_set.plan(files)
        if not verdict["restorable"]:
            return {"status": "rejected", "reason": f"not restorable: {verdict['reason']}"}
        with self.locked():
            current = self.current()
            if current is not None and current["id"] == set_id:
                return {"status": "ok", "set": current["seq"], "txid": current["txid"]}
            generation = files.get(MARKER_NAME, {}).get("sha256")
            alarm = None
            if current is not None and current["generation"] == generation:
                if verdict["txid"] < int(current["txid"], 16):
                    return {
                        "status": "rejected",
                        "reason": f"the set goes back from txid {current['txid']} to "
                        f"{verdict['txid']:016x} within the same replica",
                    }
            elif current is not None:
                alarm = (
                    f"box {self.box_id} started a new replica (a restored or re-initialised "
                    f"box); the previous copy is kept at {current['path']}"
                )
            sources, missing = self._sources(files, current)
            if missing:
                return {"status": "missing", "paths": missing}
            seq = self._install(set_id, files, sources, verdict["txid"], generation)
            if alarm:
                self._update(current["seq"], kept=True)
            self._collect(keep={seq, current["seq"] if current else seq})
        answer = {"status": "ok", "set": seq, "txid": f"{verdict['txid']:016x}"}
        return {**answer, "alarm": alarm} if alarm else answer

    def _sources(self, files: dict, current: dict | None) -> tuple[dict, list]:
        """Where each file of the set is at central now; paths central lacks (or holds damaged)."""
        sources, missing = {}, []
        carried = current["files"] if current else {}
        damaged = set(current.get("damaged", [])) if current else set()
        # The same bytes may be held under another path: Litestream's compaction leaves
        # byte-identical files at two levels, and `held` (the transfer's answer) goes by
        # content, so the set must find them by content too.
        by_content = {(e["sha256"], e["size"]): p for p, e in carried.items() if p not in damaged}
        for path, entry in sorted(files.items()):
            held = by_content.get((entry["sha256"], entry["size"]))
            if held is not None:
                source = Path(current["path"]) / held
                if source.is_file() and source.stat().st_size == entry["size"]:
                    sources[path] = source
                    continue
            source = self.incoming(entry["sha256"])
            if _intact(source, entry):
                sources[path] = source
                continue
            source.unlink(missing_ok=True)  # damaged at rest: the box sends it again
            missing.append(path)
        return sources, missing

    def _install(self, set_id, files, sources, txid, generation) -> int:
        """Build the set beside the others, then point `current` at it in one rename."""
        self.sets_dir.mkdir(parents=True, exist_ok=True)
        seq = 1 + max((int(p.name.split(".")[0]) for p in self._entries()), default=0)
        building = self.sets_dir / f"{seq}.building"
        shutil.rmtree(building, ignore_errors=True)
        folders = set()
        for path, source in sources.items():
            target = building / path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)
            folders.add(target.parent)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(folder)
        fsync_dir(building)
        final = self.sets_dir / str(seq)
        building.rename(final)
        record = {
            "seq": seq,
            "id": set_id,
            "txid": f"{txid:016x}",
            "generation": generation,
            "files": files,
            "bytes": replication_set.total_bytes(files),
            "received_at": iso(),
            "kept": False,
        }
        atomic_write(self.sets_dir / f"{seq}.json", json.dumps(record, indent=1).encode())
        link = self.folder / f".current.{seq}"
        link.unlink(missing_ok=True)
        os.symlink(Path("sets") / str(seq), link)
        os.replace(link, self.current_link)
        fsync_dir(self.folder)
        return seq

    def _update(self, seq: int, **fields) -> None:
        record = {**self._record(seq), **fields}
        atomic_write(self.sets_dir / f"{seq}.json", json.dumps(record, indent=1).encode())

    def _entries(self) -> list[Path]:
        return [p for p in self.sets_dir.iterdir() if p.name.split(".")[0].isdigit()]

    def _collect(self, keep: set[int]) -> None:
        """Drop older sets (not the previous one, nor kept ones), every waiting file, and
        replica transfers left unfinished (the box sends a set only after its files, so
        any still open are of files Litestream deleted before they went whole)."""
        transfers = self.root / "transfers" / self.box_id
        if transfers.is_dir():
            for folder in transfers.iterdir():
                if protocol.is_replica_transfer(folder.name):
                    shutil.rmtree(folder, ignore_errors=True)
        for entry in self._entries():
            seq = int(entry.name.split(".")[0])
            if seq in keep or (entry.suffix != ".building" and self._kept(seq)):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        shutil.rmtree(self.incoming_dir, ignore_errors=True)

    def _kept(self, seq: int) -> bool:
        try:
            return bool(self._record(seq).get("kept"))
        except (FileNotFoundError, ValueError):
            return False

    # -- operators ------------------------------------------------------------------------
    def report(self) -> dict:
        """The current set and the kept earlier ones, for `edgebox central replica`."""
        current = self._require()
        kept = [
            str(self.sets_dir / str(int(p.stem)))
            for p in sorted(self.sets_dir.glob("*.json"))
            if int(p.stem) != current["seq"] and self._kept(int(p.stem))
        ]
        return {
            "box_id": self.box_id,
            "path": str(self.current_link),
            "set": current["seq"],
            "txid": current["txid"],
            "files": len(current["files"]),
            "bytes": current["bytes"],
            "received_at": current["received_at"],
            "kept": kept,
            "damaged": current.get("damaged", []),
        }

    def check(self) -> dict:
        """Re-hash every file of the current set. Damaged files are marked, so the box's next
        set finds them missing and sends them again."""
        with self.locked():
            current = self._require()
            damaged = sorted(
                path
                for path, entry in current["files"].items()
                if not _intact(Path(current["path"]) / path, entry)
            )
            if damaged:
                self._update(current["seq"], damaged=damaged)
        return {**self.report(), "damaged": damaged}

    def export(self, out: Path) -> dict:
        """Copy the current set to `out` (new or empty) and check every copied file's hash."""
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ReplicaCopyError(f"{out} exists and is not an empty folder", status=409)
        staging = out.with_name(f".{out.name}.exporting")
        with self.locked():
            current = self._require()
            shutil.rmtree(staging, ignore_errors=True)
            try:
                for path, entry in sorted(current["files"].items()):
                    target = staging / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(Path(current["path"]) / path, target)
                    if not _intact(target, entry):
                        self._update(current["seq"], damaged=[path])
                        raise ReplicaCopyError(
                            f"central's copy of {path} fails its hash; it is marked damaged "
                            "and the box's next replica set brings it again",
                            status=500,
                        )
                if out.exists():
                    out.rmdir()
                staging.rename(out)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return {**self.report(), "exported_to": str(out)}

    def _require(self) -> dict:
        current = self.current()
        if current is None:
            raise ReplicaCopyError(f"central holds no replica of box {self.box_id}")
        return current


def _intact(path: Path, entry: dict) -> bool:
    """Whether a stored file has its listed size and hash."""
    try:
        return path.stat().st_size == entry["size"] and file_sha256(path) == entry["sha256"]
    except FileNotFoundError:
        return False
