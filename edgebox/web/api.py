"""The JSON API under /api/v1: camera enrollment, health, recordings, status."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from edgebox.errors import IngestError
from edgebox.web.auth import require

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
    return jsonify(_box().pairing.enroll(body["code"], body["serial"], body["model"])), 201


@api.get("/health")
def health():
    """Liveness: the box process answers and knows who it is."""
    return jsonify({"ok": True, "box_id": _box().config.box.box_id})


@api.get("/recordings")
@require()
def recordings():
    """Recordings, newest first (paged with ?limit= and ?before=received_at)."""
    limit = min(max(request.args.get("limit", 50, type=int), 1), 500)
    return jsonify(_box().recordings(limit=limit, before=request.args.get("before")))


@api.get("/status")
@require()
def status():
    """The same report as `edgebox status --json`."""
    return jsonify(_box().status())
