"""The box's Flask application: `create_app(box)` wires blueprints to the box's services."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from flask import Flask, jsonify, request

from edgebox.errors import EdgeboxError

TUS_VERSION = "1.0.0"


def assets_dir() -> Path:
    """The `web/` folder: shipped inside the wheel as `edgebox/_web`, or the source tree's."""
    packaged = Path(str(resources.files("edgebox"))) / "_web"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "web"


def create_app(box, testing: bool = False) -> Flask:
    """Build the Flask app around a running `Box` (its services live in app.extensions)."""
    web = assets_dir()
    app = Flask(__name__, template_folder=str(web / "templates"), static_folder=str(web / "static"))
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

    from edgebox.web.api import api
    from edgebox.web.auth import auth, csrf_token
    from edgebox.web.dashboard import duration
    from edgebox.web.media import media
    from edgebox.web.openapi import openapi
    from edgebox.web.tus import tus
    from edgebox.web.ui import ui

    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.filters["duration"] = duration

    @app.context_processor
    def _page_context():
        from edgebox.web.auth import current_user

        return {"box": box.config.box, "user": current_user()}

    app.register_blueprint(auth)
    app.register_blueprint(media)
    app.register_blueprint(openapi)
    app.register_blueprint(tus)
    app.register_blueprint(api)
    app.register_blueprint(ui)

    @app.errorhandler(EdgeboxError)
    def _edgebox_error(exc: EdgeboxError):
        response = jsonify(exc.to_dict())
        response.status = _status_line(exc.status)
        if request.path.startswith("/tus"):
            response.headers["Tus-Resumable"] = TUS_VERSION
        if exc.status == 507:
            response.headers["Retry-After"] = "300"
        if exc.status == 429:
            response.headers["Retry-After"] = "60"
        return response

    @app.after_request
    def _security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'",
        )
        return response

    return app


_REASONS = {460: "Checksum Mismatch", 507: "Insufficient Storage", 499: "Client Closed Request"}


def _status_line(status: int) -> str | int:
    return f"{status} {_REASONS[status]}" if status in _REASONS else status
