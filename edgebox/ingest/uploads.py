"""The upload service behind the tus endpoint: create, offset, append, finish, terminate, expire.

Bytes go straight from the request stream into a vault Writer, which encrypts
them segment by segment; nothing in plaintext is written anywhere. While an
upload is unfinished its data key is kept wrapped under the box's ingest key in
`<upload>.resume`, so after a crash the upload resumes from the last durable
segment boundary instead of starting again.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import secrets
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgebox import custody, vault
from edgebox.clock import iso, parse_rfc3339, utcnow
from edgebox.db import Store
from edgebox.errors import IngestError, NotFound, VaultError
from edgebox.ingest.dedupe import held_recording
from edgebox.ingest.endings import UploadEndings
from edgebox.ingest.metadata import parse_recording_metadata
from edgebox.ingest.wire import (
    FINAL,
    PART_DONE,
    PARTIAL,
    READ_BLOCK,
    checksum,
    discard_body,
    disk_error,
    is_count,
)
from edgebox.keys import HPKE_NAME, Keyring, wrap_key

EXPIRY_STEP = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class IngestSettings:
    """What the upload service needs from the config."""

    data_dir: Path
    max_upload_bytes: int
    expire_hours: int
    reserve_free_bytes: int
    suite: str
    segment_size: int


@dataclass
class Progress:
    """What a tus response reports about an upload."""

    upload_id: str
    offset: int
    length: int | None  # None: deferred, not declared yet
    expires_at: str
    recording_id: str | None = None
    evidence_sha256: str | None = None
    finished: bool = False
    concat: str | None = None  # the Upload-Concat a HEAD reports (parts and final uploads)
    duplicate: bool = False  # creation found the recording already held (edgebox.ingest.dedupe)


class _Active:
    """An upload whose writer is open in memory, guarded by its own lock."""

    def __init__(self, writer: vault.Writer):
        self.writer = writer
        self.lock = threading.Lock()
        self.durable = writer.offset  # acknowledged: what HEAD tells while a PATCH runs


class Uploads(UploadEndings):
    """Owns every unfinished upload and turns finished ones into recordings."""

    def __init__(
        self,
        store: Store,
        keys: Keyring,
        settings: IngestSettings,
        on_progress: Callable[[str, dict], None] | None = None,
    ):
        self.store = store
        self.keys = keys
        self.settings = settings
        self.partial_dir = settings.data_dir / "uploads"
        self.vault_dir = settings.data_dir / "vault"
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.vault_dir.mkdir(parents=True, exist_ok=True)
        self._active: dict[str, _Active] = {}
        self._creating = threading.Lock()
        self._registry = threading.Lock()
        self._on_progress = on_progress or (lambda device_id, info: None)

    # -- paths and keys -----------------------------------------------------
    def partial_path(self, upload_id: str) -> Path:
        """Where an unfinished upload's encrypted bytes live."""
        return self.partial_dir / f"{upload_id}.partial"

    def _resume_path(self, upload_id: str) -> Path:
        return self.partial_dir / f"{upload_id}.resume"

    def vault_path(self, recording_id: str) -> Path:
        """Where a finished recording's vault file lives."""
        return self.vault_dir / f"{recording_id}.ebv"

    def _store_resume_key(self, upload_id: str, data_key: bytes) -> None:
        nonce = secrets.token_bytes(12)
        body = AESGCM(self.keys.ingest_key()).encrypt(nonce, data_key, upload_id.encode())
        path = self._resume_path(upload_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(nonce + body)
            handle.flush()
            os.fsync(handle.fileno())

    def _load_resume_key(self, upload_id: str) -> bytes:
        raw = self._resume_path(upload_id).read_bytes()
        try:
            return AESGCM(self.keys.ingest_key()).decrypt(raw[:12], raw[12:], upload_id.encode())
        except InvalidTag:
            raise VaultError(f"resume key of upload {upload_id} does not open") from None

    # -- lookups ------------------------------------------------------------
    def _row(self, upload_id: str, device: dict) -> dict:
        row = self.store.one("SELECT * FROM uploads WHERE id = ?", (upload_id,))
        if row is None:
            raise NotFound(f"no upload {upload_id}")
        if row["device_id"] != device["id"] and not self._same_camera_finished(row, device):
            raise IngestError("this upload belongs to another camera", status=403)
        return row

    def _same_camera_finished(self, row: dict, device: dict) -> bool:
        """A finished upload may be asked about by the same camera paired again (same
        serial): it is where a duplicate upload's answer points (edgebox.ingest.dedupe)."""
        if row["state"] != "finished":
            return False
        owner = self.store.one("SELECT serial FROM devices WHERE id = ?", (row["device_id"],))
        return owner is not None and owner["serial"] == device["serial"]

    def _active_writer(self, row: dict) -> _Active:
        with self._registry:
            active = self._active.get(row["id"])
            if active is None:
                try:
                    writer = vault.Writer.resume(
                        self.partial_path(row["id"]), self._load_resume_key(row["id"])
                    )
                except FileNotFoundError:  # ended (terminated, expired) since `row` was read
                    raise self._gone(self._fresh(row)) from None
                if row["length"] is not None:  # declared, then a crash before the header
                    writer.declare_length(row["length"])
                active = self._active[row["id"]] = _Active(writer)
            return active

    def _fresh(self, row: dict) -> dict:
        """The upload's row as it is now."""
        return self.store.one("SELECT * FROM uploads WHERE id = ?", (row["id"],)) or row

    def _open_row(self, upload_id: str, device: dict, row: dict | None = None) -> dict:
        """The row of an upload still taking bytes (`row`, if the caller has read it): 409
        once finished, 410 once ended or past its Upload-Expires (even before the expiry job
        has run)."""
        row = row or self._row(upload_id, device)
        if row["state"] == "finished" or row["concat"] == PART_DONE:
            raise IngestError("upload already complete", status=409)
        if row["state"] != "receiving":
            raise self._gone(row)
        if parse_rfc3339(row["expires_at"]) < utcnow():
            raise IngestError(f"upload {upload_id} expired at {row['expires_at']}", status=410)
        return row

    def _finished_progress(self, row: dict) -> Progress:
        rec = self.store.one(
            "SELECT id, evidence_sha256 FROM recordings WHERE upload_id = ?", (row["id"],)
        )
        return Progress(
            row["id"],
            row["length"],
            row["length"],
            row["expires_at"],
            rec["id"] if rec else None,
            rec["evidence_sha256"] if rec else None,
            True,
        )

    def _gone(self, row: dict) -> IngestError:
        return IngestError(
            f"upload {row['id']} is {row['state']}: {row['error'] or 'no longer open'}", status=410
        )

    # -- tus operations -----------------------------------------------------
    def _stored_size(self, length: int) -> int:
        """Bytes on disk of a complete vault file for `length` bytes of footage."""
        stride = self.settings.segment_size
        return length + vault.HEADER_AREA + vault.TAG * vault.segment_count(length, stride)

    def headroom(self, free: int) -> int:
        """Bytes a new upload may take when the disk has `free` bytes: less the reserve and
        what the unfinished uploads still need (their declared size less what their files
        already hold; one of deferred length holds only what it has)."""
        pending = 0
        for row in self.store.query(
            "SELECT id, length FROM uploads WHERE state = 'receiving' AND length IS NOT NULL"
        ):
            try:
                written = self.partial_path(row["id"]).stat().st_size
            except FileNotFoundError:
                written = 0
            pending += max(0, self._stored_size(row["length"]) - written)
        return free - self.settings.reserve_free_bytes - pending

    def _check_space(self, length: int, written: int = 0) -> None:
        """507 unless the disk keeps room for this upload (`length` bytes of footage, less the
        `written` bytes its file already holds) and what the unfinished ones still need (their
        declared size less what their files already hold). An upload of deferred length
        reserves nothing beyond what it holds: each of its chunks, and its length once
        declared, is checked here when it comes."""
        needed = self._stored_size(length) - written
        if self.headroom(shutil.disk_usage(self.settings.data_dir).free) < needed:
            raise IngestError(
                f"not enough free space for {length} bytes; keep the recording and retry later",
                status=507,
            )

    def create(
        self,
        device: dict,
        length_header: str | None,
        metadata_header: str | None,
        defer_header: str | None = None,
        partial: bool = False,
    ) -> Progress:
        """Start an upload (tus creation): validate everything, then write the vault header.
        With `Upload-Defer-Length: 1` instead of Upload-Length, the length comes later, in the
        Upload-Length of a PATCH (tus creation-defer-length). A `partial` upload is a part
        for a later final upload (tus concatenation): complete, it is sealed and kept, never
        a recording by itself."""
        if defer_header is not None and (defer_header != "1" or length_header is not None):
            raise IngestError(
                "Upload-Defer-Length must be 1, and only without Upload-Length",
                field="Upload-Defer-Length",
            )
        if length_header is None and defer_header is None:
            raise IngestError(
                "Upload-Length (or Upload-Defer-Length: 1) is required", field="Upload-Length"
            )
        length = None if defer_header else self._length(length_header)
        columns, raw = parse_recording_metadata(metadata_header, device["serial"])
        held = (
            None
            if length is None or partial
            else held_recording(self.store, device, length, columns)
        )
        if held is not None:  # sent before: answered with that recording, not stored twice
            return Progress(
                held["upload_id"],
                length,
                length,
                held["expires_at"],
                held["id"],
                held["evidence_sha256"],
                finished=True,
                duplicate=True,
            )
        return self.open(device, length, columns, raw, PARTIAL if partial else None)

    def _length(self, header: str) -> int:
        """A valid Upload-Length, or 400 (not a count) or 413 (past the maximum)."""
        if not is_count(header):
            raise IngestError("Upload-Length must be a non-negative integer", field="Upload-Length")
        length = int(header)
        self._check_size(length)
        return length

    def _check_size(self, length: int) -> None:
        """413 past the largest accepted recording."""
        if length > self.settings.max_upload_bytes:
            raise IngestError(
                f"recording of {length} bytes exceeds the maximum {self.settings.max_upload_bytes}",
                status=413,
            )

    def open(
        self,
        device: dict,
        length: int | None,
        columns: dict,
        raw: dict,
        concat: str | None = None,
    ) -> Progress:
        """Start an upload of `length` bytes (None: declared later) whose recording row will
        hold `columns` (already validated: the recordings columns of
        `parse_recording_metadata`, plus any other recordings column a source fills) and
        `raw` (the metadata as sent); `concat` marks a tus part. Every source of footage (tus,
        the Axis content destination, the RTSP recorder) enters the vault through here."""
        if length is not None:
            self._check_size(length)
        with self._creating:  # the space check and the new row, one creation at a time
            return self._create(device, length, columns, raw, concat)

    def _create(
        self,
        device: dict,
        length: int | None,
        columns: dict,
        raw: dict,
        concat: str | None = None,
        parts: list[str] | None = None,
    ) -> Progress:
        """Write the new upload's vault header, resume key and row (the caller holds
        `_creating`); `parts` are the part uploads a final upload joins."""
        self._check_space(self.settings.segment_size if length is None else length)
        upload_id = secrets.token_urlsafe(18)
        recording_id = uuid.uuid4().hex
        data_key = secrets.token_bytes(32)
        central_id, central_key = self.keys.central()
        review_id, review_key = self.keys.review_public()
        stanzas = [
            {
                "recipient": f"central:{central_id}",
                "type": HPKE_NAME,
                "body": base64.b64encode(
                    wrap_key(data_key, central_key, recording_id.encode())
                ).decode(),
            },
            {
                "recipient": f"review:{review_id}",
                "type": HPKE_NAME,
                "body": base64.b64encode(
                    wrap_key(data_key, review_key, recording_id.encode())
                ).decode(),
            },
        ]
        now = utcnow()
        header = vault.new_header(
            recording_id=recording_id,
            device_id=device["id"],
            plaintext_size=length,
            data_key=data_key,
            stanzas=stanzas,
            suite=self.settings.suite,
            segment_size=self.settings.segment_size,
            created_at=iso(now),
            extra={"serial": device["serial"], "camera_sha256": columns["camera_sha256"]},
        )
        expires = iso(now + dt.timedelta(hours=self.settings.expire_hours))
        self._store_resume_key(upload_id, data_key)
        try:
            writer = vault.Writer.create(self.partial_path(upload_id), header, data_key)
        except OSError as exc:
            self._discard_files(upload_id)
            raise disk_error(exc) from None
        with self.store.write() as db:
            db["uploads"].insert(
                {
                    "id": upload_id,
                    "device_id": device["id"],
                    "recording_id": recording_id,
                    "length": length,
                    "metadata": json.dumps(
                        {"columns": columns, "raw": raw, **({"parts": parts} if parts else {})}
                    ),
                    "concat": concat,
                    "state": "receiving",
                    "created_at": iso(now),
                    "updated_at": iso(now),
                    "expires_at": expires,
                }
            )
            custody.append(
                db,
                "upload.started",
                f"device:{device['id']}",
                recording_id,
                {
                    "upload_id": upload_id,
                    "length": length,
                    "filename": columns["filename"],
                    **({"length_deferred": True} if length is None else {}),
                    **({"concat": concat} if concat else {}),
                    **({"parts": parts} if parts else {}),
                },
            )
        with self._registry:
            self._active[upload_id] = _Active(writer)
        progress = Progress(upload_id, 0, length, expires)
        if length == 0:
            return self._complete(self._row(upload_id, device), self._active[upload_id], device)
        return progress

    def head(self, upload_id: str, device: dict) -> Progress:
        """The upload's current offset (after a crash: the last durable segment boundary)."""
        row = self._row(upload_id, device)
        progress = self._head(row, device)
        if row["concat"] in (PARTIAL, PART_DONE):
            progress.concat = "partial"
        elif row["concat"] == FINAL:
            parts = json.loads(row["metadata"]).get("parts", [])
            progress.concat = "final;" + " ".join(f"/tus/{part}" for part in parts)
        return progress

    def _head(self, row: dict, device: dict) -> Progress:
        upload_id = row["id"]
        if row["state"] == "finished":
            return self._finished_progress(row)
        if row["concat"] == PART_DONE and row["state"] == "receiving":
            return Progress(upload_id, row["length"], row["length"], row["expires_at"])
        self._open_row(upload_id, device, row)
        active = self._active_writer(row)
        if not active.lock.acquire(blocking=False):  # a PATCH is running: never wait for it
            return Progress(upload_id, active.durable, row["length"], row["expires_at"])
        try:
            if active.writer.offset == row["length"]:  # every byte, but the finish failed
                return self._complete(row, active, device)
            return Progress(upload_id, active.writer.offset, row["length"], row["expires_at"])
        finally:
            active.lock.release()

    def append(
        self,
        upload_id: str,
        device: dict,
        offset_header: str | None,
        content_length: int | None,
        stream,
        checksum_header: str | None = None,
        length_header: str | None = None,
        before_finish: Callable[[], None] | None = None,
    ) -> Progress:
        """Stream one PATCH body into the vault; a checksum mismatch undoes the whole chunk.

        `content_length` None means a chunked body: it is read to its end, and bytes
        past Upload-Length undo the chunk (413). `length_header` declares the length of a
        deferred-length upload (again the same value later is accepted, another refused).
        `before_finish`, called once every byte is in, may raise an IngestError to refuse the
        whole upload (it is then discarded).
        """
        row = self._open_row(upload_id, device)
        if offset_header is None or not is_count(offset_header):
            raise IngestError("Upload-Offset must be a non-negative integer", field="Upload-Offset")
        checker = checksum(checksum_header)
        active = self._active_writer(row)
        if not active.lock.acquire(blocking=False):
            raise IngestError("another request is writing this upload", status=409)
        try:
            row = self._fresh(row)
            if row["state"] != "receiving":  # ended while this request waited for the writer
                raise self._gone(row)
            writer = active.writer
            if int(offset_header) != writer.offset:
                raise IngestError(
                    f"Upload-Offset {offset_header} does not match the upload's offset "
                    f"{writer.offset}",
                    status=409,
                )
            if length_header is not None:
                row = self._declare(row, active, length_header)
            if row["length"] is None:
                self._check_chunk_room(writer, content_length)
            cap = self.settings.max_upload_bytes if row["length"] is None else row["length"]
            remaining = cap - writer.offset
            if content_length is not None and content_length > remaining:
                discard_body(stream, content_length)
                raise IngestError("chunk goes past Upload-Length", status=413)
            if checker is not None and (content_length or 0) > writer.hold_limit:
                discard_body(stream, content_length)
                raise IngestError(
                    f"a chunk with Upload-Checksum may carry at most {writer.hold_limit} bytes",
                    status=413,
                )
            mark = writer.mark(hold=checker is not None)
            try:
                self._take_chunk(writer, stream, content_length, checker, cap)
            except BaseException:  # nothing of a chunk that failed stays, whatever failed
                self._roll_back(upload_id, writer, mark)
                raise
            active.durable = writer.offset
            expires = self._extend_expiry(row)
            self._on_progress(
                device["id"],
                {"upload_id": upload_id, "offset": writer.offset, "length": row["length"]},
            )
            if writer.offset == row["length"]:
                return self._complete(row, active, device, before_finish)
            return Progress(upload_id, writer.offset, row["length"], expires)
        finally:
            active.lock.release()

    def _declare(self, row: dict, active: _Active, header: str) -> dict:
        """Take the Upload-Length of a deferred-length upload: checked against the bytes taken,
        the maximum and the free space, stored in the row, then in the vault header."""
        length = self._length(header)
        if row["length"] is not None:
            if length != row["length"]:
                raise IngestError(
                    f"Upload-Length is already {row['length']}; it cannot change",
                    field="Upload-Length",
                )
            return row
        writer = active.writer
        if length < writer.offset:
            raise IngestError(
                f"Upload-Length {length} is below the {writer.offset} bytes already received",
                field="Upload-Length",
            )
        with self._creating:  # the space check and the declared length, one at a time
            self._check_space(length, self._stored_size(writer.offset))
            with self.store.write() as db:
                db.execute("UPDATE uploads SET length = ? WHERE id = ?", [length, row["id"]])
                custody.append(
                    db,
                    "upload.length_declared",
                    f"device:{row['device_id']}",
                    row["recording_id"],
                    {"upload_id": row["id"], "length": length},
                )
        try:
            writer.declare_length(length)
        except OSError as exc:  # the row holds it: the next request declares it again
            with self._registry:
                self._active.pop(row["id"], None)
            writer.close()
            raise disk_error(exc) from None
        return {**row, "length": length}

    def _check_chunk_room(self, writer: vault.Writer, content_length: int | None) -> None:
        """507 unless a chunk of a deferred-length upload fits (a chunked body: one segment)."""
        chunk = self.settings.segment_size if content_length is None else content_length
        with self._creating:
            self._check_space(writer.offset + chunk, self._stored_size(writer.offset))

    def _extend_expiry(self, row: dict) -> str:
        """Push the expiry forward, writing the row only when it moves by a minute or more."""
        moment = utcnow() + dt.timedelta(hours=self.settings.expire_hours)
        if moment - parse_rfc3339(row["expires_at"]) < EXPIRY_STEP:
            return row["expires_at"]
        expires = iso(moment)
        with self.store.write() as db:
            db.execute(
                "UPDATE uploads SET updated_at = ?, expires_at = ? WHERE id = ?",
                [iso(), expires, row["id"]],
            )
        return expires

    def _roll_back(self, upload_id: str, writer: vault.Writer, mark: vault.Mark) -> None:
        """Undo a chunk; if even that fails, forget the writer: the next request resumes the
        upload from what the disk holds."""
        try:
            writer.rollback(mark)
        except BaseException:
            with self._registry:
                self._active.pop(upload_id, None)
            writer.close()
            raise

    def _take_chunk(
        self, writer: vault.Writer, stream, length: int | None, checker, cap: int
    ) -> None:
        """Store one PATCH body durably, or raise (the caller then rolls the chunk back)."""
        received = self._pump(writer, stream, length, checker, cap)
        if checker is not None:
            if length is not None and received < length:
                raise IngestError("chunk interrupted; its checksum cannot be verified", status=460)
            if checker[1].digest() != checker[0]:
                raise IngestError("Upload-Checksum does not match the chunk", status=460)
        try:
            writer.sync()
        except OSError as exc:
            raise disk_error(exc) from None

    def _pump(self, writer: vault.Writer, stream, length: int | None, checker, cap: int) -> int:
        """Copy the body into the writer; `length` None means a chunked body read to its end,
        refused (413) once it passes `cap` bytes of recording.

        A client that vanishes mid-body ends the body: what arrived is kept (tus allows it),
        except in a chunked body, whose broken framing cheroot raises as an error (the chunk
        is then rolled back). A storage error is raised as an IngestError (507 for a full
        disk).
        """
        received = 0
        while length is None or received < length:
            try:
                block = stream.read(
                    READ_BLOCK if length is None else min(READ_BLOCK, length - received)
                )
            except OSError:
                break
            if not block:
                break
            if writer.offset + len(block) > cap:
                raise IngestError("chunk goes past Upload-Length or the maximum size", status=413)
            if checker is not None:
                checker[1].update(block)
            try:
                writer.write(block, handed_over=True)  # each read returns a new buffer
            except OSError as exc:
                raise disk_error(exc) from None
            received += len(block)
        return received

    def _complete(
        self, row: dict, active: _Active, device: dict, before_finish: Callable | None = None
    ) -> Progress:
        """Every byte is in: a part is sealed and kept for its final upload, any other upload
        becomes a recording."""
        if row["concat"] == PARTIAL:
            return self._complete_part(row, active, device)
        return self._finish(row, active, device, before_finish)

    def _complete_part(self, row: dict, active: _Active, device: dict) -> Progress:
        """Seal a complete part where it is (its resume key stays: the final upload reads the
        part with it), and mark it complete; it becomes no recording."""
        try:
            summary = active.writer.finish(self.partial_path(row["id"]))
        except OSError as exc:  # not sealed, nothing lost: an empty PATCH at the end retries
            raise disk_error(exc) from None
        with self._registry:
            self._active.pop(row["id"], None)
        with self.store.write() as db:
            db.execute(
                "UPDATE uploads SET concat = ?, updated_at = ? WHERE id = ?",
                [PART_DONE, iso(), row["id"]],
            )
            custody.append(
                db,
                "upload.part_complete",
                f"device:{device['id']}",
                row["recording_id"],
                {"upload_id": row["id"], "size": summary.size, "sha256": summary.evidence_sha256},
            )
        return Progress(row["id"], row["length"], row["length"], row["expires_at"])

    def _finish(
        self, row: dict, active: _Active, device: dict, before_finish: Callable | None = None
    ) -> Progress:
        writer = active.writer
        if before_finish is not None:
            try:
                before_finish()
            except IngestError as exc:
                self._fail(row, device, exc.message)
                raise
        columns = json.loads(row["metadata"])["columns"]
        evidence = writer.plaintext_sha256()
        if columns["camera_sha256"] and columns["camera_sha256"] != evidence:
            self._fail(
                row,
                device,
                f"file sha256 {evidence} does not match the camera's {columns['camera_sha256']}",
            )
            raise IngestError(
                "the received file does not match the camera's sha256; "
                "the upload was discarded, upload again",
                status=460,
                field="sha256",
            )
        try:
            summary = writer.finish(self.vault_path(row["recording_id"]))
        except OSError as exc:  # not finished, nothing lost: an empty PATCH at the end retries
            raise disk_error(exc) from None
        self._record(row, device, summary)
        with self._registry:
            self._active.pop(row["id"], None)
        self._resume_path(row["id"]).unlink(missing_ok=True)
        return Progress(
            row["id"],
            row["length"],
            row["length"],
            row["expires_at"],
            row["recording_id"],
            summary.evidence_sha256,
            True,
        )

    def _record(self, row: dict, device: dict, summary: vault.Summary) -> None:
        meta = json.loads(row["metadata"])
        now = iso()
        with self.store.write() as db:
            self._consume_parts(db, meta.get("parts", []), now)
            db["recordings"].insert(
                {
                    "id": row["recording_id"],
                    "upload_id": row["id"],
                    "device_id": device["id"],
                    **meta["columns"],
                    "evidence_sha256": summary.evidence_sha256,
                    "stored_sha256": summary.stored_sha256,
                    "size": summary.size,
                    "stored_size": summary.stored_size,
                    "vault_file": self.vault_path(row["recording_id"]).name,
                    "metadata": json.dumps(meta["raw"], sort_keys=True),
                    "received_at": now,
                }
            )
            db.execute(
                "UPDATE uploads SET state = 'finished', updated_at = ? WHERE id = ?",
                [now, row["id"]],
            )
            custody.append(
                db,
                "recording.ingested",
                f"device:{device['id']}",
                row["recording_id"],
                {
                    "upload_id": row["id"],
                    "evidence_sha256": summary.evidence_sha256,
                    "stored_sha256": summary.stored_sha256,
                    "size": summary.size,
                    "camera_sha256": meta["columns"]["camera_sha256"],
                },
            )
            db["outbox"].insert(
                {
                    "kind": "recording",
                    "ref": row["recording_id"],
                    "priority": 100,
                    "payload": "{}",
                    "created_at": now,
                }
            )

    def _consume_parts(self, db, parts: list[str], now: str) -> None:
        """Mark a final upload's parts used, in the transaction that records it: a part ended
        meanwhile (terminated, expired, used by another final) aborts the recording."""
        for part in parts:
            used = db.execute(
                "UPDATE uploads SET state = 'finished', updated_at = ? "
                "WHERE id = ? AND state = 'receiving' AND concat = ?",
                [now, part, PART_DONE],
            ).rowcount
            if not used:
                raise IngestError(f"part {part} ended before the final upload", status=410)

    def in_progress(self) -> list[dict]:
        """Unfinished uploads with their live offsets (for status and the dashboard)."""
        rows = self.store.query(
            "SELECT u.id, u.device_id, u.length, u.created_at, u.updated_at, d.serial "
            "FROM uploads u JOIN devices d ON d.id = u.device_id WHERE u.state = 'receiving'"
        )
        for row in rows:
            active = self._active.get(row["id"])
            row["offset"] = active.writer.offset if active else None
        return rows
