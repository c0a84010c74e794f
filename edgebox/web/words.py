"""The UI's vocabulary: stored codes (sync states, link states, roles, warning exemptions) and
the words a crew reads for them, in the reader's language. Codes stay stable in the database
and the API; only their words are translated."""

from __future__ import annotations

from flask import g
from flask_babel import gettext

from edgebox.catalog import REQUIRED_PRE_EVENT
from edgebox.clock import parse_rfc3339
from edgebox.errors import N_

SYNC_WORDS = {
    "pending": N_("waiting to go to central"),
    "sending": N_("being sent to central"),
    "synced": N_("held by central"),
    "rejected": N_("refused by central"),
    "damaged": N_("damaged"),
    "deleted": N_("deleted after central confirmed its copy"),
}
LINK_WORDS = {
    "offline": N_("offline"),
    "connecting": N_("connecting"),
    "online": N_("online"),
    "refused": N_("refused by the broker"),
    "disabled": N_("no upstream configured"),
}
# Details the box itself gives for a link state (others are the broker's own words).
LINK_DETAILS = (N_("never connected"),)
CAMERA_WORDS = {  # an RTSP camera's live state (edgebox.recorder.puller)
    "starting": N_("starting"),
    "connecting": N_("connecting"),
    "streaming": N_("streaming"),
    "reconnecting": N_("reconnecting"),
    "offline": N_("offline"),
    "unauthorized": N_("credentials refused"),
}
ROLE_WORDS = {"crew": N_("crew"), "supervisor": N_("supervisor"), "admin": N_("admin")}
# The exemption reasons the seed names; "other" carries a note: stored as "other: NOTE".
EXEMPTIONS = {
    "large_group": N_("large group"),
    "severity": N_("severity of the intervention"),
    "other": N_("other"),
}


def _word(table: dict, code) -> str:
    return gettext(table[code]) if code in table else (code or "")


def sync_word(code: str) -> str:
    """A sync state in words."""
    return _word(SYNC_WORDS, code)


def link_word(code: str) -> str:
    """An upstream link state in words."""
    return _word(LINK_WORDS, code)


def camera_word(code: str) -> str:
    """An RTSP camera's live state in words."""
    return _word(CAMERA_WORDS, code)


def role_name(code: str) -> str:
    """A role in words."""
    return _word(ROLE_WORDS, code)


def split_exemption(stored: str | None) -> tuple[str, str]:
    """(reason code, note) of a stored exemption; free text from before the choices is
    'other' with that text as its note."""
    if not stored:
        return "", ""
    if stored in EXEMPTIONS:
        return stored, ""
    code, sep, note = stored.partition(":")
    if sep and code.strip() in EXEMPTIONS:
        return code.strip(), note.strip()
    return "other", stored


def exemption_words(stored: str | None) -> str:
    """A stored exemption in words, with its note."""
    code, note = split_exemption(stored)
    if not code:
        return ""
    words = gettext(EXEMPTIONS[code])
    return f"{words}: {note}" if note else words


def join_exemption(code: str, note: str) -> str | None:
    """The stored form of an exemption chosen on the form (None when no reason was chosen)."""
    if not code:
        return None
    if code not in EXEMPTIONS:
        raise ValueError(code)
    return f"{code}: {note}" if note else code


def length_seconds(rec: dict) -> float | None:
    """How long a recording runs, from its camera's start and stop times (None if unknown)."""
    try:
        return (parse_rfc3339(rec["stopped_at"]) - parse_rfc3339(rec["started_at"])).total_seconds()
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def length_text(seconds: float | None) -> str:
    """A recording's length as m:ss or h:mm:ss."""
    if seconds is None:
        return gettext("not given")
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


_BADGES = {
    "hold": N_("legal hold"),
    "unanswered": N_("warning not answered"),
    "not_warned": N_("not warned"),
    "short": N_("short pre-event"),
    "upstream": N_("not yet at central"),
}


def badges(rec: dict) -> list[tuple[str, str]]:
    """(css class, words) of what a crew must notice about a recording."""
    if "_badge_words" not in g:  # once per request: a list page asks for fifty cards
        g._badge_words = {code: gettext(text) for code, text in _BADGES.items()}
    say = g._badge_words
    found = []
    if rec.get("legal_hold"):
        found.append(("hold", say["hold"]))
    if rec.get("warned") is None and not rec.get("exemption"):
        found.append(("warn", say["unanswered"]))
    elif rec.get("warned") == 0 and rec.get("exemption"):
        found.append(("info", say["not_warned"]))
    if (rec.get("pre_event_seconds") or 0) < REQUIRED_PRE_EVENT:
        found.append(("warn", say["short"]))
    if rec.get("sync_state") != "synced" and not rec.get("sealed"):
        found.append(("info", say["upstream"]))
    return found


def install(app) -> None:
    """Make the vocabulary available to every template."""
    app.jinja_env.globals.update(
        sync_word=sync_word, link_word=link_word, role_name=role_name, camera_word=camera_word,
        exemption_words=exemption_words, length_text=length_text, badges=badges,
        length_seconds=length_seconds, percent=percent,
    )  # fmt: skip


def percent(fraction: float) -> str:
    """A fraction as a localised percentage."""
    from flask_babel import format_percent

    return format_percent(fraction or 0, "#,##0.0%")
