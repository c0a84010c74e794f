"""RTSP cameras in the API and the UI: list with live state, add, trigger and stop recordings.

A trigger always names who (the logged-in user) and why (required); the box adds from
where (the client's address, plus an optional `where` text such as a location).
"""

from __future__ import annotations

from flask import (
    Blueprint,
    current_app,
    flash,
    jsonify,
    redirect,
    request,
    url_for,
)

from edgebox.errors import EdgeboxError
from edgebox.web.auth import current_user, require

recorder_api = Blueprint("recorder_api", __name__, url_prefix="/api/v1/rtsp")
recorder_ui = Blueprint("recorder_ui", __name__)


def _recorder():
    recorder = current_app.extensions["edgebox"].recorder
    if recorder is None:
        raise EdgeboxError("the recorder is not running in this process", status=503)
    return recorder


def _actor() -> str:
    return f"user:{current_user()['username']}"


def _source(kind: str) -> str:
    return f"{kind} {request.remote_addr or 'unknown'}"


def _body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise EdgeboxError("send a JSON object", status=400)
    return body


@recorder_api.get("/cameras")
@require()
def cameras():
    """RTSP cameras with live state (streaming, reconnecting, offline since, error)."""
    return jsonify(_recorder().cameras())


@recorder_api.post("/cameras")
@require("admin")
def add_camera():
    """Add a camera: {name, url, username?, password?, pre_event_seconds?, post_event_seconds?}."""
    body = _body()
    row = _recorder().registry.add(
        body.get("name"),
        body.get("url"),
        _actor(),
        username=body.get("username"),
        password=body.get("password"),
        pre_event_seconds=body.get("pre_event_seconds"),
        post_event_seconds=body.get("post_event_seconds"),
    )
    return jsonify(row), 201


@recorder_api.post("/triggers")
@require("crew", "supervisor", "admin")
def trigger():
    """Record now: {why, cameras?, where?, incident?, post_event_seconds?, until_stopped?}."""
    return jsonify(_recorder().trigger(_body(), _actor(), _source("api"))), 201


@recorder_api.post("/triggers/<trigger_id>/stop")
@require("crew", "supervisor", "admin")
def stop(trigger_id: str):
    """End a trigger that runs until stopped (the post-event time still follows)."""
    return jsonify(_recorder().stop_trigger(trigger_id, _actor()))


@recorder_ui.post("/cameras/rtsp/trigger")
@require("crew", "supervisor", "admin")
def trigger_form():
    """The camera page's record button."""
    form = request.form
    body = {"why": form.get("why", "").strip(), "where": form.get("where", "").strip() or None}
    if form.get("camera"):
        body["cameras"] = [form["camera"]]
    try:
        result = _recorder().trigger(body, _actor(), _source("ui"))
        flash(f"recording {result['trigger_id']} started", "ok")
    except EdgeboxError as exc:
        flash(exc.message, "error")
    return redirect(url_for("ui.cameras"))


@recorder_ui.post("/cameras/rtsp/stop")
@require("crew", "supervisor", "admin")
def stop_form():
    """The camera page's stop button."""
    try:
        _recorder().stop_trigger(request.form.get("trigger", ""), _actor())
        flash("recording stopping", "ok")
    except EdgeboxError as exc:
        flash(exc.message, "error")
    return redirect(url_for("ui.cameras"))
