"""The error hierarchy: every failure the box reports carries a status and a clear message."""

from __future__ import annotations


def N_(text: str) -> str:  # noqa: N802 - the usual name of gettext's no-op marker
    """Mark an English message for the UI's catalogs without translating it here: the English
    text is the message's stable key, and the web layer shows it in the reader's language."""
    return text


class EdgeboxError(Exception):
    """Base of every error the box raises on purpose; `status` is the HTTP status it maps to."""

    status = 500

    def __init__(self, message: str, *, status: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status

    def to_dict(self) -> dict:
        """The JSON body that the web layer answers with."""
        body = {"error": type(self).__name__, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class ConfigError(EdgeboxError):
    """The configuration file or an environment override is invalid."""

    status = 400


class VaultError(EdgeboxError):
    """A vault file is malformed, damaged or cannot be decrypted."""

    status = 500


class KeyAccessError(EdgeboxError):
    """A key is missing, locked, or the supervisor secret is wrong."""

    status = 403


class IngestError(EdgeboxError):
    """A camera request was refused; the status says why (400, 401, 403, 409, 413, 460, 507...)."""

    status = 400


class NotFound(EdgeboxError):
    """The requested object does not exist."""

    status = 404


class CustodyError(EdgeboxError):
    """The custody chain or a checkpoint does not verify."""

    status = 500
