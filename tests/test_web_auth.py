"""Logins, sessions, CSRF and roles over the real HTTPS server."""

from __future__ import annotations

import json

import pytest
import requests

from tests.conftest import run_cli

PASSWORD = "correct horse battery"


def browser(box) -> requests.Session:
    """A cookie-keeping HTTPS client that trusts the box's certificate."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(box.keys.tls_cert)
    return session


def login(box, username: str, password: str = PASSWORD) -> tuple[requests.Session, str]:
    """Log in through the JSON login; returns the session and its CSRF token."""
    client = browser(box)
    response = client.post(f"{box.url}/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return client, response.json()["csrf_token"]


@pytest.fixture
def people(box):
    """One user per role."""
    for name, role in (("ann", "crew"), ("sam", "supervisor"), ("ida", "admin")):
        box.users.add(name, role, PASSWORD)
    return box


def test_users_cli(box_config, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    added = run_cli(
        "users",
        "add",
        "kim",
        "--role",
        "supervisor",
        "--password-file",
        str(secret),
        "--json",
        config=box_config,
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["role"] == "supervisor"
    short = tmp_path / "short"
    short.write_text("short")
    refused = run_cli(
        "users", "add", "lee", "--role", "crew", "--password-file", str(short), config=box_config
    )
    assert refused.returncode == 2 and "at least 10 characters" in refused.stderr
    again = run_cli(
        "users", "add", "kim", "--role", "crew", "--password-file", str(secret), config=box_config
    )
    assert again.returncode == 2 and "already exists" in again.stderr
    listed = json.loads(run_cli("users", "list", "--json", config=box_config).stdout)
    assert [u["username"] for u in listed] == ["kim"] and "password_hash" not in listed[0]
    assert run_cli("users", "disable", "kim", config=box_config).returncode == 0
    assert json.loads(run_cli("users", "list", "--json", config=box_config).stdout)[0]["disabled"]


def test_anonymous_is_turned_away(people):
    client = browser(people)
    page = client.get(f"{people.url}/", allow_redirects=False)
    assert page.status_code == 302 and page.headers["Location"].startswith("/login")
    api = client.get(f"{people.url}/api/v1/recordings")
    assert api.status_code == 401 and api.json()["message"] == "log in first"
    assert client.get(f"{people.url}/login").status_code == 200


def test_session_cookie_flags_and_headers(people):
    client = browser(people)
    response = client.post(f"{people.url}/login", json={"username": "sam", "password": PASSWORD})
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    csp = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "default-src 'self'" in csp
    assert client.get(f"{people.url}/api/v1/recordings").status_code == 200


def test_unknown_disabled_and_wrong_answer_alike_and_nothing_locks(people):
    people.users.add("dee", "crew", PASSWORD)
    people.users.set_disabled("dee", True)
    client = browser(people)
    answers = [
        client.post(f"{people.url}/login", json={"username": name, "password": password})
        for name, password in (("ann", "nope"), ("zed", PASSWORD), ("dee", PASSWORD))
    ]
    assert {(a.status_code, a.text) for a in answers} == {(401, answers[0].text)}, (
        "unknown, disabled and wrong password must be indistinguishable"
    )
    assert answers[0].json()["message"] == "wrong user name or password"
    for _ in range(6):  # more than the old lockout's five
        client.post(f"{people.url}/login", json={"username": "ann", "password": "nope"})
    assert (
        client.post(
            f"{people.url}/login", json={"username": "ann", "password": PASSWORD}
        ).status_code
        == 200
    ), "a few wrong guesses by anyone must not lock the account"
    events = people.store.query("SELECT details FROM custody WHERE event = 'user.login_failed'")
    assert len(events) == 9
    assert {json.loads(e["details"])["reason"] for e in events} == {
        "wrong password",
        "unknown user",
        "disabled",
    }


def test_csrf_is_required_for_state_changes(people):
    client, token = login(people, "sam")
    refused = client.post(f"{people.url}/logout-everywhere", json={})
    assert refused.status_code == 403 and "CSRF" in refused.json()["message"]
    wrong = client.post(
        f"{people.url}/logout-everywhere", json={}, headers={"X-CSRF-Token": "x" * 43}
    )
    assert wrong.status_code == 403
    assert client.get(f"{people.url}/api/v1/recordings").status_code == 200  # nothing changed


def test_logout_everywhere_ends_other_sessions(people):
    phone, _ = login(people, "sam")
    tablet, token = login(people, "sam")
    done = tablet.post(f"{people.url}/logout-everywhere", json={}, headers={"X-CSRF-Token": token})
    assert done.status_code == 200
    assert phone.get(f"{people.url}/api/v1/recordings").status_code == 401


def test_login_replaces_any_planted_session(people):
    attacker, attacker_token = login(people, "ann")
    planted = attacker.cookies.get("edgebox_session")
    victim = browser(people)
    victim.cookies.set("edgebox_session", planted)
    response = victim.post(f"{people.url}/login", json={"username": "sam", "password": PASSWORD})
    assert response.json()["username"] == "sam"
    issued = response.cookies.get("edgebox_session")
    assert issued and issued != planted
    assert response.json()["csrf_token"] != attacker_token
    fresh = browser(people)
    fresh.cookies.set("edgebox_session", issued)
    assert fresh.get(f"{people.url}/api/v1/me").json()["username"] == "sam"


def test_disabling_a_user_ends_their_session(people):
    client, _ = login(people, "ann")
    people.users.set_disabled("ann", True)
    assert client.get(f"{people.url}/api/v1/recordings").status_code == 401
    refused = browser(people).post(
        f"{people.url}/login", json={"username": "ann", "password": PASSWORD}
    )
    assert refused.status_code == 401


def test_cameras_need_no_session_or_csrf(people, camera):
    response = camera.create(10)
    assert response.status_code == 201
