"""The UI's languages (English, Dutch, French, German) with Flask-Babel: which language a
request gets, the switch on every page, and the filters that write dates, times, numbers,
sizes and durations the way each language does.

The language is the user's own choice (users.language), else the one chosen on this device
before logging in (the session), else the browser's Accept-Language, else the box default.
Times are shown in the crews' time zone (`ui.timezone`), stored in UTC as always.
"""

from __future__ import annotations

import datetime as dt
import functools

from babel import dates, numbers
from babel.units import format_unit
from flask import Blueprint, current_app, g, redirect, request, session
from flask_babel import Babel, get_locale, get_timezone, gettext

from edgebox.clock import parse_rfc3339
from edgebox.config import UI_LANGUAGES
from edgebox.errors import EdgeboxError

LANGUAGE_NAMES = {"en": "English", "nl": "Nederlands", "fr": "Français", "de": "Deutsch"}
i18n = Blueprint("i18n", __name__)


def select_language() -> str:
    """The language of this request (see the module docstring for the order)."""
    from edgebox.web.auth import current_user

    user = current_user()
    if user and user.get("language") in UI_LANGUAGES:
        return user["language"]
    if session.get("lang") in UI_LANGUAGES:
        return session["lang"]
    box = current_app.extensions["edgebox"]
    return request.accept_languages.best_match(UI_LANGUAGES) or box.config.ui.default_language


def init_app(app, box) -> None:
    """Attach Flask-Babel (catalogs from web/translations) and the localising filters."""
    from edgebox.web import assets_dir

    Babel(
        app,
        locale_selector=select_language,
        timezone_selector=lambda: box.config.ui.timezone,
        default_translation_directories=str(assets_dir() / "translations"),
    )
    app.jinja_env.filters.update(when=when, size=size, number=number, clock=clock)
    app.jinja_env.globals.update(languages=LANGUAGE_NAMES, current_language=current_language)
    app.register_blueprint(i18n)


def current_language() -> str:
    """The two-letter code of the language this page is in."""
    return str(get_locale() or "en")


def _moment(value) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value
    try:
        return parse_rfc3339(str(value))
    except ValueError:
        return None


def _locale_and_zone():
    """This request's Babel locale and time zone, looked up once per request (a page of fifty
    cards formats a hundred values; Flask-Babel's own helpers look both up on every call)."""
    if "_babel_formats" not in g:
        g._babel_formats = (get_locale(), get_timezone())
    return g._babel_formats


def when(value, form: str = "medium") -> str:
    """A stored UTC time as this language writes it, in the crews' time zone ("" if none)."""
    return _formatted("datetime", value, form, *_locale_and_zone())


def clock(value) -> str:
    """Only the time of day of a stored UTC time, localised."""
    return _formatted("time", value, "medium", *_locale_and_zone())


@functools.lru_cache(maxsize=8192)
def _formatted(kind: str, value, form: str, locale, zone) -> str:
    """Babel's formatting, remembered: a list page shows the same times on every refresh, and
    Babel spends tens of microseconds on each."""
    moment = _moment(value)
    if not moment:
        return ""
    format_ = dates.format_datetime if kind == "datetime" else dates.format_time
    return format_(moment, form, tzinfo=zone, locale=locale)


def number(value, digits: int = 0) -> str:
    """A number with this language's separators."""
    pattern = "#,##0" + ("." + "0" * digits if digits else "")
    return numbers.format_decimal(value, format=pattern, locale=_locale_and_zone()[0])


def size(value) -> str:
    """A byte count as kB, MB or GB (decimal units, as disks are sold), localised."""
    value = float(value or 0)
    for unit, scale in (("gigabyte", 1e9), ("megabyte", 1e6), ("kilobyte", 1e3)):
        if value >= scale:
            return format_unit(
                value / scale, f"digital-{unit}", length="short", format="#,##0.0",
                locale=_locale_and_zone()[0],
            )  # fmt: skip
    return format_unit(value, "digital-byte", length="short", locale=_locale_and_zone()[0])


def translated(exc: EdgeboxError) -> str:
    """The message of an error in the reader's language when the catalogs know it (its
    English text is its stable key; messages carrying values stay English)."""
    return gettext(exc.message)


@i18n.post("/language")
def choose_language():
    """Switch the UI language (for the user's account when logged in, else this browser)."""
    from edgebox.web.auth import current_user

    language = request.form.get("language", "")
    if language not in UI_LANGUAGES:
        raise EdgeboxError(
            f"language must be one of {', '.join(UI_LANGUAGES)}", status=400, field="language"
        )
    session["lang"] = language
    user = current_user()
    if user:
        current_app.extensions["edgebox"].users.set_language(user["id"], language)
    target = request.form.get("next", "/")
    return redirect(target if target.startswith("/") and not target.startswith("//") else "/")
