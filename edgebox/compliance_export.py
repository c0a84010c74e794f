"""The compliance report for the supervisory body: CSV or printable HTML, logged in custody.

Every export is a `compliance.exported` custody entry naming who exported it, the filters,
the counts per check, the number of rows, and the SHA-256 and size of the exact bytes handed
out, so a report shown later can be matched to its entry (docs/compliance.md).
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass

import jinja2

from edgebox import compliance, custody
from edgebox.errors import EdgeboxError

FORMATS = {"csv": "text/csv; charset=utf-8", "html": "text/html; charset=utf-8"}
CSV_COLUMNS = (
    "check",
    "recording_id",
    "camera",
    "user",
    "started_at",
    "received_at",
    "category",
    "pre_event_seconds",
    "warned",
    "exemption",
    "sync_state",
    "legal_hold",
    "finding",
)


@dataclass(frozen=True)
class Export:
    """One exported report: its bytes, media type, file name and custody entry."""

    body: bytes
    media_type: str
    filename: str
    sha256: str
    custody_seq: int


def check_format(fmt: str | None) -> str:
    """The export format, or a 400 naming the accepted ones."""
    if fmt not in FORMATS:
        raise EdgeboxError(
            f"format must be one of {', '.join(FORMATS)}", status=400, field="format"
        )
    return fmt


def export(box, filters: compliance.Filters, fmt: str, actor: str) -> Export:
    """Build the full report (no row limit), render it, and log the export in custody."""
    fmt = check_format(fmt)
    report = compliance.build(box, compliance.everything(filters))
    body = render_csv(report) if fmt == "csv" else render_html(report)
    digest = hashlib.sha256(body).hexdigest()
    rows = sum(len(s["items"]) for s in report["sections"].values())
    entry = custody.record(
        box.store,
        "compliance.exported",
        actor,
        None,
        {
            "format": fmt,
            "filters": {k: v for k, v in report["filters"].items() if k != "limit"},
            "counts": report["counts"],
            "rows": rows,
            "bytes": len(body),
            "sha256": digest,
            "generated_at": report["generated_at"],
        },
    )
    stamp = report["generated_at"][:19].replace(":", "").replace("-", "")
    filename = f"compliance-{report['box_id']}-{stamp}.{fmt}"
    return Export(body, FORMATS[fmt], filename, digest, entry["seq"])


def csv_rows(report: dict) -> list[dict]:
    """One row per finding: recordings under each check, then silent cameras."""
    rows = []
    for check, section in report["sections"].items():
        for item in section["items"]:
            if check == "silent_camera":
                rows.append({"check": check, "camera": item["serial"], "finding": item["finding"]})
                continue
            rows.append(
                {
                    "check": check,
                    "recording_id": item["id"],
                    "camera": item["serial"],
                    "user": item["user_id"],
                    "started_at": item["started_at"],
                    "received_at": item["received_at"],
                    "category": item["category"],
                    "pre_event_seconds": item["pre_event_seconds"],
                    "warned": {1: "yes", 0: "no"}.get(item["warned"], ""),
                    "exemption": item["exemption"],
                    "sync_state": item["sync_state"],
                    "legal_hold": "yes" if item["legal_hold"] else "no",
                    "finding": item["finding"],
                }
            )
    return rows


def render_csv(report: dict) -> bytes:
    """The report's findings as RFC 4180 CSV (UTF-8, CRLF line ends, a header row)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in csv_rows(report):
        writer.writerow({k: _cell(row.get(k)) for k in CSV_COLUMNS})
    return out.getvalue().encode("utf-8")


def _cell(value) -> str:
    """A CSV cell that a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _translate(text: str, **values) -> str:
    """A string of the printable report in this request's language (an export from the web
    UI), or in English (an export from the command line, which has no request)."""
    from flask import has_request_context

    if has_request_context():
        from flask_babel import gettext

        return gettext(text, **values)
    return text % values if values else text


def render_html(report: dict) -> bytes:
    """The report as one self-contained printable HTML page (styles inline, no script)."""
    from edgebox.web import assets_dir

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(assets_dir() / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals["_"] = _translate
    return env.get_template("compliance_print.html").render(report=report).encode("utf-8")
