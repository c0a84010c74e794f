"""The UI in English, Dutch, French and German: the catalogs are complete and sound, and no
page shown in a language carries a string left in English (or never marked for translation)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from edgebox import catalog as recordings_catalog
from tests.conftest import SECRET
from tests.test_ingest import upload_all
from tests.test_web_auth import PASSWORD, browser
from tests.test_web_pages import token

ROOT = Path(__file__).resolve().parents[1]
CATALOGS = ROOT / "web" / "translations"
LANGUAGES = ("en", "nl", "fr", "de")
TRANSLATED = ("nl", "fr", "de")
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def catalog(language: str):
    """The committed catalog of a language."""
    with (CATALOGS / language / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        return read_po(handle, locale=language)


def _forms(value) -> list[str]:
    return list(value) if isinstance(value, tuple | list) else [value]


def catalog_problems(language: str, wanted: set) -> list[str]:
    """Every way the catalog of `language` falls short of the marked strings `wanted`."""
    problems = []
    held = {m.id if isinstance(m.id, str) else tuple(m.id): m for m in catalog(language) if m.id}
    for key in sorted(wanted - set(held), key=str):
        problems.append(f"{language}: {key!r} is marked in the code but not in the catalog")
    for key, message in held.items():
        if message.fuzzy:
            problems.append(f"{language}: {key!r} is fuzzy")
        strings = _forms(message.string)
        if not all(strings):
            problems.append(f"{language}: {key!r} is not translated")
            continue
        expected = set(PLACEHOLDER.findall(" ".join(_forms(key))))
        for text in strings:
            if set(PLACEHOLDER.findall(text)) != expected:
                problems.append(f"{language}: {key!r} -> {text!r}: placeholders differ")
    return problems


@pytest.fixture(scope="module")
def marked(tmp_path_factory) -> set:
    """Every string the templates and the web layer mark, extracted afresh with pybabel."""
    pot = tmp_path_factory.mktemp("pot") / "messages.pot"
    pybabel = str(Path(sys.executable).with_name("pybabel"))  # beside this venv's python
    subprocess.run(
        [pybabel, "extract", "-F", "babel.cfg", "-k", "N_", "-k", "_", "-o", str(pot), "."],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    with pot.open("rb") as handle:
        return {m.id if isinstance(m.id, str) else tuple(m.id) for m in read_po(handle) if m.id}


@pytest.mark.parametrize("language", LANGUAGES)
def test_catalog_is_complete_without_fuzzy_entries_and_placeholders_match(language, marked):
    assert len(marked) > 150
    assert catalog_problems(language, marked) == []


def test_the_catalog_check_sees_a_gap(tmp_path, marked, monkeypatch):
    broken = tmp_path / "nl" / "LC_MESSAGES"
    broken.mkdir(parents=True)
    text = (CATALOGS / "nl" / "LC_MESSAGES" / "messages.po").read_text()
    text = text.replace('msgstr "Opnames"', 'msgstr ""', 1)
    text = text.replace('msgstr "Geldig tot %(time)s."', 'msgstr "Geldig tot %(tijd)s."', 1)
    text = text.replace('msgid "Tag"\n', '#, fuzzy\nmsgid "Tag"\n', 1)
    (broken / "messages.po").write_text(text)
    monkeypatch.setitem(globals(), "CATALOGS", tmp_path)
    problems = catalog_problems("nl", marked | {"A string nobody translated"})
    assert any("'Recordings' is not translated" in p for p in problems), problems
    assert any("placeholders differ" in p for p in problems), problems
    assert any("'Tag' is fuzzy" in p for p in problems), problems
    assert any("nobody translated" in p and "not in the catalog" in p for p in problems)


class _Visible(HTMLParser):
    """The text a reader sees or hears: text nodes and the alt, aria-label, placeholder and
    title attributes, in document order (scripts and styles left out)."""

    def __init__(self):
        super().__init__()
        self.texts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        for name, value in attrs:
            if name in ("alt", "aria-label", "placeholder", "title") and value and value.strip():
                self.texts.append(" ".join(value.split()))

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.texts.append(" ".join(data.split()))


def visible(html: str) -> list[str]:
    """The visible texts of a page."""
    parser = _Visible()
    parser.feed(html)
    return parser.texts


_WORD = re.compile(r"[^\W\d_]{2,}")
_HEX = re.compile(r"\b[0-9a-f]{8,}\b")


def untranslated(english: list[str], other: list[str], language: str, data: set) -> list[str]:
    """Texts of a page in `language` left as in English: the same page renders the same nodes,
    so a node equal to its English twin is untranslated unless the language really writes it
    the same (a catalog entry says so) or it is nothing but data (names, serials, events)."""
    if len(english) != len(other):
        return [f"{language}: {len(other)} texts where English has {len(english)}"]
    same_words = {
        word
        for message in catalog(language)
        if message.id
        for form, text in zip(_forms(message.id), _forms(message.string), strict=False)
        if form == text
        for word in _WORD.findall(form)
    }
    problems = []
    for en, text in zip(english, other, strict=True):
        if en != text:
            continue
        words = _WORD.findall(_HEX.sub(" ", text))
        leftover = [w for w in words if w not in data and w not in same_words]
        if leftover:
            problems.append(f"{language}: {text!r} is still English ({leftover})")
    return problems


def test_the_page_check_sees_an_unmarked_string():
    english = ["Recordings", "CAM-0001", "Press here"]
    dutch = ["Opnames", "CAM-0001", "Press here"]
    problems = untranslated(english, dutch, "nl", {"CAM"})
    assert problems == ["nl: 'Press here' is still English (['Press', 'here'])"]


def _data_words(box) -> set:
    """Words that are data, the same in every language: what the box and its fixtures hold."""
    rows = [
        *box.store.query("SELECT event, actor, subject, details FROM custody"),
        *box.store.query("SELECT serial, model FROM devices"),
        *box.store.query("SELECT username, role FROM users"),
        *box.store.query("SELECT serial, user_id, category, incident, sync_state FROM recordings"),
    ]
    text = json.dumps(rows) + json.dumps(box.config.to_dict(), default=str)
    text += " EdgeBox English Nederlands Français Deutsch SHA True False INC"
    return set(_WORD.findall(text))


@pytest.fixture
def site(box, camera):
    for role in ("crew", "supervisor", "admin"):
        box.users.add(f"{role}-1", role, PASSWORD)
    times = {"started_at": "2026-12-06T20:00:00Z", "stopped_at": "2026-12-06T20:10:00Z"}
    response, _ = upload_all(camera, os.urandom(300_000), metadata=times)
    upload_all(camera, os.urandom(1000), metadata=times)
    for row in box.store.query("SELECT id FROM recordings"):  # one incident: its timeline shows
        recordings_catalog.tag(box.store, row["id"], {"incident": "INC-1"}, "user:crew-1")
    return box, response.headers["EdgeBox-Recording-Id"]


def _client(box, username: str | None, language: str):
    client = browser(box)
    client.headers["Accept-Language"] = f"{language};q=1.0, en;q=0.5"
    if username:
        page = client.post(f"{box.url}/login", data={"username": username, "password": PASSWORD})
        assert page.status_code == 200
    return client


def _pages(box, rid: str, language: str) -> dict[str, str]:
    """Every page as each role sees it, in `language`."""
    pages = {"login": _client(box, None, language).get(f"{box.url}/login").text}
    admin = _client(box, "admin-1", language)
    # The audit page lists the custody log, which every login here lengthens: one event only.
    for path in (
        "/",
        "/recordings",
        "/cameras",
        "/users",
        "/settings",
        "/audit?event=user.added",
        "/compliance",
    ):
        pages[f"admin {path}"] = admin.get(f"{box.url}{path}").text
    crew = _client(box, "crew-1", language)
    pages["crew recording"] = crew.get(f"{box.url}/recordings/{rid}").text
    pages["crew recordings"] = crew.get(f"{box.url}/recordings?range=shift").text
    supervisor = _client(box, "supervisor-1", language)
    pages["supervisor recording locked"] = supervisor.get(f"{box.url}/recordings/{rid}").text
    pages["supervisor recordings locked"] = supervisor.get(f"{box.url}/recordings").text
    supervisor.post(
        f"{box.url}/review/unlock",
        data={"secret": SECRET, "recording": rid, "csrf_token": token(pages["admin /"])},
    )
    return pages


def test_no_page_in_any_language_shows_an_untranslated_string(site):
    box, rid = site
    english = _pages(box, rid, "en")
    assert "Log out" in english["admin /"] and "Save tags" in english["crew recording"]
    data = _data_words(box)
    problems = []
    for language in TRANSLATED:
        pages = _pages(box, rid, language)
        assert f'<html lang="{language}">' in pages["login"]
        for name, html in pages.items():
            found = untranslated(visible(english[name]), visible(html), language, data)
            problems += [f"{name}: {p}" for p in found]
    assert problems == [], "\n".join(problems)


def test_the_language_follows_the_user_then_the_browser(site):
    box, _ = site
    client = _client(box, "crew-1", "fr")
    page = client.get(f"{box.url}/recordings")
    assert "Enregistrements" in page.text
    chosen = client.post(
        f"{box.url}/language",
        data={"language": "de", "next": "/recordings", "csrf_token": token(page.text)},
    )
    assert chosen.status_code == 200 and "Aufnahmen" in chosen.text
    assert box.store.one("SELECT language FROM users WHERE username = 'crew-1'")["language"] == "de"
    # Another device of the same user, whose browser asks for Dutch, follows the user's choice.
    assert "Aufnahmen" in _client(box, "crew-1", "nl").get(f"{box.url}/recordings").text
    # Bad input: a clear 400 and nothing changed.
    bad = client.post(
        f"{box.url}/language", data={"language": "xx", "csrf_token": token(chosen.text)}
    )
    assert bad.status_code == 400 and bad.json()["field"] == "language"
    assert box.store.one("SELECT language FROM users WHERE username = 'crew-1'")["language"] == "de"


def test_api_errors_keep_their_code_and_translate_their_message(site):
    box, _ = site
    for language, words in (("en", "log in first"), ("fr", "connectez-vous d’abord")):
        answer = _client(box, None, language).get(f"{box.url}/api/v1/recordings")
        assert answer.status_code == 401
        assert answer.json() == {"error": "AuthError", "message": words}


def test_dates_and_sizes_are_written_the_local_way(site):
    box, rid = site
    size = box.store.one("SELECT size FROM recordings WHERE id = ?", (rid,))["size"]
    assert 300_000 <= size < 400_000
    pages = {
        language: _client(box, "crew-1", language).get(f"{box.url}/recordings/{rid}").text
        for language in ("en", "nl", "de")
    }
    assert re.search(r"\b300\.0 kB\b", pages["en"]), re.findall(r"[\d.,]+\s*kB", pages["en"])
    assert re.search(r"\b300,0 kB\b", pages["nl"]), re.findall(r"[\d.,]+\s*kB", pages["nl"])
    month = {"en": r"\b[A-Z][a-z]{2} \d{1,2}, 20\d\d", "nl": r"\b\d{1,2} [a-z]{3}\.? 20\d\d",
             "de": r"\b\d{2}\.\d{2}\.20\d\d"}  # fmt: skip
    for language, pattern in month.items():
        assert re.search(pattern, pages[language]), (language, pattern)
