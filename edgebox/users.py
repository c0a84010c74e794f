"""People who use the box: crew, supervisors and regional IT, with argon2id passwords.

Failed logins brake (429) the source address and the user name after `BRAKE_FAILURES`
within `BRAKE_MINUTES`, the same for names that exist and names that do not; accounts are
never locked, so nobody can lock another out or learn which names exist. Raising a user's
session epoch ends every session they hold.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import threading
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from edgebox import custody
from edgebox.brake import Brake
from edgebox.clock import iso, utcnow
from edgebox.db import Store
from edgebox.errors import N_, EdgeboxError, NotFound

ROLES = ("crew", "supervisor", "admin")
BRAKE_FAILURES = 10
BRAKE_MINUTES = 15
MIN_PASSWORD = 10
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,31}$")
_hasher = PasswordHasher()
_DUMMY = _hasher.hash("timing equaliser for unknown users")


SESSION_HOURS = 12  # a web session lasts this long after its login
SESSION_KEEP_DAYS = 30  # ended sessions stay this long (who was logged in from where)


class AuthError(EdgeboxError):
    """A login or permission failure."""

    status = 401


def _public(row: dict) -> dict:
    return {k: row[k] for k in ("id", "username", "role", "disabled", "created_at", "locked_until")}


class Users:
    """Create, list, disable users; check passwords with throttling and lockout."""

    def __init__(self, store: Store):
        self.store = store
        self.source_brake = Brake(BRAKE_FAILURES, BRAKE_MINUTES * 60)
        self.name_brake = Brake(BRAKE_FAILURES, BRAKE_MINUTES * 60)
        self._failures = FailureLog(store)

    def add(self, username: str, role: str, password: str, actor: str = "operator") -> dict:
        """Create a user; the name is lower-case letters, digits, '.', '_' or '-'."""
        if not _NAME.match(username or ""):
            raise EdgeboxError(
                "username must be 2-32 lower-case letters, digits, '.', '_', '-'",
                status=400,
                field="username",
            )
        if role not in ROLES:
            raise EdgeboxError(f"role must be one of {', '.join(ROLES)}", status=400, field="role")
        _check_password(password)
        with self.store.write() as db:
            if db.execute("SELECT 1 FROM users WHERE username = ?", [username]).fetchone():
                raise EdgeboxError(f"user {username} already exists", status=409, field="username")
            db["users"].insert(
                {
                    "username": username,
                    "role": role,
                    "password_hash": _hasher.hash(password),
                    "created_at": iso(),
                }
            )
            custody.append(db, "user.added", actor, username, {"role": role})
        return self.get(username)

    def get(self, username: str) -> dict:
        """A user without the password hash."""
        row = self.store.one("SELECT * FROM users WHERE username = ?", (username,))
        if row is None:
            raise NotFound(f"no user {username}")
        return _public(row)

    def by_id(self, user_id: int) -> dict | None:
        """The full row of a user id (for session checks), or None."""
        return self.store.one("SELECT * FROM users WHERE id = ?", (user_id,))

    def list(self) -> list[dict]:
        """Every user, without password hashes."""
        return [_public(r) for r in self.store.query("SELECT * FROM users ORDER BY username")]

    def count(self) -> int:
        """How many users exist (0 means the box still needs its first admin)."""
        return self.store.one("SELECT COUNT(*) AS n FROM users")["n"]

    def set_disabled(self, username: str, disabled: bool, actor: str = "operator") -> dict:
        """Disable (and log out everywhere) or re-enable a user."""
        self.get(username)
        with self.store.write() as db:
            db.execute(
                "UPDATE users SET disabled = ?, session_epoch = session_epoch + 1 "
                "WHERE username = ?",
                [int(disabled), username],
            )
            _end_sessions(db, "user_id = (SELECT id FROM users WHERE username = ?)", username)
            custody.append(db, "user.disabled" if disabled else "user.enabled", actor, username, {})
        return self.get(username)

    def set_password(self, username: str, password: str, actor: str = "operator") -> None:
        """Change a password; every existing session of that user ends."""
        self.get(username)
        _check_password(password)
        with self.store.write() as db:
            db.execute(
                "UPDATE users SET password_hash = ?, failed_logins = 0, locked_until = NULL,"
                " session_epoch = session_epoch + 1 WHERE username = ?",
                [_hasher.hash(password), username],
            )
            _end_sessions(db, "user_id = (SELECT id FROM users WHERE username = ?)", username)
            custody.append(db, "user.password_changed", actor, username, {})

    def logout_everywhere(self, user_id: int, actor: str) -> None:
        """End every session of a user."""
        with self.store.write() as db:
            db.execute("UPDATE users SET session_epoch = session_epoch + 1 WHERE id = ?", [user_id])
            _end_sessions(db, "user_id = ?", user_id)
            custody.append(db, "user.logout_everywhere", actor, str(user_id), {})

    def set_language(self, user_id: int, language: str | None) -> None:
        """Remember the UI language a user chose (None: follow the browser again)."""
        with self.store.write() as db:
            db.execute("UPDATE users SET language = ? WHERE id = ?", [language, user_id])

    def start_session(self, user_id: int, source: str = "") -> str:
        """A new web session for a user who just logged in; returns its id (for the cookie)."""
        token = secrets.token_urlsafe(32)
        with self.store.write() as db:
            db["web_sessions"].insert(
                {
                    "id": _session_key(token),
                    "user_id": user_id,
                    "source": source,
                    "created_at": iso(),
                }
            )
        return token

    def session_user(self, token: str, max_age_hours: float) -> dict | None:
        """The user row of a live session (with `session_id`, the key of that session), or
        None when the session ended, is older than `max_age_hours`, or its user is disabled."""
        if not isinstance(token, str) or not token:
            return None
        since = iso(utcnow() - dt.timedelta(hours=max_age_hours))
        key = _session_key(token)
        row = self.store.one(
            "SELECT u.* FROM web_sessions s JOIN users u ON u.id = s.user_id "
            "WHERE s.id = ? AND s.ended_at IS NULL AND s.created_at > ? AND u.disabled = 0",
            (key, since),
        )
        return {**row, "session_id": key} if row else None

    def prune_sessions(
        self,
        max_age_hours: float = SESSION_HOURS,
        keep_days: int = SESSION_KEEP_DAYS,
        now: dt.datetime | None = None,
    ) -> int:
        """Delete session rows that ended, or expired after `max_age_hours`, more than
        `keep_days` ago (logins and logouts stay in custody); how many went."""
        cutoff = (now or utcnow()) - dt.timedelta(days=keep_days)
        with self.store.write() as db:
            cursor = db.execute(
                "DELETE FROM web_sessions WHERE ended_at < ? OR created_at < ?",
                [iso(cutoff), iso(cutoff - dt.timedelta(hours=max_age_hours))],
            )
            return cursor.rowcount

    def end_session(self, token: str) -> str:
        """End one web session (logout); returns its key."""
        key = _session_key(token or "")
        with self.store.write() as db:
            _end_sessions(db, "id = ?", key)
        return key

    def authenticate(
        self, username: str, password: str, source: str = "", trusted: bool = False
    ) -> dict:
        """Check a login. Unknown names, disabled accounts and wrong passwords get the same
        answer (401); failures brake the source address and the name alike (429), whether
        the name exists or not, so nobody learns which accounts exist. A `trusted` attempt
        (from a browser this user logged in with before) is not held back by the name's
        brake and does not feed it, so failing logins under a name cannot lock its owner out."""
        name = (username or "")[:64]
        wait = self.source_brake.wait(source)
        if not trusted:
            wait = max(wait, self.name_brake.wait(name))
        if wait:
            self._failures.failed(name, source, "braked")
            raise AuthError(f"too many failed logins; try again in {wait} seconds", status=429)
        row = self.store.one("SELECT * FROM users WHERE username = ?", (name,))
        verified = _verify(row["password_hash"] if row else _DUMMY, password or "")
        if row is None or row["disabled"] or not verified:
            self.source_brake.failed(source)
            if not trusted:
                self.name_brake.failed(name)
            reason = (
                "unknown user"
                if row is None
                else "disabled"
                if row["disabled"]
                else ("wrong password")
            )
            self._failures.failed(name, source, reason)
            raise AuthError(N_("wrong user name or password"))
        if not trusted:  # the owner's own browser leaves the brake on others' guesses
            self.name_brake.forget(name)
        self._failures.flush()
        with self.store.write() as db:
            db.execute(
                "UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = ?", [row["id"]]
            )
            custody.append(db, "user.login", row["username"], row["username"], {"source": source})
        return self.by_id(row["id"])


class FailureLog:
    """Writes failed logins to custody, at most `per_window` entries each `window` seconds;
    failures beyond that are counted and written as one aggregated entry (at the next failure
    or successful login after the window), so a flood of guesses cannot flood the chain."""

    def __init__(self, store: Store, per_window: int = 20, window: float = 60.0, clock=None):
        self.store = store
        self.per_window = per_window
        self.window = window
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._started = self._clock()
        self._written = 0
        self._held = 0
        self._held_sources: dict[str, int] = {}

    def failed(self, name: str, source: str, reason: str) -> None:
        """Log one failed login (or count it, past this window's budget)."""
        with self._lock:
            self._roll()
            if self._written >= self.per_window:
                self._held += 1
                if source in self._held_sources or len(self._held_sources) < 16:
                    self._held_sources[source] = self._held_sources.get(source, 0) + 1
                return
            self._written += 1
        custody.record(
            self.store,
            "user.login_failed",
            "anonymous",
            name or None,
            {"reason": reason, "source": source},
        )

    def flush(self) -> None:
        """Write the aggregated entry of a finished window, if failures were held back."""
        with self._lock:
            self._roll()

    def _roll(self) -> None:
        if self._clock() - self._started < self.window:
            return
        if self._held:
            custody.record(
                self.store,
                "user.login_failed",
                "anonymous",
                None,
                {"reason": "aggregated", "failures": self._held, "sources": self._held_sources},
            )
        self._started, self._written, self._held, self._held_sources = self._clock(), 0, 0, {}


def _session_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _end_sessions(db, where: str, value) -> None:
    # `where` is one of the fixed conditions above; the value is a bound parameter.
    db.execute(
        f"UPDATE web_sessions SET ended_at = ? WHERE ended_at IS NULL AND {where}",  # noqa: S608
        [iso(), value],
    )


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise EdgeboxError(
            f"password must have at least {MIN_PASSWORD} characters", status=400, field="password"
        )
