"""Logins, sessions, roles and CSRF for the web UI and its JSON API.

Sessions are held by the box (table `web_sessions`); the signed cookie (Secure,
HttpOnly, SameSite=Strict) carries the session's random id and a CSRF token. Logout ends
the session on the box, so a replayed cookie is refused; logout everywhere, a disabled
account and a password change end every session of that user. Every state-changing
request made with a session cookie must echo the CSRF token (header `X-CSRF-Token` or
form field `csrf_token`), and a browser's cross-site request (Origin of another site,
`Sec-Fetch-Site: cross-site`) is refused, the login form included. Cameras do not use
sessions: the tus endpoint and enrollment are exempt.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from urllib.parse import quote, urlsplit

from flask import Blueprint, current_app, g, jsonify, redirect, render_template, request, session
from itsdangerous import BadSignature, URLSafeTimedSerializer

from edgebox.errors import N_
from edgebox.users import SESSION_HOURS, AuthError, Users

auth = Blueprint("auth", __name__)
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
CSRF_EXEMPT = ("/tus", "/api/v1/cameras/enroll")
DEVICE_COOKIE = "edgebox_device"
DEVICE_DAYS = 90


def _users() -> Users:
    return current_app.extensions["edgebox"].users


def current_user() -> dict | None:
    """The logged-in user of this request (with `session_id`), or None: an ended, expired or
    unknown session, or a disabled user, counts as none."""
    if "user" in g:
        return g.user
    g.user = _users().session_user(session.get("sid"), SESSION_HOURS)
    return g.user


def safe_next(target) -> str:
    """Where a login may send the browser: a path on this site, else "/". Refuses anything a
    browser could read as another host (`//host`, `/\\host`, control characters such as a
    TAB, which browsers drop, turning `/<TAB>/host` into `//host`)."""
    if not isinstance(target, str) or not target.startswith("/") or len(target) > 2048:
        return "/"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target) or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if target.startswith("//") or parts.scheme or parts.netloc:
        return "/"
    return target


def require(*roles: str):
    """Allow a view only to logged-in users, and only to `roles` when given."""

    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            user = current_user()
            if user is None:
                if request.path.startswith("/api/"):
                    raise AuthError(N_("log in first"))
                wanted = quote(request.full_path.rstrip("?"), safe="/")
                return redirect(f"/login?next={wanted}")
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


def _cross_site() -> bool:
    """Whether a browser says this request comes from another site (Fetch Metadata, or an
    Origin that is not this box). Clients that send neither (scripts, curl) are not browsers
    riding on someone's cookie, and still need the CSRF token. `Origin: null` alone decides
    nothing: under the box's `Referrer-Policy: no-referrer` browsers send it for the box's
    own forms too, and Sec-Fetch-Site then tells."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin", "null")
    return origin != "null" and origin != request.host_url.rstrip("/")


@auth.before_app_request
def _check_csrf():
    if request.method not in UNSAFE or request.path.startswith(CSRF_EXEMPT):
        return None
    if _cross_site():
        raise AuthError("cross-site requests are refused", status=403)
    if request.path == "/login":
        return None  # a login starts a fresh session, and cross-site ones are refused above
    if "sid" not in session:
        return None  # no session to ride on: the view itself answers 401
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent, expected):
        raise AuthError(N_("missing or wrong CSRF token; reload the page"), status=403)
    return None


def _source() -> str:
    return request.remote_addr or ""


@auth.get("/login")
def login_form():
    """The login page."""
    return render_template("login.html", error=None, next=safe_next(request.args.get("next")))


@auth.post("/login")
def login():
    """Check the password, then start a fresh session (a new id, a new CSRF token)."""
    body = request.get_json(silent=True) if request.is_json else request.form
    if request.is_json and not isinstance(body, dict):
        body = {}  # JSON that is no object carries no credentials (was a 500)
    username, password = (body or {}).get("username", ""), (body or {}).get("password", "")
    target = safe_next((body or {}).get("next", "/"))
    try:
        user = _users().authenticate(
            str(username), str(password), _source(), trusted=_known_device(str(username))
        )
    except AuthError as exc:
        if request.is_json:
            raise
        return render_template("login.html", error=exc.message, next=target), exc.status
    language = session.get("lang")  # the language picked on the login page carries over
    session.clear()  # nothing else from before the login survives (no session fixation)
    if language:
        session["lang"] = language
    session.update(
        sid=_users().start_session(user["id"], _source()), csrf=secrets.token_urlsafe(32)
    )
    if request.is_json:
        response = jsonify(
            {"username": user["username"], "role": user["role"], "csrf_token": session["csrf"]}
        )
    else:
        response = redirect(target)
    _remember_device(response, user["username"])
    return response


def _device_signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt="edgebox-known-device")


def _known_device(username: str) -> bool:
    """Whether this browser logged in as `username` before (a signed cookie says so): its
    logins are not held back by the brake on that name, so nobody can keep a user out by
    failing logins under their name from elsewhere (the source brake still applies)."""
    cookie = request.cookies.get(DEVICE_COOKIE)
    if not cookie:
        return False
    try:
        return _device_signer().loads(cookie, max_age=DEVICE_DAYS * 86400) == username
    except BadSignature:
        return False


def _remember_device(response, username: str) -> None:
    response.set_cookie(
        DEVICE_COOKIE,
        _device_signer().dumps(username),
        max_age=DEVICE_DAYS * 86400,
        secure=current_app.config["SESSION_COOKIE_SECURE"],
        httponly=True,
        samesite="Strict",
    )


@auth.post("/logout")
def logout():
    """End this session, on the box too: its cookie is no use afterwards."""
    if session.get("sid"):
        key = _users().end_session(session["sid"])
        current_app.extensions["edgebox"].review.end_session(key)
    session.clear()
    return redirect("/login") if not request.is_json else jsonify({"ok": True})


@auth.post("/logout-everywhere")
@require()
def logout_everywhere():
    """End every session of the current user, on every device."""
    user = current_user()
    _users().logout_everywhere(user["id"], user["username"])
    current_app.extensions["edgebox"].review.end_user(user["id"])
    session.clear()
    return jsonify({"ok": True}) if request.is_json else redirect("/login")


@auth.get("/api/v1/me")
@require()
def me():
    """Who is logged in, with the CSRF token scripts must echo."""
    user = current_user()
    return jsonify({"username": user["username"], "role": user["role"], "csrf_token": csrf_token()})
