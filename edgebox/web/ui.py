"""The local web pages: dashboard, recordings, recording (tags, hold, playback), cameras, audit,
users and settings. Forms post back here with the session's CSRF token and work without script;
the one script (static/edgebox.js) only refreshes the dashboard in place."""

from __future__ import annotations

import datetime as dt

import segno
from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext

from edgebox import catalog
from edgebox.axis.groups import overview
from edgebox.errors import N_, EdgeboxError
from edgebox.keys import certificate_fingerprint
from edgebox.web import dashboard as dashboard_data
from edgebox.web import periods, timeline, words
from edgebox.web.auth import current_user, require
from edgebox.web.i18n import translated

ui = Blueprint("ui", __name__)


def _box():
    return current_app.extensions["edgebox"]


def _actor() -> str:
    return f"user:{current_user()['username']}"


def _dashboard_context() -> dict:
    meter = current_app.extensions.setdefault("edgebox.drain", dashboard_data.DrainMeter())
    return dashboard_data.context(_box(), meter)


@ui.get("/")
@require()
def dashboard():
    """Cameras and their offloads, storage, the upstream link, latest recordings, alarms."""
    return render_template("dashboard.html", **_dashboard_context())


@ui.get("/dashboard/live")
@require()
def dashboard_live():
    """The dashboard's cards alone, which the page's script swaps in every few seconds."""
    response = current_app.make_response(
        render_template("dashboard_live.html", **_dashboard_context())
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _categories(current: str | None = None) -> list[tuple[str, int]]:
    """(category, retention days) from the configuration, plus a recording's own category
    when the configuration no longer names it."""
    retention = _box().config.retention
    chosen = sorted(retention.category_days.items())
    if current and current not in retention.category_days:
        chosen.append((current, retention.default_days))
    return chosen


def _review_left() -> int:
    user = current_user()
    return _box().review.remaining(user) if user["role"] == "supervisor" else 0


@ui.get("/recordings")
@require()
def recordings():
    """Recordings as cards (poster, camera, who, when, length, badges), filters and paging."""
    box = _box()
    args = {k: v for k, v in request.args.items() if v}
    try:
        wanted = periods.filters(args, box.config.ui, dt.datetime.now(dt.UTC))
        page = catalog.search(box.store, wanted, box.config.compliance.min_pre_event_seconds)
        error = None
    except EdgeboxError as exc:
        page, error = {"items": [], "next": None}, exc.message
    return render_template(
        "recordings.html",
        page=page,
        args=args,
        error=error,
        sync_states=catalog.SYNC_STATES,
        presets=periods.PRESETS,
        categories=_categories(),
        cameras=box.pairing.devices(),
        unlocked=_review_left(),
    )


@ui.post("/recordings/bulk")
@require("supervisor")
def bulk():
    """Tag several recordings with one incident, or place or lift a hold on several: each
    recording is changed and logged in custody on its own."""
    form = request.form
    chosen = form.getlist("recording")
    action = form.get("action", "")
    if not chosen or action not in ("incident", "place", "lift"):
        flash(gettext("choose recordings and an action"), "error")
        return redirect(url_for("ui.recordings"))
    done, failed = 0, []
    for recording_id in chosen:
        try:
            if action == "incident":
                catalog.tag(
                    _box().store, recording_id, {"incident": form.get("incident", "").strip()},
                    _actor(),
                )  # fmt: skip
            else:
                catalog.set_hold(
                    _box().store, recording_id, action == "place", form.get("reason", ""),
                    _actor(),
                )  # fmt: skip
            done += 1
        except EdgeboxError as exc:
            failed.append(f"{recording_id[:8]}: {translated(exc)}")
    flash(gettext("%(done)s of %(total)s recordings changed", done=done, total=len(chosen)),
          "ok" if not failed else "error")  # fmt: skip
    for problem in failed:
        flash(problem, "error")
    return redirect(request.form.get("next") or url_for("ui.recordings"))


@ui.get("/recordings/<recording_id>")
@require()
def recording(recording_id: str):
    """One recording: the video first, then what it is, then the tagging form."""
    rec = catalog.detail(_box().store, recording_id)
    exemption, note = words.split_exemption(rec["exemption"])
    return render_template(
        "recording.html",
        rec=rec,
        unlocked=_review_left(),
        categories=_categories(rec["category"]),
        exemptions=words.EXEMPTIONS,
        exemption=exemption,
        exemption_note=note,
        length=words.length_seconds(rec),
        retention=_box().config.retention,
        timeline=timeline.incident(_box().store, rec["incident"], recording_id),
    )


@ui.post("/recordings/<recording_id>/tags")
@require("crew", "supervisor")
def tag(recording_id: str):
    """Save the crew's tags from the form."""
    form = request.form
    changes = {k: form.get(k, "").strip() or None for k in ("incident", "category", "notes")}
    changes["warned"] = {"yes": True, "no": False}.get(form.get("warned", ""))
    reason, note = form.get("exemption", ""), form.get("exemption_note", "").strip()

    def save():
        if reason and reason not in words.EXEMPTIONS:
            raise EdgeboxError(N_("choose a reason from the list"), status=400, field="exemption")
        if reason == "other" and not note:
            raise EdgeboxError(N_("say why in a note"), status=400, field="exemption_note")
        changes["exemption"] = words.join_exemption(reason, note) if not changes["warned"] else None
        catalog.tag(_box().store, recording_id, changes, _actor())

    return _act(recording_id, save, N_("tags saved"))


@ui.post("/recordings/<recording_id>/hold")
@require("supervisor")
def hold(recording_id: str):
    """Place or lift the legal hold from the form."""
    place = request.form.get("hold") == "place"
    return _act(
        recording_id,
        lambda: catalog.set_hold(
            _box().store, recording_id, place, request.form.get("reason", ""), _actor()
        ),
        N_("legal hold placed") if place else N_("legal hold lifted"),
    )


@ui.post("/review/unlock")
@require("supervisor")
def unlock():
    """Unlock local review with the supervisor's secret."""
    target = request.form.get("recording", "")
    if not target and request.form.get("next", "").startswith("/recordings"):
        _act("", lambda: _box().review.unlock(current_user(), request.form.get("secret", "")),
             N_("review unlocked"))  # fmt: skip
        return redirect(request.form["next"])
    return _act(
        target,
        lambda: _box().review.unlock(current_user(), request.form.get("secret", "")),
        N_("review unlocked"),
    )


def _act(recording_id: str, action, done: str):
    try:
        action()
        flash(gettext(done), "ok")
    except EdgeboxError as exc:
        flash(translated(exc), "error")
    if recording_id:
        return redirect(url_for("ui.recording", recording_id=recording_id))
    return redirect(url_for("ui.recordings"))


@ui.get("/cameras")
@require("supervisor", "admin")
def cameras():
    """Paired cameras with last contact; admins pair and revoke."""
    box = _box()
    return render_template(
        "cameras.html",
        cameras=box.pairing.devices(),
        pairing=None,
        axis=overview(box.store),
        rtsp=_rtsp_cameras(),
    )


def _rtsp_cameras() -> list[dict]:
    """The RTSP cameras with live state, when the recorder runs in this process."""
    recorder = _box().recorder
    return recorder.cameras() if recorder is not None else []


@ui.post("/cameras/pair")
@require("admin")
def pair():
    """Show a new one-time code as text and as a QR code."""
    box = _box()
    code = box.pairing.new_code(_actor())
    url = request.host_url.rstrip("/")
    fingerprint = certificate_fingerprint(box.keys.tls_cert.read_bytes())
    qr = segno.make(f"edgebox-pair:{url}?code={code['code']}&fp={fingerprint}", error="m")
    pairing = {
        **code,
        "box_url": url,
        "cert_sha256": fingerprint,
        "qr_svg": qr.svg_data_uri(scale=5),
    }
    return render_template(
        "cameras.html", cameras=box.pairing.devices(), pairing=pairing, rtsp=_rtsp_cameras()
    )


@ui.post("/cameras/<device_id>/revoke")
@require("admin")
def revoke(device_id: str):
    """Revoke a camera."""
    try:
        _box().pairing.revoke(device_id, _actor())
        flash(gettext("camera revoked"), "ok")
    except EdgeboxError as exc:
        flash(translated(exc), "error")
    return redirect(url_for("ui.cameras"))


@ui.route("/audit", methods=["GET", "POST"])
@require("supervisor", "admin")
def audit():
    """The custody log, filterable, with a verify action."""
    from edgebox import custody
    from edgebox.verify import verify_box

    box = _box()
    report = None
    if request.method == "POST":
        report = verify_box(box).to_dict()
        custody.record(box.store, "custody.verified", _actor(), None, {"ok": report["ok"]})
    event = request.args.get("event", "")
    rows = box.store.query(
        "SELECT * FROM custody WHERE (? = '' OR event = ?) ORDER BY seq DESC LIMIT 200",
        (event, event),
    )
    events = [r["event"] for r in box.store.query("SELECT DISTINCT event FROM custody ORDER BY 1")]
    return render_template("audit.html", rows=rows, events=events, event=event, report=report)


@ui.route("/users", methods=["GET", "POST"])
@require("admin")
def users():
    """Users and a form to add one."""
    box = _box()
    if request.method == "POST":
        try:
            box.users.add(
                request.form.get("username", ""),
                request.form.get("role", ""),
                request.form.get("password", ""),
                actor=_actor(),
            )
            flash(gettext("user added"), "ok")
        except EdgeboxError as exc:
            flash(translated(exc), "error")
        return redirect(url_for("ui.users"))
    return render_template("users.html", users=box.users.list())


@ui.get("/settings")
@require("admin")
def settings():
    """The configuration in force (read-only here; IT changes it with Ansible)."""
    return render_template("settings.html", config=_box().config.to_dict())
