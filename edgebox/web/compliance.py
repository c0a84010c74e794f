"""The compliance report on the web: the page, its JSON twin, and logged CSV/HTML exports.

Supervisors and admins only: a supervisor prepares the report for the supervisory body,
an admin keeps cameras and sync healthy; crew see their own gaps in the recordings list.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, render_template, request

from edgebox import compliance, compliance_export
from edgebox.errors import EdgeboxError
from edgebox.web.auth import current_user, require

reports = Blueprint("compliance", __name__)
ROLES = ("supervisor", "admin")
QUERY = [
    ("from", "the recording's start (else its arrival) at or after this RFC 3339 time"),
    ("to", "the recording's start (else its arrival) before this RFC 3339 time"),
    ("camera", "camera serial"),
    ("user", "the camera wearer's user id"),
    ("category", "recording category"),
    ("check", f"comma list of {', '.join(compliance.CHECKS)}"),
    ("limit", f"rows per check, 1 to {compliance.LIMIT_MAX} (default {compliance.LIMIT_DEFAULT})"),
]


def _box():
    return current_app.extensions["edgebox"]


def _actor() -> str:
    return f"user:{current_user()['username']}"


def _download(done: compliance_export.Export) -> Response:
    response = Response(done.body, mimetype=done.media_type.split(";")[0])
    response.headers["Content-Type"] = done.media_type
    response.headers["Content-Disposition"] = f'attachment; filename="{done.filename}"'
    response.headers["EdgeBox-Export-Sha256"] = done.sha256
    response.headers["EdgeBox-Custody-Seq"] = str(done.custody_seq)
    response.headers["Cache-Control"] = "no-store"
    return response


@reports.get("/api/v1/compliance")
@require(*ROLES)
def report_json():
    """The compliance report: counts and recordings per check (pre_event, warning, at_risk,
    legal_hold, silent_camera), filtered by from, to, camera, user, category, check, limit."""
    filters = compliance.parse_filters(request.args.to_dict())
    return jsonify(compliance.build(_box(), filters))


report_json.openapi_query = QUERY


@reports.post("/api/v1/compliance/export")
@require(*ROLES)
def export_json():
    """Export the whole report as CSV or printable HTML ({"format", "filters"}); logged in
    custody with the export's SHA-256 (response headers EdgeBox-Export-Sha256, -Custody-Seq)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("filters", {}), dict):
        raise EdgeboxError('send a JSON object {"format": "csv", "filters": {...}}', status=400)
    fmt = compliance_export.check_format(body.get("format"))
    filters = compliance.parse_filters(body.get("filters", {}))
    return _download(compliance_export.export(_box(), filters, fmt, _actor()))


@reports.get("/compliance")
@require(*ROLES)
def page():
    """The compliance report with its filters and export buttons."""
    args = {k: v for k, v in request.args.items() if v}
    try:
        report, error = compliance.build(_box(), compliance.parse_filters(args)), None
        status = 200
    except EdgeboxError as exc:
        report, error, status = None, exc.message, exc.status
    html = render_template(
        "compliance.html", report=report, error=error, args=args, checks=compliance.CHECKS
    )
    return html, status


@reports.post("/compliance/export")
@require(*ROLES)
def page_export():
    """The page's export buttons: the same export as the API, as a download."""
    form = {k: v for k, v in request.form.items() if v and k not in ("csrf_token", "format")}
    fmt = compliance_export.check_format(request.form.get("format"))
    filters = compliance.parse_filters(form)
    return _download(compliance_export.export(_box(), filters, fmt, _actor()))
