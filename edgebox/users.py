"""People who use the box: crew, supervisors and regional IT, with argon2id passwords.

Failed logins are counted per user; after `MAX_FAILURES` the account locks for
`LOCK_MINUTES`. Raising a user's session epoch ends every session they hold.
"""

from __future__ import annotations

import datetime as dt
import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from edgebox import custody
from edgebox.clock import iso, parse_rfc3339, utcnow
from edgebox.db import Store
from edgebox.errors import N_, EdgeboxError, NotFound

ROLES = ("crew", "supervisor", "admin")
MAX_FAILURES = 5
LOCK_MINUTES = 15
MIN_PASSWORD = 10
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,31}$")
_hasher = PasswordHasher()
_DUMMY = _hasher.hash("timing equaliser for unknown users")


class AuthError(EdgeboxError):
    """A login or permission failure."""

    status = 401


def _public(row: dict) -> dict:
    return {k: row[k] for k in ("id", "username", "role", "disabled", "created_at", "locked_until")}


class Users:
    """Create, list, disable users; check passwords with throttling and lockout."""

    def __init__(self, store: Store):
        self.store = store

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
            custody.append(db, "user.password_changed", actor, username, {})

    def logout_everywhere(self, user_id: int, actor: str) -> None:
        """End every session of a user."""
        with self.store.write() as db:
            db.execute("UPDATE users SET session_epoch = session_epoch + 1 WHERE id = ?", [user_id])
            custody.append(db, "user.logout_everywhere", actor, str(user_id), {})

    def set_language(self, user_id: int, language: str | None) -> None:
        """Remember the UI language a user chose (None: follow the browser again)."""
        with self.store.write() as db:
            db.execute("UPDATE users SET language = ? WHERE id = ?", [language, user_id])

    def authenticate(self, username: str, password: str, source: str = "") -> dict:
        """Check a login; failures are counted, logged, and lock the account after a few."""
        now = utcnow()
        row = self.store.one("SELECT * FROM users WHERE username = ?", (username or "",))
        if row is None:
            _verify(_DUMMY, password or "")  # same work as for a real user
            custody.record(
                self.store,
                "user.login_failed",
                "anonymous",
                username[:64] if username else None,
                {"reason": "unknown user", "source": source},
            )
            raise AuthError(N_("wrong user name or password"))
        if row["locked_until"] and parse_rfc3339(row["locked_until"]) > now:
            custody.record(
                self.store,
                "user.login_failed",
                row["username"],
                row["username"],
                {"reason": "locked", "source": source},
            )
            raise AuthError(
                f"account locked after {MAX_FAILURES} failed logins; try again "
                f"after {row['locked_until'][:16].replace('T', ' ')} UTC",
                status=423,
            )
        if row["disabled"]:
            raise AuthError(N_("this account is disabled"), status=403)
        if not _verify(row["password_hash"], password or ""):
            failures = row["failed_logins"] + 1
            locked = (
                iso(now + dt.timedelta(minutes=LOCK_MINUTES)) if failures >= MAX_FAILURES else None
            )
            with self.store.write() as db:
                db.execute(
                    "UPDATE users SET failed_logins = ?, locked_until = ? WHERE id = ?",
                    [0 if locked else failures, locked, row["id"]],
                )
                custody.append(
                    db,
                    "user.login_failed",
                    row["username"],
                    row["username"],
                    {"reason": "wrong password", "source": source, "locked_until": locked},
                )
            raise AuthError(N_("wrong user name or password"))
        with self.store.write() as db:
            db.execute(
                "UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = ?", [row["id"]]
            )
            custody.append(db, "user.login", row["username"], row["username"], {"source": source})
        return self.by_id(row["id"])


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
