"""The Axis content destination: Swift containers and objects mapped onto EdgeBox.

Directory containers (System, Users, Devices) hold metadata objects (`directory.py`). A
recording container `<UserID>_<BWCSerialNumber>_<TriggerOnTime>` is one Axis recording; each
object in it (clip, key object, bookmark, GNSS track) is streamed through the one ingest road,
`Uploads.open` + `Uploads.append`, so it becomes its own encrypted vault file and recording
row (synced, retained, verified and custody-logged like any other). The rows of one Axis
recording share `axis_recording` (the container name); the first clip is the lead and the
only one `listed`. `Status: Complete` closes the recording: the lead then carries the whole
recording's metadata, and central is told which vault files form it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass

from edgebox import custody
from edgebox.axis import directory, documents, groups, mapping
from edgebox.axis.accounts import AxisAccounts
from edgebox.axis.names import (
    BOX_OBJECTS,
    CAPABILITIES,
    DIRECTORY_KINDS,
    SYSTEM,
    bad,
    container_kind,
    merge_meta,
    meta_get,
    object_kind,
    parse_recording_name,
)
from edgebox.clock import iso
from edgebox.errors import IngestError, NotFound

MAX_DIRECTORY_BODY = 64 * 1024
COMPLETE = groups.COMPLETE


@dataclass
class Stored:
    """What a PUT answers: 201 (created) or 202 (accepted, already there) and the ETag."""

    status: int
    etag: str | None = None


class _Md5Reader:
    """A request body reader that keeps the md5 of what passed (Swift's ETag)."""

    def __init__(self, stream, digest):
        self.stream, self.digest = stream, digest

    def read(self, size: int = -1) -> bytes:
        block = self.stream.read(size)
        self.digest.update(block)
        return block


class AxisDestination:
    """Containers and objects of the Body Worn Integration API, on top of the box's services."""

    def __init__(self, box):
        self.box = box
        self.store = box.store
        self.config = box.config.axis
        self.accounts = AxisAccounts(box.store, box.keys.web_secret(), self.config.token_minutes)
        self._busy = threading.BoundedSemaphore(self.config.max_parallel_uploads)
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()

    # -- containers ---------------------------------------------------------
    def container(self, name: str) -> dict:
        """A container's row; the directory containers always exist (404 for others)."""
        row = self.store.one("SELECT * FROM axis_containers WHERE name = ?", (name,))
        if row is None and name in DIRECTORY_KINDS:
            return {"name": name, "kind": DIRECTORY_KINDS[name], "status": "", "metadata": "{}"}
        if row is None:
            raise NotFound(f"no container {name[:80]}")
        return row

    def put_container(self, account: str, name: str, meta: dict) -> int:
        """Swift PUT container: 201 created, 202 when it existed (its metadata merged)."""
        with self._lock(name):  # one change of a container at a time, uploads included
            return self._put_container(account, name, meta)

    def _put_container(self, account: str, name: str, meta: dict) -> int:
        kind = container_kind(name)
        row = self.store.one("SELECT * FROM axis_containers WHERE name = ?", (name,))
        if row is not None:
            self._update_container(account, row, meta)
            return 202
        device_id = None
        if kind == "recording":
            device_id = self._check_recording(name, meta)["id"]
            if meta_get(meta, "Status") == COMPLETE:
                raise bad("a recording holds at least one clip; none was stored", "Status")
        parts = parse_recording_name(name) if kind == "recording" else None
        now = iso()
        with self.store.write() as db:
            db["axis_containers"].insert(
                {
                    "name": name,
                    "kind": kind,
                    "account": account,
                    "user_uuid": parts.user_uuid if parts else None,
                    "serial": parts.serial if parts else None,
                    "device_id": device_id,
                    "status": meta_get(meta, "Status") or ("Transferring" if parts else ""),
                    "metadata": json.dumps(meta, sort_keys=True),
                    "created_at": now,
                    "updated_at": now,
                }
            )
            if device_id:
                _note_controller(db, device_id, meta)
            custody.append(
                db, f"axis.{kind}_container_created", f"axis:{account}", name, {"metadata": meta}
            )
        return 201

    def post_container(self, account: str, name: str, meta: dict) -> None:
        """Swift POST container: merge metadata; `Status: Complete` closes a recording (after
        any object upload into it still running)."""
        with self._lock(name):
            row = self.container(name)
            if "account" not in row:  # a directory container not created yet: create it
                self._put_container(account, name, meta)
                return
            self._update_container(account, row, meta)

    def _update_container(self, account: str, row: dict, meta: dict) -> None:
        if row["status"] == COMPLETE:
            raise IngestError(f"recording {row['name'][:80]} is Complete and closed", status=403)
        merged = merge_meta(json.loads(row["metadata"]), meta)
        if row["kind"] == "recording":
            self._check_recording(row["name"], merged)
            if meta_get(merged, "Status") == COMPLETE:
                self._complete(account, row, merged)
                return
        with self.store.write() as db:
            db.execute(
                "UPDATE axis_containers SET metadata = ?, status = ?, updated_at = ? "
                "WHERE name = ?",
                [
                    json.dumps(merged, sort_keys=True),
                    meta_get(merged, "Status") or row["status"],
                    iso(),
                    row["name"],
                ],
            )
            if row.get("device_id"):
                _note_controller(db, row["device_id"], merged)
            custody.append(
                db,
                "axis.container_updated",
                f"axis:{account}",
                row["name"],
                {"changes": meta},
            )

    def _check_recording(self, name: str, meta: dict) -> dict:
        """400 unless the recording's user and camera are registered and its metadata agrees
        with its name and has times in bounds; returns the camera's devices row."""
        parts = parse_recording_name(name)
        if directory.axis_user(self.store, parts.user_uuid) is None:
            raise bad(f"user {parts.user_uuid} is not registered in Users/", "UserID")
        camera = directory.axis_camera(self.store, parts.serial)
        if camera is None:
            raise bad(f"camera {parts.serial} is not registered in Devices/", "BWCSerialNumber")
        _not_revoked(camera)
        for key, expected in (("UserID", parts.user_uuid), ("BWCSerialNumber", parts.serial)):
            given = meta_get(meta, key)
            if given is not None and given != expected:
                raise bad(f"{key} {given!r} differs from the container name's {expected!r}", key)
        mapping.axis_time(meta, "TriggerOnTime")
        mapping.axis_time(meta, "TriggerOffTime")
        return camera

    def head_container(self, name: str) -> dict:
        """A container's metadata, object count and bytes (Swift HEAD container)."""
        row = self.container(name)
        counts = self.store.one(
            "SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM axis_objects "
            "WHERE container = ?",
            (name,),
        )
        extra = len(BOX_OBJECTS) if name == SYSTEM else 0
        return {
            "metadata": json.loads(row["metadata"]),
            "objects": counts["n"] + extra,
            "bytes": counts["bytes"],
        }

    # -- objects ------------------------------------------------------------
    def _object(self, container: str, name: str) -> dict | None:
        return self.store.one(
            "SELECT * FROM axis_objects WHERE container = ? AND name = ?", (container, name)
        )

    def put_object(
        self,
        account: str,
        container: str,
        name: str,
        meta: dict,
        length: int | None,
        stream,
        etag_header: str | None,
    ) -> Stored:
        """Swift PUT object. Recording objects stream into the vault; directory objects (small)
        are kept as metadata. 411 without a Content-Length (the vault header needs it)."""
        row = self.container(container)
        kind = object_kind(row["kind"], name)
        if length is None:
            raise IngestError("Content-Length is required", status=411)
        expected = (etag_header or "").strip('"').lower() or None
        if row["kind"] != "recording":
            return self._put_directory_object(
                account, row, kind, name, meta, length, stream, expected
            )
        if not self._busy.acquire(blocking=False):
            raise IngestError("the box is receiving other recordings; retry soon", status=503)
        try:
            with self._lock(container):
                return self._put_recording_object(
                    account,
                    self.container(container),
                    kind,
                    name,
                    meta,
                    length,
                    stream,
                    expected,
                )
        finally:
            self._busy.release()

    def _put_directory_object(self, account, row, kind, name, meta, length, stream, expected):
        if row["name"] == SYSTEM and name in BOX_OBJECTS:
            raise IngestError(f"System/{name} is the box's own; it cannot be replaced", status=403)
        if length > MAX_DIRECTORY_BODY:
            raise bad(f"{row['name']}/ objects carry metadata; at most {MAX_DIRECTORY_BODY} bytes")
        body = stream.read(length) if length else b""
        if len(body) != length:
            raise IngestError("the body ended before Content-Length bytes", status=499)
        tag = documents.etag(body)
        if expected and expected != tag:
            raise IngestError("ETag does not match the body's md5", status=422)
        with self.store.write() as db:
            if row.get("account") is None:
                self._create_directory(db, account, row["name"])
            directory.store_directory_object(
                db, row["name"], kind, name, meta, body, f"axis:{account}"
            )
        return Stored(201, tag)

    def _create_directory(self, db, account: str, name: str) -> None:
        now = iso()
        db["axis_containers"].insert(
            {
                "name": name,
                "kind": DIRECTORY_KINDS[name],
                "account": account,
                "metadata": "{}",
                "status": "",
                "created_at": now,
                "updated_at": now,
            }
        )

    def _put_recording_object(self, account, row, kind, name, meta, length, stream, expected):
        if row["status"] == COMPLETE:
            raise IngestError(f"recording {row['name'][:80]} is Complete and closed", status=403)
        existing = self._object(row["name"], name)
        if existing is not None:
            if expected == existing["etag"]:  # a retry of a PUT whose answer was lost
                return Stored(201, existing["etag"])
            raise IngestError(f"{name} is already stored; evidence is never replaced", status=403)
        if kind == "clip" and length == 0:
            raise bad("the clip has no content", "Content-Length")
        container_meta = json.loads(row["metadata"])
        columns = self._columns(row, container_meta, kind, name, meta)
        raw = {
            "axis": {
                "account": account,
                "container": row["name"],
                "object": name,
                "kind": kind,
                "object_metadata": meta,
                "recording_metadata": container_meta,
            }
        }
        device = self.store.one("SELECT * FROM devices WHERE id = ?", (row["device_id"],))
        _not_revoked(device)
        digest = hashlib.md5(usedforsecurity=False)

        def check_etag() -> None:
            if expected and digest.hexdigest() != expected:
                raise IngestError("ETag does not match the body's md5; nothing kept", status=422)

        if length == 0:
            check_etag()
        uploads = self.box.uploads
        progress = uploads.open(device, length, columns, raw)
        try:
            if not progress.finished:
                progress = uploads.append(
                    progress.upload_id,
                    device,
                    "0",
                    length,
                    _Md5Reader(stream, digest),
                    before_finish=check_etag,
                )
            if not progress.finished:
                raise IngestError("the body ended before Content-Length bytes", status=499)
        except BaseException:
            uploads.abandon(progress.upload_id, device, "the Axis PUT did not complete")
            raise
        tag = digest.hexdigest()
        now = iso()
        with self.store.write() as db:
            db["axis_objects"].insert(
                {
                    "container": row["name"],
                    "name": name,
                    "kind": kind,
                    "recording_id": progress.recording_id,
                    "metadata": json.dumps(meta, sort_keys=True),
                    "etag": tag,
                    "size": length,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            custody.append(
                db,
                "axis.object_stored",
                f"axis:{account}",
                progress.recording_id,
                {
                    "container": row["name"],
                    "object": name,
                    "kind": kind,
                    "md5": tag,
                    "evidence_sha256": progress.evidence_sha256,
                },
            )
        return Stored(201, tag)

    def _columns(self, row: dict, container_meta: dict, kind: str, name: str, meta: dict) -> dict:
        """The recording row's columns of one object of an Axis recording."""
        user = directory.axis_user(self.store, row["user_uuid"]) or {}
        columns = {
            "serial": row["serial"],
            "filename": name,
            "user_id": user.get("user_id") or row["user_uuid"],
            "started_at": None,
            "stopped_at": None,
            "trigger_on": meta_get(container_meta, "TriggerOn"),
            "trigger_off": meta_get(container_meta, "TriggerOff"),
            "pre_event_seconds": None,
            "gps": mapping.location(meta_get(container_meta, "TriggerOnLocation")),
            "category": None,
            "warned": None,
            "exemption": None,
            "camera_sha256": None,
            "axis_recording": row["name"],
            "listed": 0,
        }
        if kind == "clip":
            columns.update(mapping.clip_columns(container_meta, meta))
            columns["listed"] = int(groups.lead_id(self.store, row["name"]) is None)
        return columns

    def post_object(self, account: str, container: str, name: str, meta: dict) -> None:
        """Swift POST object: replace the object's metadata (404 if missing, 403 if closed)."""
        row = self.container(container)
        existing = self._object(container, name)
        if existing is None:
            raise NotFound(f"no object {container[:80]}/{name[:80]}")
        if row["kind"] != "recording":
            with self.store.write() as db:
                directory.store_directory_object(
                    db, container, existing["kind"], name, meta, None, f"axis:{account}"
                )
            return
        if row["status"] == COMPLETE:
            raise IngestError(f"recording {container[:80]} is Complete and closed", status=403)
        with self.store.write() as db:
            db.execute(
                "UPDATE axis_objects SET metadata = ?, updated_at = ? "
                "WHERE container = ? AND name = ?",
                [json.dumps(meta, sort_keys=True), iso(), container, name],
            )
            custody.append(
                db,
                "axis.object_metadata_changed",
                f"axis:{account}",
                existing["recording_id"],
                {
                    "container": container,
                    "object": name,
                    "metadata": meta,
                    "before": json.loads(existing["metadata"]),
                },
            )

    def head_object(self, container: str, name: str) -> dict:
        """An object's ETag, size and metadata (Swift HEAD object), or 404."""
        self.container(container)
        if container == SYSTEM and name in BOX_OBJECTS:
            body = self.box_object(name)
            return {"etag": documents.etag(body), "size": len(body), "metadata": {}}
        existing = self._object(container, name)
        if existing is None:
            raise NotFound(f"no object {container[:80]}/{name[:80]}")
        return {
            "etag": existing["etag"],
            "size": existing["size"],
            "metadata": json.loads(existing["metadata"]),
        }

    def get_object(self, container: str, name: str) -> tuple[bytes, dict]:
        """Swift GET object: only System/ objects are read back (footage never leaves here)."""
        if container != SYSTEM:
            raise IngestError(
                "only System/ objects can be read back; footage leaves the box upstream only",
                status=403,
            )
        if name in BOX_OBJECTS:
            return self.box_object(name), {}
        existing = self._object(container, name)
        if existing is None:
            raise NotFound(f"no object System/{name[:80]}")
        return existing["body"] or b"", json.loads(existing["metadata"])

    def box_object(self, name: str) -> bytes:
        """The box's own System/ documents, generated from its config."""
        if name == CAPABILITIES:
            return documents.capabilities()
        return documents.categories(self.config.categories)

    def recover(self) -> list[str]:
        """At start: an Axis PUT cut short by a crash can never resume (Swift has no offsets;
        the controller sends the object again), so its unfinished upload is failed and its
        files dropped now. Returns the upload ids."""
        dropped = []
        for row in self.store.query(
            "SELECT id, device_id, metadata FROM uploads WHERE state = 'receiving'"
        ):
            if json.loads(row["metadata"])["columns"].get("axis_recording"):
                self.box.uploads.abandon(
                    row["id"], {"id": row["device_id"]}, "the Axis PUT was cut short by a restart"
                )
                dropped.append(row["id"])
        return dropped

    def _complete(self, account: str, row: dict, merged: dict) -> None:
        groups.complete(self.store, account, row["name"], merged)
        with self._locks_guard:
            self._locks.pop(row["name"], None)

    def _lock(self, container: str) -> threading.RLock:
        with self._locks_guard:
            return self._locks.setdefault(container, threading.RLock())


def _not_revoked(camera: dict) -> None:
    """403 for a camera an operator revoked on the box (`edgebox cameras revoke`)."""
    if camera["revoked_at"]:
        raise IngestError(
            f"camera {camera['serial']} was revoked on this box at {camera['revoked_at']}",
            status=403,
        )


def _note_controller(db, device_id: str, meta: dict) -> None:
    """Keep the camera's controller serial (SCUSerialNumber of its latest recording)."""
    controller = meta_get(meta, "SCUSerialNumber")
    if controller:
        db.execute(
            "UPDATE devices SET controller_serial = ? WHERE id = ?", [controller[:64], device_id]
        )
