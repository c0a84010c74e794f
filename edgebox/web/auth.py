"""Logins, sessions, roles and CSRF for the web UI and its JSON API.

Sessions are signed cookies (Secure, HttpOnly, SameSite=Strict) carrying the user
id, the user's session epoch and a CSRF token; raising the epoch ends every
session of that user. Every state-changing request made with a session cookie
must echo the CSRF token (header `X-CSRF-Token` or form field `csrf_token`).
Cameras do not use sessions: the tus endpoint and enrollment are exempt.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import time

from flask import Blueprint, current_app, g, jsonify, redirect, render_template, request, session

from edgebox.users import AuthError, Users

auth = Blueprint("auth", __name__)
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
CSRF_EXEMPT = ("/tus", "/api/v1/cameras/enroll")
SESSION_HOURS = 12


def _users() -> Users:
    return current_app.extensions["edgebox"].users


def current_user() -> dict | None:
    """The logged-in user of this request, or None (stale or revoked sessions count as none)."""
    if "user" in g:
        return g.user
    g.user = None
    user_id, epoch = session.get("uid"), session.get("epoch")
    if user_id is None or time.time() - session.get("since", 0) > SESSION_HOURS * 3600:
        return None
    row = _users().by_id(user_id)
    if row and not row["disabled"] and row["session_epoch"] == epoch:
        g.user = row
    return g.user


def require(*roles: str):
    """Allow a view only to logged-in users, and only to `roles` when given."""

    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            user = current_user()
            if user is None:
                if request.path.startswith("/api/"):
                    raise AuthError("log in first")
                return redirect(f"/login?next={request.full_path.rstrip('?')}")
            if roles and user["role"] not in roles:
                raise AuthError(f"this needs the role {' or '.join(roles)}", status=403)
            return view(*args, **kwargs)

        return wrapper

    return decorate


def csrf_token() -> str:
    """This session's CSRF token (created on first use)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


@auth.before_app_request
def _check_csrf():
    if request.method not in UNSAFE or request.path.startswith(CSRF_EXEMPT):
        return None
    if request.path == "/login":
        return None  # a login starts a fresh session; SameSite=Strict keeps it same-site
    if "uid" not in session:
        return None  # no session to ride on: the view itself answers 401
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent, expected):
        raise AuthError("missing or wrong CSRF token; reload the page", status=403)
    return None


def _source() -> str:
    return request.remote_addr or ""


@auth.get("/login")
def login_form():
    """The login page."""
    return render_template("login.html", error=None, next=request.args.get("next", "/"))


@auth.post("/login")
def login():
    """Check the password, then start a fresh session (a new id, a new CSRF token)."""
    body = request.get_json(silent=True) if request.is_json else request.form
    if request.is_json and not isinstance(body, dict):
        body = {}  # JSON that is no object carries no credentials (was a 500)
    username, password = (body or {}).get("username", ""), (body or {}).get("password", "")
    try:
        user = _users().authenticate(str(username), str(password), _source())
    except AuthError as exc:
        if request.is_json:
            raise
        return render_template("login.html", error=exc.message, next="/"), exc.status
    session.clear()  # nothing from before the login survives (no session fixation)
    session.update(
        uid=user["id"],
        epoch=user["session_epoch"],
        since=time.time(),
        csrf=secrets.token_urlsafe(32),
    )
    if request.is_json:
        return jsonify(
            {"username": user["username"], "role": user["role"], "csrf_token": session["csrf"]}
        )
    target = request.form.get("next", "/")
    return redirect(target if target.startswith("/") and not target.startswith("//") else "/")


@auth.post("/logout")
def logout():
    """End this session."""
    session.clear()
    return redirect("/login") if not request.is_json else jsonify({"ok": True})


@auth.post("/logout-everywhere")
@require()
def logout_everywhere():
    """End every session of the current user, on every device."""
    user = current_user()
    _users().logout_everywhere(user["id"], user["username"])
    session.clear()
    return jsonify({"ok": True}) if request.is_json else redirect("/login")


@auth.get("/api/v1/me")
@require()
def me():
    """Who is logged in, with the CSRF token scripts must echo."""
    user = current_user()
    return jsonify({"username": user["username"], "role": user["role"], "csrf_token": csrf_token()})
