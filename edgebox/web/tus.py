"""The tus 1.0.0 endpoint (core, creation, checksum, termination, expiration) at /tus/."""

from __future__ import annotations

import email.utils

from cheroot.server import ChunkedRFile, KnownLengthRFile
from flask import Blueprint, Response, current_app, request

from edgebox.clock import parse_rfc3339
from edgebox.errors import IngestError
from edgebox.ingest.uploads import CHECKSUMS, Progress
from edgebox.web import TUS_VERSION

tus = Blueprint("tus", __name__, url_prefix="/tus")


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
            "Tus-Extension": "creation,checksum,termination,expiration",
            "Tus-Max-Size": str(_box().config.ingest.max_upload_bytes),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
        }
    )
    return response


@tus.route("/", methods=["POST"], strict_slashes=False)
def create():
    """tus creation: a new upload for the authenticated camera."""
    _require_version()
    device = _device()
    if request.content_length:
        raise IngestError("creation-with-upload is not supported; send the bytes with PATCH")
    progress = _box().uploads.create(
        device, request.headers.get("Upload-Length"), request.headers.get("Upload-Metadata")
    )
    response = _progress_response(progress, 201)
    response.headers["Location"] = f"/tus/{progress.upload_id}"
    return response


@tus.route("/<upload_id>", methods=["HEAD"])
def head(upload_id: str):
    """The upload's offset and length."""
    _require_version()
    progress = _box().uploads.head(upload_id, _device())
    response = _progress_response(progress, 200)
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
