"""The JSON API under /api/v1: everything the pages show and do (see /api/openapi.json)."""

from __future__ import annotations

import segno
from flask import Blueprint, current_app, jsonify, request

from edgebox import catalog, custody
from edgebox.errors import EdgeboxError, IngestError
from edgebox.keys import certificate_fingerprint
from edgebox.web.auth import current_user, require

api = Blueprint("api", __name__, url_prefix="/api/v1")


def _box():
    return current_app.extensions["edgebox"]


@api.post("/cameras/enroll")
def enroll():
    """Exchange a one-time pairing code for a device id and bearer token."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise IngestError("body must be a JSON object with code, serial and model")
    missing = [k for k in ("code", "serial", "model") if k not in body]
    if missing:
        raise IngestError(f"missing field {missing[0]}", field=missing[0])
    pairing = _box().pairing
    client = request.remote_addr or "unknown"
    return jsonify(pairing.enroll(body["code"], body["serial"], body["model"], client)), 201


@api.get("/health")
def health():
    """Liveness: the box process answers and knows who it is."""
    return jsonify({"ok": True, "box_id": _box().config.box.box_id})


@api.get("/recordings")
@require()
def recordings():
    """Recordings newest first, filtered (from, to, camera, user, category, incident, sync, gap,
    hold) and paged (limit, cursor)."""
    box = _box()
    minimum = box.config.compliance.min_pre_event_seconds
    return jsonify(catalog.search(box.store, request.args.to_dict(), minimum))


@api.get("/recordings/<recording_id>")
@require()
def recording(recording_id: str):
    """One recording: metadata, evidence hash, custody trail, sync state."""
    return jsonify(catalog.detail(_box().store, recording_id))


@api.post("/recordings/<recording_id>/tags")
@require("crew", "supervisor")
def tag(recording_id: str):
    """Set incident number, category, warned or the exemption reason, and notes."""
    return jsonify(catalog.tag(_box().store, recording_id, _body(), _actor()))


@api.post("/recordings/<recording_id>/hold")
@require("supervisor")
def hold(recording_id: str):
    """Place (`{"hold": true}`) or lift a legal hold, with a reason."""
    body = _body()
    if not isinstance(body.get("hold"), bool):
        raise EdgeboxError("hold must be true or false", status=400, field="hold")
    return jsonify(
        catalog.set_hold(_box().store, recording_id, body["hold"], body.get("reason", ""), _actor())
    )


@api.post("/review/unlock")
@require("supervisor")
def unlock():
    """Unlock local review with the supervisor's review secret (in memory, for a while)."""
    secret = _body().get("secret")
    if not isinstance(secret, str) or not secret:
        raise EdgeboxError("secret is required", status=400, field="secret")
    return jsonify({"unlocked_for_seconds": _box().review.unlock(current_user(), secret)})


@api.post("/review/lock")
@require("supervisor")
def lock():
    """Lock local review now."""
    _box().review.lock(current_user())
    return jsonify({"unlocked_for_seconds": 0})


@api.get("/cameras")
@require("supervisor", "admin")
def cameras():
    """Paired cameras with last contact."""
    return jsonify(_box().pairing.devices())


@api.post("/cameras/pair")
@require("admin")
def pair():
    """A one-time pairing code, with the certificate pin, as text and as a QR code."""
    box = _box()
    result = box.pairing.new_code(_actor())
    result["box_url"] = request.host_url.rstrip("/")
    result["cert_sha256"] = certificate_fingerprint(box.keys.tls_cert.read_bytes())
    payload = f"edgebox-pair:{result['box_url']}?code={result['code']}&fp={result['cert_sha256']}"
    result["qr_svg"] = segno.make(payload, error="m").svg_data_uri(scale=4)
    return jsonify(result), 201


@api.post("/cameras/<device_id>/revoke")
@require("admin")
def revoke(device_id: str):
    """Revoke a camera."""
    return jsonify(_box().pairing.revoke(device_id, _actor()))


@api.get("/audit")
@require("supervisor", "admin")
def audit():
    """The custody log, newest first (filter by event, subject; page with before=SEQ)."""
    where, params = [], []
    for name in ("event", "subject"):
        if request.args.get(name):
            where.append(f"{name} = ?")
            params.append(request.args[name])
    if request.args.get("before"):
        if not request.args["before"].isdigit():
            raise EdgeboxError("before must be a sequence number", status=400, field="before")
        where.append("seq < ?")
        params.append(int(request.args["before"]))
    # Column names come from the fixed tuple above; values are bound parameters.
    sql = "SELECT * FROM custody" + (" WHERE " + " AND ".join(where) if where else "")  # noqa: S608
    rows = _box().store.query(sql + " ORDER BY seq DESC LIMIT 200", tuple(params))
    return jsonify({"items": rows})


@api.post("/audit/verify")
@require("supervisor", "admin")
def verify():
    """Verify the custody chain, checkpoints and every vault file now."""
    from edgebox.verify import verify_box

    box = _box()
    report = verify_box(box).to_dict()
    custody.record(box.store, "custody.verified", _actor(), None, {"ok": report["ok"]})
    return jsonify(report)


@api.get("/users")
@require("admin")
def users():
    """Every user."""
    return jsonify(_box().users.list())


@api.post("/users")
@require("admin")
def add_user():
    """Create a user: {username, role, password}."""
    body = _body()
    row = _box().users.add(
        str(body.get("username", "")),
        str(body.get("role", "")),
        str(body.get("password", "")),
        actor=_actor(),
    )
    return jsonify(row), 201


def _body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise EdgeboxError("send a JSON object", status=400)
    return body


def _actor() -> str:
    return f"user:{current_user()['username']}"


@api.get("/status")
@require()
def status():
    """The same report as `edgebox status --json`; for admins only with the box's file paths
    and process ids (crew and supervisors see the state without them)."""
    report = _box().status()
    return jsonify(report if current_user()["role"] == "admin" else without_internals(report))


_INTERNAL_KEYS = ("pid", "path", "dir", "file", "socket", "config", "command")


def without_internals(value):
    """A status report without what tells an intruder about the host: keys naming paths,
    folders, files or process ids, and any text value that is an absolute path or file URL."""
    if isinstance(value, dict):
        return {
            key: without_internals(item)
            for key, item in value.items()
            if not any(word in key.lower() for word in _INTERNAL_KEYS)
            and not (isinstance(item, str) and item.startswith(("/", "file:")))
        }
    if isinstance(value, list):
        return [without_internals(item) for item in value]
    return value
