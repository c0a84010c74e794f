"""The box's Flask application: `create_app(box)` wires blueprints to the box's services."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from flask import Flask, g, jsonify, request
from flask.json.provider import DefaultJSONProvider

from edgebox.errors import EdgeboxError
from edgebox.scheduler import refused_for_room
from edgebox.storage import RETRY_AFTER_FULL_SECONDS

TUS_VERSION = "1.0.0"


def assets_dir() -> Path:
    """The `web/` folder: shipped inside the wheel as `edgebox/_web`, or the source tree's."""
    packaged = Path(str(resources.files("edgebox"))) / "_web"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "web"


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, except that a body nested past the decoder's depth is malformed JSON
    (a ValueError, so `get_json(silent=True)` gives None and the view answers 400) rather
    than a RecursionError and a 500."""

    def loads(self, s, **kwargs):
        """Parse JSON text; too deep a nesting is a ValueError like any other bad JSON."""
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deep") from None


def create_app(box, testing: bool = False) -> Flask:
    """Build the Flask app around a running `Box` (its services live in app.extensions)."""
    web = assets_dir()
    app = Flask(__name__, template_folder=str(web / "templates"), static_folder=str(web / "static"))
    app.json = BoundedJSONProvider(app)
    app.config.update(
        TESTING=testing,
        MAX_CONTENT_LENGTH=None,
        SECRET_KEY=box.keys.web_secret(),
        SESSION_COOKIE_NAME="edgebox_session",
        SESSION_COOKIE_SECURE=box.config.server.tls,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
    )
    app.extensions["edgebox"] = box
    _server_timing(app)
    from edgebox.web.tus import honour_method_override

    app.wsgi_app = honour_method_override(app.wsgi_app)

    from edgebox.web.api import api
    from edgebox.web.auth import auth, csrf_token
    from edgebox.web.compliance import reports
    from edgebox.web.dashboard import duration
    from edgebox.web.i18n import init_app as init_languages
    from edgebox.web.i18n import translated
    from edgebox.web.media import media
    from edgebox.web.openapi import openapi
    from edgebox.web.recorder import recorder_api, recorder_ui
    from edgebox.web.swift import swift
    from edgebox.web.tus import tus
    from edgebox.web.ui import ui

    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.filters["duration"] = duration
    init_languages(app, box)
    from edgebox.web import words

    words.install(app)

    @app.context_processor
    def _page_context():
        from edgebox.web.auth import current_user

        return {"box": box.config.box, "user": current_user()}

    app.register_blueprint(auth)
    app.register_blueprint(media)
    app.register_blueprint(openapi)
    app.register_blueprint(tus)
    app.register_blueprint(swift)
    app.register_blueprint(api)
    app.register_blueprint(ui)
    app.register_blueprint(reports)
    app.register_blueprint(recorder_api)
    app.register_blueprint(recorder_ui)

    @app.errorhandler(EdgeboxError)
    def _edgebox_error(exc: EdgeboxError):
        # The `error` code stays stable; the message is in the caller's language when known.
        response = jsonify({**exc.to_dict(), "message": translated(exc)})
        response.status = _status_line(exc.status)
        if request.path.startswith("/tus"):
            response.headers["Tus-Resumable"] = TUS_VERSION
            if g.get("tus_location"):  # created, then the body failed: resumable from here
                response.headers["Location"] = g.tus_location
        if exc.status == 507:
            response.headers["Retry-After"] = str(RETRY_AFTER_FULL_SECONDS)
            refused_for_room(box)
        if exc.status == 429:
            response.headers["Retry-After"] = "60"
        return response

    @app.after_request
    def _security_headers(response):
        if request.path.startswith("/tus"):  # also on the 405s and 500s Flask makes itself
            response.headers.setdefault("Tus-Resumable", TUS_VERSION)
        if not request.path.startswith("/static/"):
            # Pages and API answers carry evidence metadata: never kept by a browser or proxy.
            response.headers["Cache-Control"] = "no-store"
        if box.config.server.tls:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'",
        )
        return response

    return app


def _server_timing(app: Flask) -> None:
    """`Server-Timing: app;dur=MS` on every response: the time from the first before-request
    hook to the last after-request hook (a streamed body is not included). Registered before
    the blueprints, so it wraps their hooks too."""

    @app.before_request
    def _start_clock():
        g.started = time.perf_counter()

    @app.after_request
    def _stop_clock(response):
        started = g.get("started")
        if started is not None:
            elapsed = (time.perf_counter() - started) * 1000
            response.headers["Server-Timing"] = f"app;dur={elapsed:.2f}"
        return response


_REASONS = {460: "Checksum Mismatch", 507: "Insufficient Storage", 499: "Client Closed Request"}


def _status_line(status: int) -> str | int:
    return f"{status} {_REASONS[status]}" if status in _REASONS else status
