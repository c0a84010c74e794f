"""The local web pages (a first read-only view; the full UI builds on this blueprint)."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from edgebox.web.auth import require

ui = Blueprint("ui", __name__)


@ui.get("/")
@require()
def index():
    """The recordings on this box with their hashes and sync state."""
    box = current_app.extensions["edgebox"]
    return render_template(
        "recordings.html",
        recordings=box.recordings(limit=200),
        uploads=box.uploads.in_progress(),
    )
