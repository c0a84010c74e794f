"""The tus 1.0.0 endpoint at /tus/: core, creation, creation-with-upload, creation-defer-length,
checksum, concatenation (parts are never recordings; see edgebox.ingest.concat), termination,
expiration."""

from __future__ import annotations

import email.utils

from cheroot.server import ChunkedRFile, KnownLengthRFile
from flask import Blueprint, Response, current_app, g, request

from edgebox.clock import parse_rfc3339
from edgebox.errors import EdgeboxError, IngestError
from edgebox.ingest.concat import join, parse_concat
from edgebox.ingest.uploads import Progress
from edgebox.ingest.wire import CHECKSUMS, discard_body
from edgebox.web import TUS_VERSION

tus = Blueprint("tus", __name__, url_prefix="/tus")


EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "checksum",
    "concatenation",
    "termination",
    "expiration",
)
OVERRIDABLE = frozenset({"POST", "HEAD", "PATCH", "DELETE", "OPTIONS"})


def honour_method_override(wsgi_app):
    """WSGI middleware: under /tus/, X-HTTP-Method-Override is the request's method (tus 1.0.0
    core, for clients behind proxies that pass only GET and POST)."""

    def app(environ, start_response):
        override = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").strip().upper()
        if override in OVERRIDABLE and environ.get("PATH_INFO", "").startswith("/tus"):
            environ["REQUEST_METHOD"] = override
        return wsgi_app(environ, start_response)

    return app


def _box():
    return current_app.extensions["edgebox"]


def _device() -> dict:
    return _box().pairing.authenticate(request.headers.get("Authorization"))


def _require_version() -> None:
    version = request.headers.get("Tus-Resumable")
    if version != TUS_VERSION:
        response = Response(status=412)
        response.headers["Tus-Version"] = TUS_VERSION
        response.headers["Tus-Resumable"] = TUS_VERSION
        raise _Abort(response)


class _Abort(Exception):
    def __init__(self, response: Response):
        self.response = response


@tus.errorhandler(_Abort)
def _abort(exc: _Abort):
    return exc.response


def _http_date(rfc3339: str) -> str:
    return email.utils.format_datetime(parse_rfc3339(rfc3339), usegmt=True)


def _progress_response(progress: Progress, status: int) -> Response:
    response = Response(status=status)
    response.headers["Tus-Resumable"] = TUS_VERSION
    response.headers["Upload-Offset"] = str(progress.offset)
    response.headers["Cache-Control"] = "no-store"
    if not progress.finished:
        response.headers["Upload-Expires"] = _http_date(progress.expires_at)
    if progress.recording_id:
        response.headers["EdgeBox-Recording-Id"] = progress.recording_id
        response.headers["EdgeBox-Evidence-Sha256"] = progress.evidence_sha256 or ""
    return response


@tus.route("/", methods=["OPTIONS"], strict_slashes=False)
def options():
    """Advertise the protocol version, extensions, checksum algorithms and maximum size."""
    response = Response(status=204)
    response.headers.update(
        {
            "Tus-Resumable": TUS_VERSION,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": ",".join(EXTENSIONS),
            "Tus-Max-Size": str(_box().config.ingest.max_upload_bytes),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
        }
    )
    return response


@tus.route("/", methods=["POST"], strict_slashes=False)
def create():
    """tus creation: a new upload for the authenticated camera; with a body, its first bytes
    too (creation-with-upload); a part (`Upload-Concat: partial`), or the final upload that
    joins parts into one recording (concatenation)."""
    _require_version()
    device = _device()
    concat = request.headers.get("Upload-Concat")
    parts = parse_concat(concat) if concat is not None else None
    with_body = _has_body()
    uploads = _box().uploads
    if parts is not None:  # a final upload: its bytes are its parts'
        if with_body or "Upload-Length" in request.headers:
            raise IngestError(
                "a final upload carries no body and no Upload-Length", field="Upload-Concat"
            )
        progress = join(uploads, device, parts, request.headers.get("Upload-Metadata"))
        response = _progress_response(progress, 201)
        response.headers["Location"] = f"/tus/{progress.upload_id}"
        return response
    if with_body and request.mimetype != "application/offset+octet-stream":
        raise IngestError("Content-Type must be application/offset+octet-stream", status=415)
    progress = uploads.create(
        device,
        request.headers.get("Upload-Length"),
        request.headers.get("Upload-Metadata"),
        request.headers.get("Upload-Defer-Length"),
        partial=concat is not None,
    )
    location = f"/tus/{progress.upload_id}"
    if with_body and progress.duplicate:  # nothing to take: read it so the answer arrives
        discard_body(request_body_stream(), request.content_length or 0)
    elif with_body and not progress.finished:
        try:
            progress = uploads.append(
                progress.upload_id,
                device,
                "0",
                request.content_length,
                request_body_stream(),
                request.headers.get("Upload-Checksum"),
            )
        except EdgeboxError:
            g.tus_location = location  # the upload exists: the client may resume it
            raise
    # 200, not 201, when the camera sent this clip before: nothing new was created, and
    # Location, Upload-Offset and the evidence headers describe the recording already held.
    response = _progress_response(progress, 200 if progress.duplicate else 201)
    response.headers["Location"] = location
    if progress.duplicate:
        response.headers["EdgeBox-Duplicate"] = "true"
    return response


def _has_body() -> bool:
    """Whether the request carries a body (a Content-Length above 0, or a chunked one)."""
    if request.content_length is not None:
        return request.content_length > 0
    return bool(request.environ.get("wsgi.input_terminated"))


@tus.route("/<upload_id>", methods=["HEAD"])
def head(upload_id: str):
    """The upload's offset and length."""
    _require_version()
    progress = _box().uploads.head(upload_id, _device())
    response = _progress_response(progress, 200)
    if progress.concat:
        response.headers["Upload-Concat"] = progress.concat
    if progress.length is None:
        response.headers["Upload-Defer-Length"] = "1"
    else:
        response.headers["Upload-Length"] = str(progress.length)
    return response


@tus.route("/<upload_id>", methods=["PATCH"])
def patch(upload_id: str):
    """Append the request body at Upload-Offset, streaming it into the vault."""
    _require_version()
    device = _device()
    if request.mimetype != "application/offset+octet-stream":
        raise IngestError("Content-Type must be application/offset+octet-stream", status=415)
    if request.content_length is None and not request.environ.get("wsgi.input_terminated"):
        raise IngestError("Content-Length or chunked transfer encoding is required", status=411)
    progress = _box().uploads.append(
        upload_id,
        device,
        request.headers.get("Upload-Offset"),
        request.content_length,
        request_body_stream(),
        request.headers.get("Upload-Checksum"),
        request.headers.get("Upload-Length"),
    )
    return _progress_response(progress, 204)


def request_body_stream():
    """The request body as the server hands it over, already bounded by Content-Length or by
    the chunked encoding (cheroot's own readers, so each block is read once, not re-buffered
    and copied twice by werkzeug's generic wrapper)."""
    raw = request.environ["wsgi.input"]
    return raw if isinstance(raw, (KnownLengthRFile, ChunkedRFile)) else request.stream


@tus.route("/<upload_id>", methods=["DELETE"])
def delete(upload_id: str):
    """tus termination of an unfinished upload."""
    _require_version()
    _box().uploads.terminate(upload_id, _device())
    response = Response(status=204)
    response.headers["Tus-Resumable"] = TUS_VERSION
    return response
