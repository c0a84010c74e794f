"""The pages over real HTTPS, as each role sees them; forms with CSRF; hostile input is inert."""

from __future__ import annotations

import os
import re

import pytest

from tests.conftest import SECRET
from tests.test_ingest import upload_all
from tests.test_web_auth import PASSWORD, browser

PAGES = {
    "/": ("crew", "supervisor", "admin"),
    "/dashboard/live": ("crew", "supervisor", "admin"),
    "/recordings": ("crew", "supervisor", "admin"),
    "/cameras": ("supervisor", "admin"),
    "/audit": ("supervisor", "admin"),
    "/users": ("admin",),
    "/settings": ("admin",),
}


def form_login(box, username: str):
    """Log in through the HTML form, as a person would."""
    client = browser(box)
    page = client.post(f"{box.url}/login", data={"username": username, "password": PASSWORD})
    assert page.status_code == 200 and "Log out" in page.text
    return client


def token(page_text: str) -> str:
    """The CSRF token a page's forms carry."""
    return re.search(r'name="csrf_token" value="([^"]+)"', page_text).group(1)


@pytest.fixture
def site(box, camera):
    for role in ("crew", "supervisor", "admin"):
        box.users.add(f"{role}-1", role, PASSWORD)
    response, _ = upload_all(camera, os.urandom(500_000))
    return box, response.headers["EdgeBox-Recording-Id"]


@pytest.mark.parametrize("path", list(PAGES))
def test_each_page_for_each_role(site, path):
    box, rid = site
    for role in ("crew", "supervisor", "admin"):
        page = form_login(box, f"{role}-1").get(f"{box.url}{path}")
        expected = 200 if role in PAGES[path] else 403
        assert page.status_code == expected, f"{role} {path}"
    assert browser(box).get(f"{box.url}{path}", allow_redirects=False).status_code == 302


def test_recording_page_tags_hold_unlock_and_xss(site):
    box, rid = site
    crew = form_login(box, "crew-1")
    page = crew.get(f"{box.url}/recordings/{rid}")
    assert "Save tags" in page.text and "Place hold" not in page.text
    evil = '<script>alert("x")</script>'
    saved = crew.post(
        f"{box.url}/recordings/{rid}/tags",
        data={"csrf_token": token(page.text), "incident": "INC-9", "notes": evil, "warned": "yes"},
    )
    assert "tags saved" in saved.text
    assert (
        evil not in saved.text and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in saved.text
    )
    forged = crew.post(f"{box.url}/recordings/{rid}/tags", data={"incident": "FORGED"})
    assert forged.status_code == 403
    assert (
        box.store.one("SELECT incident FROM recordings WHERE id = ?", (rid,))["incident"] == "INC-9"
    )
    supervisor = form_login(box, "supervisor-1")
    page = supervisor.get(f"{box.url}/recordings/{rid}")
    held = supervisor.post(
        f"{box.url}/recordings/{rid}/hold",
        data={"csrf_token": token(page.text), "hold": "place", "reason": "prosecutor asked"},
    )
    assert "legal hold placed" in held.text and "legal hold</span>" in held.text
    unlocked = supervisor.post(
        f"{box.url}/review/unlock",
        data={"csrf_token": token(held.text), "secret": SECRET, "recording": rid},
    )
    assert f'src="/api/v1/recordings/{rid}/media"' in unlocked.text
    video = supervisor.get(
        f"{box.url}/api/v1/recordings/{rid}/media", headers={"Range": "bytes=0-99"}
    )
    assert video.status_code == 206 and len(video.content) == 100


def test_filters_on_the_page_and_sql_injection(site):
    box, rid = site
    crew = form_login(box, "crew-1")
    shown = crew.get(f"{box.url}/recordings", params={"gap": "warning"})
    assert f'id="rec-{rid}"' in shown.text
    injected = crew.get(f"{box.url}/recordings", params={"camera": "' OR 1=1 --"})
    assert injected.status_code == 200 and f'id="rec-{rid}"' not in injected.text
    bad = crew.get(f"{box.url}/recordings", params={"from": "'; DROP TABLE recordings; --"})
    assert "must be an RFC 3339 time" in bad.text
    assert box.store.one("SELECT COUNT(*) AS n FROM recordings")["n"] == 1


def test_admin_pairs_a_camera_with_a_qr_code(site):
    box, _ = site
    admin = form_login(box, "admin-1")
    page = admin.get(f"{box.url}/cameras")
    paired = admin.post(f"{box.url}/cameras/pair", data={"csrf_token": token(page.text)})
    code = re.search(r'id="pairing-code">([A-Z0-9]{10})<', paired.text).group(1)
    assert 'src="data:image/svg+xml' in paired.text
    from tests.conftest import enroll

    enroll(box.url, box.keys.tls_cert, code, serial="CAM-QR")
    assert "CAM-QR" in admin.get(f"{box.url}/cameras").text


def test_audit_page_verifies_the_chain(site):
    box, _ = site
    admin = form_login(box, "admin-1")
    page = admin.get(f"{box.url}/audit")
    verified = admin.post(f"{box.url}/audit", data={"csrf_token": token(page.text)})
    assert "Intact" in verified.text
