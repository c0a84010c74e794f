"""The Swift subset of the Axis Body Worn Integration API: `GET /auth/v1.0` and, under the
storage URL `/v1/AUTH_<account>`, PUT/POST/HEAD containers and PUT/POST/GET/HEAD objects.

Errors keep the box's JSON body (with the reason) and the spec's status codes: 400 content
the box will never accept, 401 bad login or token, 403 not allowed, 404 unknown, 411 no
Content-Length, 422 ETag mismatch (Swift's own), 503 busy (Retry-After), 507 full.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from edgebox.axis.documents import etag
from edgebox.axis.names import meta_headers, read_meta
from edgebox.errors import EdgeboxError, IngestError
from edgebox.ingest.wire import DRAIN_LIMIT, discard_body
from edgebox.scheduler import refused_for_room
from edgebox.storage import RETRY_AFTER_FULL_SECONDS
from edgebox.web.tus import request_body_stream

swift = Blueprint("swift", __name__)
CONTAINER_META, OBJECT_META = "X-Container-Meta-", "X-Object-Meta-"
RETRY_AFTER = {503: "10", 507: str(RETRY_AFTER_FULL_SECONDS)}


def _axis():
    box = current_app.extensions["edgebox"]
    if not box.config.axis.enabled:
        raise IngestError("the Axis content destination is disabled on this box", status=404)
    return box.axis


@swift.errorhandler(EdgeboxError)
def _error(exc: EdgeboxError):
    """The box's JSON error; a refused PUT's unread body is drained first so the answer
    reaches a client that is still sending."""
    if request.method == "PUT" and request.content_length:
        discard_body(request_body_stream(), min(request.content_length, DRAIN_LIMIT))
    response = jsonify(exc.to_dict())
    response.status = exc.status
    if exc.status in RETRY_AFTER:
        response.headers["Retry-After"] = RETRY_AFTER[exc.status]
    if exc.status == 507:
        refused_for_room(current_app.extensions["edgebox"])
    return response


@swift.get("/auth/v1.0")
@swift.get("/auth/v1.0/")
def auth():
    """Swift v1 auth: X-Auth-User / X-Auth-Key -> X-Auth-Token and X-Storage-Url."""
    accounts = _axis().accounts
    user = request.headers.get("X-Auth-User") or request.headers.get("X-Storage-User")
    key = request.headers.get("X-Auth-Key") or request.headers.get("X-Storage-Pass")
    token = accounts.login(user, key, request.remote_addr or "")
    response = Response(status=200)
    response.headers["X-Auth-Token"] = token
    response.headers["X-Storage-Token"] = token
    response.headers["X-Auth-Token-Expires"] = str(accounts.token_seconds)
    response.headers["X-Storage-Url"] = f"{request.host_url}v1/AUTH_{user}"
    return response


def _account(account: str) -> str:
    """The token's account, which must be the one in the URL (403 otherwise)."""
    holder = _axis().accounts.account_for(request.headers.get("X-Auth-Token"))
    if holder != account:
        raise IngestError("this token is for another account", status=403)
    return holder


@swift.route("/v1/AUTH_<account>/<container>", methods=["PUT", "POST", "HEAD"])
def container(account: str, container: str):
    """Create (PUT), update (POST) or read (HEAD) a container and its metadata."""
    account = _account(account)
    axis = _axis()
    if request.method == "HEAD":
        info = axis.head_container(container)
        response = Response(status=204)
        response.headers.update(meta_headers(info["metadata"], CONTAINER_META))
        response.headers["X-Container-Object-Count"] = str(info["objects"])
        response.headers["X-Container-Bytes-Used"] = str(info["bytes"])
        return response
    meta = read_meta(request.headers, CONTAINER_META)
    if request.method == "PUT":
        return Response(status=axis.put_container(account, container, meta))
    axis.post_container(account, container, meta)
    return Response(status=204)


@swift.route("/v1/AUTH_<account>/<container>/<path:name>", methods=["PUT", "POST", "GET", "HEAD"])
def obj(account: str, container: str, name: str):
    """Store (PUT), re-describe (POST) or read (GET System/ only, HEAD) an object."""
    account = _account(account)
    axis = _axis()
    if request.method == "PUT":
        stored = axis.put_object(
            account,
            container,
            name,
            read_meta(request.headers, OBJECT_META),
            request.content_length,
            request_body_stream(),
            request.headers.get("ETag"),
        )
        response = Response(status=stored.status)
        response.headers["ETag"] = stored.etag
        return response
    if request.method == "POST":
        axis.post_object(account, container, name, read_meta(request.headers, OBJECT_META))
        return Response(status=202)
    if request.method == "HEAD":
        info = axis.head_object(container, name)
        response = Response(status=200)
        response.headers["Content-Length"] = str(info["size"])
        response.headers["ETag"] = info["etag"]
        response.headers.update(meta_headers(info["metadata"], OBJECT_META))
        return response
    body, meta = axis.get_object(container, name)
    response = Response(body, status=200, mimetype=_mimetype(name))
    response.headers["ETag"] = etag(body)
    response.headers.update(meta_headers(meta, OBJECT_META))
    return response


def _mimetype(name: str) -> str:
    return "application/json" if name.endswith(".json") else "application/octet-stream"
