"""tus concatenation: parts uploaded in parallel, joined by a final upload into one recording.

A part (`Upload-Concat: partial`) is an ordinary upload that, once complete, is sealed in
place under its own data key and kept: it is never a recording, has no recording metadata
and expires like any unfinished upload. The final upload (`Upload-Concat: final;URL URL..`)
names complete parts of the same camera; the box decrypts them in order, in memory, into
one new vault file with the final request's metadata, so the recording has one data key,
one evidence hash (of the whole plaintext) and one custody trail. The parts are marked used
in the transaction that records it, and their files removed after it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from edgebox import vault
from edgebox.errors import EdgeboxError, IngestError
from edgebox.ingest.metadata import parse_recording_metadata
from edgebox.ingest.uploads import Progress, Uploads
from edgebox.ingest.wire import FINAL, PART_DONE

MAX_PARTS = 64
_PART_PATH = re.compile(r"^/tus/([A-Za-z0-9_-]{1,64})$")


def parse_concat(header: str) -> list[str] | None:
    """None for `partial`; the part upload ids for `final;URL URL ...`; else 400."""
    value = header.strip()
    if value == "partial":
        return None
    kind, _, urls = value.partition(";")
    if kind.strip() != "final":
        raise IngestError(
            "Upload-Concat must be 'partial' or 'final;<part URLs>'", field="Upload-Concat"
        )
    ids = []
    for url in urls.split():
        match = _PART_PATH.match(urlsplit(url).path)
        if match is None:
            raise IngestError(f"{url[:80]!r} is not an upload of this box", field="Upload-Concat")
        ids.append(match.group(1))
    if not ids or len(ids) > MAX_PARTS or len(set(ids)) != len(ids):
        raise IngestError(
            f"a final upload names 1 to {MAX_PARTS} different parts", field="Upload-Concat"
        )
    return ids


def join(uploads: Uploads, device: dict, part_ids: list[str], metadata_header) -> Progress:
    """Create the final upload of `part_ids` and fill it from them: one recording, or an error
    that leaves the parts as they were (so the camera may send the final again)."""
    parts = [uploads._row(part_id, device) for part_id in part_ids]  # 404, or 403: not yours
    for row in parts:
        if row["state"] != "receiving" or row["concat"] != PART_DONE:
            raise IngestError(
                f"upload {row['id']} is not a complete part (Upload-Concat: partial)",
                field="Upload-Concat",
            )
    length = sum(row["length"] for row in parts)
    if length > uploads.settings.max_upload_bytes:
        raise IngestError(
            f"recording of {length} bytes exceeds the maximum {uploads.settings.max_upload_bytes}",
            status=413,
        )
    columns, raw = parse_recording_metadata(metadata_header, device["serial"])
    with uploads._creating:
        progress = uploads._create(device, length, columns, raw, FINAL, part_ids)
    if progress.finished:  # every part was empty
        _drop_parts(uploads, part_ids)
        return progress
    final = uploads._row(progress.upload_id, device)
    active = uploads._active[final["id"]]
    with active.lock:
        try:
            for row in parts:
                key = uploads._load_resume_key(row["id"])
                reader = vault.Reader(uploads.partial_path(row["id"]), key)
                for block in reader.read_range(0, row["length"]):
                    active.writer.write(block)
            progress = uploads._finish(final, active, device)
        except (EdgeboxError, OSError) as exc:
            _give_up(uploads, final, device, exc)
            raise _as_ingest_error(exc) from None
    _drop_parts(uploads, part_ids)
    return progress


def _give_up(uploads: Uploads, final: dict, device: dict, exc: Exception) -> None:
    """End a final upload that could not be joined; its parts stay for another try."""
    reason = getattr(exc, "message", None) or str(exc)
    try:
        uploads._fail(final, device, f"joining the parts failed: {reason}")
    except IngestError:  # already ended (e.g. the sha256 check failed it)
        pass
    if uploads.store.one("SELECT id FROM recordings WHERE id = ?", (final["recording_id"],)):
        return  # recorded before the failure (a clean-up step failed): it is evidence now
    uploads.vault_path(final["recording_id"]).unlink(missing_ok=True)


def _as_ingest_error(exc: Exception) -> EdgeboxError:
    if isinstance(exc, EdgeboxError):
        return exc
    if getattr(exc, "errno", None) in (28, 122):
        return IngestError("the box's disk is full; keep the recording and retry later", status=507)
    return IngestError(f"joining the parts failed: {exc}", status=500)


def _drop_parts(uploads: Uploads, part_ids: list[str]) -> None:
    """Remove the files of parts a recording now holds (their rows say 'finished')."""
    for part_id in part_ids:
        uploads._discard_files(part_id)
