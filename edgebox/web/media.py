"""Playback for supervisors: decrypted on the fly from the vault, with HTTP Range, never on disk."""

from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, request

from edgebox import pictures, vault
from edgebox.catalog import detail
from edgebox.errors import EdgeboxError
from edgebox.recordings import data_key_for
from edgebox.web.auth import current_user, require

media = Blueprint("media", __name__, url_prefix="/api/v1")
_RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")  # 18 digits: past any real size


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end exclusive) of a single `bytes=` range, None for the whole file, or 416."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match or match.groups() == ("", ""):
        raise EdgeboxError("only one bytes=START-END range is supported", status=416)
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size
    else:
        start = int(first)
        end = min(size, int(last) + 1) if last else size
    if start >= size or start >= end:
        raise EdgeboxError(f"range outside the {size}-byte recording", status=416)
    return start, end


def _open(box, user: dict, recording_id: str):
    """The recording's row and a reader of its plaintext, for a user whose review is unlocked."""
    rec = detail(box.store, recording_id)
    if rec["sealed"]:
        raise EdgeboxError(
            "sealed after central confirmed its copy; review it at central", status=409
        )
    path = box.uploads.vault_path(recording_id)
    return rec, vault.Reader(path, data_key_for(path, box.review.key_for(user)))


def _cache(box) -> pictures.PictureCache:
    return current_app.extensions.setdefault(
        "edgebox.pictures", pictures.PictureCache(box.config.ui.picture_cache_mb * 1024 * 1024)
    )


@media.get("/recordings/<recording_id>/poster.jpg")
@require("supervisor")
def poster(recording_id: str):
    """The recording's poster: the frame at the trigger, as JPEG (review unlocked)."""
    return _picture(recording_id, "poster")


@media.get("/recordings/<recording_id>/strip.jpg")
@require("supervisor")
def strip(recording_id: str):
    """Thumbnails along the recording in one JPEG, 4 across and 2 down (review unlocked)."""
    return _picture(recording_id, "strip")


def _picture(recording_id: str, kind: str):
    """Made in memory from the encrypted footage, or held from an earlier look; every first
    look per unlock is logged in custody."""
    from edgebox.web.words import length_seconds

    box, user = current_app.extensions["edgebox"], current_user()
    rec, reader = _open(box, user, recording_id)
    if kind == "poster":
        make = lambda: pictures.poster(reader, rec["pre_event_seconds"] or 0)  # noqa: E731
    else:
        make = lambda: pictures.strip(reader, length_seconds(rec))  # noqa: E731
    made = _cache(box).get((recording_id, kind), make)
    box.review.viewed(user, recording_id, kind)
    response = Response(made, mimetype="image/jpeg")
    response.headers["Cache-Control"] = "private, no-store"
    return response


@media.get("/recordings/<recording_id>/media")
@require("supervisor")
def play(recording_id: str):
    """Stream the decrypted recording (or the asked byte range)."""
    box, user = current_app.extensions["edgebox"], current_user()
    _, reader = _open(box, user, recording_id)
    size = reader.header.plaintext_size
    wanted = parse_range(request.headers.get("Range"), size)
    start, end = wanted or (0, size)
    box.review.viewed(user, recording_id)
    response = Response(
        reader.read_range(start, end),
        status=206 if wanted else 200,
        mimetype="video/mp4",
        direct_passthrough=True,
    )
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Content-Length"] = str(end - start)
    response.headers["Cache-Control"] = "no-store"
    if wanted:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return response
