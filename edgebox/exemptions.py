"""Why a filmed person was not warned: the three reasons the law accepts, in one stored form.

Stored in `recordings.exemption` as `large_group`, `severity`, or `other: <note>` (a note of
3 to 500 characters is required for `other`). A crew member or supervisor tagging a recording
must use one of these (`parse(text)`); a camera's free text is never refused at ingest, where
refusing would strand footage: it is kept as `other: <the camera's text>` (`from_camera`).
"""

from __future__ import annotations

from edgebox.errors import EdgeboxError

REASONS = ("large_group", "severity", "other")
NOTE_MIN, NOTE_MAX = 3, 490
_ALIASES = {
    "large_group": "large_group",
    "large group": "large_group",
    "large-group": "large_group",
    "group": "large_group",
    "severity": "severity",
    "severe": "severity",
}


def _bad(message: str) -> EdgeboxError:
    return EdgeboxError(message, status=400, field="exemption")


def parse(text: str | None) -> str | None:
    """The stored form of a tagged exemption, or a 400 naming what is wrong; None clears it."""
    if text is None or not text.strip():
        return None
    value = " ".join(text.split())
    code = _ALIASES.get(value.lower())
    if code:
        return code
    head, sep, note = value.partition(":")
    if head.strip().lower() == "other":
        note = note.strip()
        if not sep or not NOTE_MIN <= len(note) <= NOTE_MAX:
            raise _bad(f"an 'other' exemption needs a note of {NOTE_MIN} to {NOTE_MAX} characters")
        return f"other: {note}"
    raise _bad("exemption must be large_group, severity or 'other: <note>'")


def from_camera(text: str | None) -> str | None:
    """A camera's exemption in the stored form: a known reason, else `other: <its text>`."""
    try:
        return parse(text)
    except EdgeboxError:
        return f"other: {' '.join(text.split())[:NOTE_MAX]}"


def reason(stored: str | None) -> str | None:
    """The reason code of a stored exemption (`other` for any note), None when there is none."""
    if not stored:
        return None
    return stored if stored in REASONS else "other"
