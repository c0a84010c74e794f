"""The findings of the outside review, each replayed against a real box over HTTPS: sessions
that outlived logout, review unlocks that belonged to the account, an open redirect, login
enumeration and lockout by anyone, 500s on odd input (with a small fuzz), and headers."""

from __future__ import annotations

import http.client
import json
import random
import ssl
from urllib.parse import quote, urlsplit

import pytest

from edgebox.users import BRAKE_FAILURES, FailureLog
from tests.conftest import SECRET
from tests.test_browser import chromium  # noqa: F401 - the fixture
from tests.test_web_api import world  # noqa: F401 - the fixture
from tests.test_web_auth import PASSWORD, browser, login


def _unlock(box, client, token, secret=SECRET):
    return client.post(
        f"{box.url}/api/v1/review/unlock", headers={"X-CSRF-Token": token}, json={"secret": secret}
    )


def _media(box, client, rid):
    return client.get(f"{box.url}/api/v1/recordings/{rid}/media", headers={"Range": "bytes=0-9"})


def _post(box, client, token, path):
    return client.post(f"{box.url}{path}", headers={"X-CSRF-Token": token}, json={})


def test_logout_ends_the_session_on_the_box(world):  # noqa: F811
    box, rid, _ = world
    client, token = login(box, "crew-1")
    cookie = client.cookies.get("edgebox_session")
    assert _post(box, client, token, "/logout").status_code == 200
    replay = browser(box)
    replay.cookies.set("edgebox_session", cookie)
    assert replay.get(f"{box.url}/api/v1/me").status_code == 401
    tagged = replay.post(
        f"{box.url}/api/v1/recordings/{rid}/tags",
        headers={"X-CSRF-Token": token},
        json={"notes": "after logout"},
    )
    assert tagged.status_code == 401, tagged.text
    page = replay.get(f"{box.url}/recordings", allow_redirects=False)
    assert page.status_code == 302 and page.headers["Location"].startswith("/login")
    assert box.store.one("SELECT notes FROM recordings WHERE id = ?", (rid,))["notes"] is None


def test_a_review_unlock_belongs_to_one_session(world):  # noqa: F811
    box, rid, _ = world
    first, token = login(box, "supervisor-1")
    assert _unlock(box, first, token).status_code == 200
    assert _media(box, first, rid).status_code == 206
    second, _ = login(box, "supervisor-1")
    assert _media(box, second, rid).status_code == 403, "a second session starts locked"
    unlocked = box.store.query("SELECT details FROM custody WHERE event = 'review.unlocked'")
    assert json.loads(unlocked[-1]["details"])["slot"] == "supervisor"

    assert _post(box, first, token, "/logout").status_code == 200
    again, token = login(box, "supervisor-1")
    assert _media(box, again, rid).status_code == 403, "a fresh login after logout is locked"

    def ended_by(action) -> int:
        client, token = login(box, "supervisor-1")
        assert _unlock(box, client, token).status_code == 200
        action(client, token)
        fresh, _ = login(box, "supervisor-1")
        assert _media(box, fresh, rid).status_code == 403
        return _media(box, client, rid).status_code

    assert ended_by(lambda c, t: _post(box, c, t, "/logout-everywhere")) == 401
    assert (
        ended_by(
            lambda c, t: (
                box.users.set_disabled("supervisor-1", True),
                box.users.set_disabled("supervisor-1", False),
            )
        )
        == 401
    )
    assert ended_by(lambda c, t: box.users.set_password("supervisor-1", PASSWORD)) == 401


def test_review_secret_guesses_are_braked(world):  # noqa: F811
    box, rid, _ = world
    client, token = login(box, "supervisor-1")
    for _ in range(5):
        assert _unlock(box, client, token, "not the secret").status_code == 403
    braked = _unlock(box, client, token)
    assert braked.status_code == 429 and "try again" in braked.json()["message"]
    other, other_token = login(box, "supervisor-1")
    assert _unlock(box, other, other_token).status_code == 429, "a new session does not reset it"
    assert _media(box, client, rid).status_code == 403
    failed = box.store.query("SELECT details FROM custody WHERE event = 'review.unlock_failed'")
    assert len(failed) == 7


EVIL_NEXT = [
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r\nSet-Cookie: x=1",
    "//evil.example",
    "/\\evil.example",
    "\\/evil.example",
    "https://evil.example/",
    "/ /evil.example",
    "/%09/evil.example",
]


@pytest.mark.parametrize("target", EVIL_NEXT)
def test_login_never_redirects_off_the_box(world, target):  # noqa: F811
    box, _, _ = world
    client = browser(box)
    response = client.post(
        f"{box.url}/login",
        data={"username": "crew-1", "password": PASSWORD, "next": target},
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    resolved = urlsplit(location.replace("\t", "").replace("\\", "/"))
    assert location.startswith("/") and not resolved.netloc, location
    assert not any(ord(c) < 0x20 for c in location)
    form = client.get(f"{box.url}/login", params={"next": target})
    assert form.status_code == 200
    if target not in ("/ /evil.example", "/%09/evil.example"):  # those two are paths on the box
        assert 'name="next" value="/"' in form.text


def test_odd_input_gets_4xx_not_500(world):  # noqa: F811
    box, rid, _ = world
    anonymous = browser(box)
    crlf = anonymous.get(f"{box.url}/recordings/%0d%0aX", allow_redirects=False)
    assert crlf.status_code == 302 and "\n" not in crlf.headers["Location"]
    sup, token = login(box, "supervisor-1")
    assert sup.get(f"{box.url}/recordings/%0d%0aX").status_code == 404
    assert _unlock(box, sup, token).status_code == 200
    media = f"{box.url}/api/v1/recordings/{rid}/media"
    huge = sup.get(media, headers={"Range": "bytes=0-" + "9" * 5000})
    assert huge.status_code == 416, huge.text


def _fuzz_values(rng: random.Random, count: int) -> list[str]:
    alphabet = "0123456789-=,/\\:;% \t\r\n\x00\x7fbytesé?#&.@"
    values = ["bytes=0-" + "9" * n for n in (17, 18, 19, 400, 4301, 5000)]
    values += ["bytes=" + "9" * 5000 + "-", "bytes=-" + "9" * 5000]
    while len(values) < count:
        values.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))))
    return values


def test_fuzz_range_next_and_paths_never_500(world):  # noqa: F811
    """A bounded, seeded fuzz of the three inputs that gave 500s, against the real server."""
    box, rid, _ = world
    rng = random.Random(20)
    sup, token = login(box, "supervisor-1")
    assert _unlock(box, sup, token).status_code == 200
    anonymous = browser(box)
    url = urlsplit(box.url)
    context = ssl.create_default_context(cafile=str(box.keys.tls_cert))
    context.check_hostname = False
    for value in _fuzz_values(rng, 80):
        if value.isprintable() and value == value.strip():  # what an HTTP header can carry
            played = sup.get(f"{box.url}/api/v1/recordings/{rid}/media", headers={"Range": value})
            assert played.status_code in (200, 206, 416), (value, played.status_code)
        logged = anonymous.post(
            f"{box.url}/login",
            data={"username": "crew-1", "password": PASSWORD, "next": value},
            allow_redirects=False,
        )
        assert logged.status_code == 302, (value, logged.status_code)
        for client in (anonymous, sup):
            page = client.get(
                f"{box.url}/recordings/{quote(value, safe='')}", allow_redirects=False
            )
            assert page.status_code in (302, 404), (value, page.status_code)
        raw = http.client.HTTPSConnection(url.hostname, url.port, context=context, timeout=10)
        raw.request("GET", "/login?next=" + quote(value, safe=""))
        assert raw.getresponse().status == 200, value
        raw.close()


def test_headers_on_pages_and_api(world):  # noqa: F811
    box, rid, _ = world
    client, _ = login(box, "supervisor-1")
    for path in (
        "/",
        "/recordings",
        f"/recordings/{rid}",
        "/api/v1/recordings",
        f"/api/v1/recordings/{rid}",
        "/api/v1/status",
        "/audit",
        "/login",
    ):
        response = client.get(f"{box.url}{path}")
        assert response.status_code == 200, path
        assert response.headers["Cache-Control"] == "no-store", path
        assert response.headers["Strict-Transport-Security"].startswith("max-age="), path


def test_status_shows_paths_and_pids_to_admins_only(world):  # noqa: F811
    box, _, _ = world
    crew, _ = login(box, "crew-1")
    admin, _ = login(box, "admin-1")
    mine = crew.get(f"{box.url}/api/v1/status").text
    full = admin.get(f"{box.url}/api/v1/status").text
    assert str(box.data_dir) in full and '"pid"' in full
    assert str(box.data_dir) not in mine and '"pid"' not in mine
    assert json.loads(mine)["box_id"] == "test-box" and "recordings" in json.loads(mine)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "same-site"},
    ],
)
def test_login_refuses_cross_site_posts(world, headers):  # noqa: F811
    box, _, _ = world
    client = browser(box)
    body = {"username": "crew-1", "password": PASSWORD}
    refused = client.post(f"{box.url}/login", data=body, headers=headers, allow_redirects=False)
    assert refused.status_code == 403 and "edgebox_session" not in refused.cookies
    same = {"Origin": box.url, "Sec-Fetch-Site": "same-origin"}
    assert client.post(f"{box.url}/login", data=body, headers=same).status_code == 200
    own_form = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}  # Chromium, no-referrer
    assert client.post(f"{box.url}/login", data=body, headers=own_form).status_code == 200


def _login_from(box, source: str, username: str, password: str) -> int:
    url = urlsplit(box.url)
    context = ssl.create_default_context(cafile=str(box.keys.tls_cert))
    context.check_hostname = False
    conn = http.client.HTTPSConnection(
        url.hostname, url.port, context=context, timeout=10, source_address=(source, 0)
    )
    body = json.dumps({"username": username, "password": password})
    conn.request("POST", "/login", body, {"Content-Type": "application/json"})
    status = conn.getresponse().status
    conn.close()
    return status


def test_failed_logins_brake_the_source_and_the_name(world):  # noqa: F811
    box, _, _ = world
    for n in range(BRAKE_FAILURES):  # invented names: the source is what is braked
        assert _login_from(box, "127.0.0.2", f"nobody{n}", "guess") == 401
    assert _login_from(box, "127.0.0.2", "crew-1", PASSWORD) == 429
    assert _login_from(box, "127.0.0.3", "crew-1", PASSWORD) == 200, "other sources may log in"
    for n in range(BRAKE_FAILURES):  # one name from many sources: the name is braked
        assert _login_from(box, f"127.0.1.{n + 1}", "ghost", "guess") == 401
    assert _login_from(box, "127.0.2.1", "ghost", "guess") == 429
    known, _ = login(box, "admin-1")  # this browser has logged in as admin-1 before
    for n in range(BRAKE_FAILURES):
        assert _login_from(box, f"127.0.3.{n + 1}", "admin-1", "guess") == 401
    assert _login_from(box, "127.0.4.1", "admin-1", "guess") == 429, "known names alike"
    body = {"username": "admin-1", "password": PASSWORD}
    assert browser(box).post(f"{box.url}/login", json=body).status_code == 429
    again = known.post(f"{box.url}/login", json=body)
    assert again.status_code == 200, "failures elsewhere cannot keep the owner out"
    forged = browser(box)
    forged.cookies.set("edgebox_device", known.cookies.get("edgebox_device") + "x")
    assert forged.post(f"{box.url}/login", json=body).status_code == 429


def test_failed_logins_write_a_bounded_number_of_custody_entries(box):
    now = [0.0]
    log = FailureLog(box.store, per_window=3, window=60, clock=lambda: now[0])
    for n in range(50):
        log.failed(f"name{n}", f"10.0.0.{n % 4}", "unknown user")
    count = "SELECT COUNT(*) AS n FROM custody WHERE event = 'user.login_failed'"
    assert box.store.one(count)["n"] == 3
    now[0] = 61
    log.flush()
    rows = box.store.query("SELECT details FROM custody WHERE event = 'user.login_failed'")
    assert len(rows) == 4
    summary = json.loads(rows[-1]["details"])
    assert summary["reason"] == "aggregated" and summary["failures"] == 47
    assert sum(summary["sources"].values()) == 47


def test_a_cross_site_form_cannot_log_in_through_a_real_browser(world, chromium):  # noqa: F811
    """Chromium submits a login form from a page of another origin: refused, no session; the
    box's own form in the same browser logs in (Origin null, Sec-Fetch-Site same-origin)."""
    box, _, _ = world
    context = chromium.new_context()
    page = context.new_page()
    page.set_content(
        f'<form method="post" action="{box.url}/login">'
        '<input name="username" value="crew-1">'
        f'<input name="password" value="{PASSWORD}"><button>go</button></form>'
    )
    with page.expect_navigation():
        page.click("button")
    assert "cross-site requests are refused" in page.content()
    assert not [c for c in context.cookies() if c["name"] == "edgebox_session"]
    page.goto(f"{box.url}/login")
    page.get_by_label("User name").fill("crew-1")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("button", name="Log out").wait_for()
    context.close()
