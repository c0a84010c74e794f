"""The web UI in Debian's real Chromium: pair a camera from the page, watch its recording appear
on the live dashboard, tag it, unlock review and play and seek it, revoke the camera; every page
is screenshotted into test-artifacts/ui/ and checked with axe-core."""

from __future__ import annotations

import datetime as dt
import functools
import subprocess
import sys

import pytest
from playwright.sync_api import expect, sync_playwright

from edgebox.clips import make_clip
from tests.chromium import accessibility_problems, launch, log_in, shot, words
from tests.conftest import SECRET
from tests.test_ingest import upload_all
from tests.test_web_auth import PASSWORD

WAIT_MS = 120_000  # the camera renders a real H.264 clip first; the machine is shared


@pytest.fixture
def site(box):
    """The in-process box with one user per role."""
    for role in ("crew", "supervisor", "admin"):
        box.users.add(f"{role}-1", role, PASSWORD)
    return box


@pytest.fixture
def chromium(box):
    """Chromium trusting the box's certificate; closed after the test."""
    with sync_playwright() as playwright:
        browser = launch(playwright, box.keys.tls_cert)
        yield browser
        browser.close()


def play_and_seek(page) -> dict:
    """Start the page's video, wait until it really plays, seek near the end; report state."""
    page.wait_for_function(
        "() => document.querySelector('#player').readyState >= 1", timeout=WAIT_MS
    )
    page.evaluate(
        "() => { const v = document.querySelector('#player'); v.muted = true; v.play(); }"
    )
    page.wait_for_function(
        "() => { const v = document.querySelector('#player');"
        " return !v.paused && v.currentTime > 0.5; }",
        timeout=WAIT_MS,
    )
    target = page.evaluate(
        """() => new Promise((resolve) => {
             const v = document.querySelector('#player');
             const target = Math.max(0, v.duration - 3);
             v.addEventListener('seeked', () => resolve(target), { once: true });
             v.currentTime = target;
           })"""
    )
    return page.evaluate(
        """(target) => { const v = document.querySelector('#player');
             return { target, at: v.currentTime, duration: v.duration,
                      error: v.error && v.error.code }; }""",
        target,
    )


def test_pair_watch_tag_play_and_revoke_in_dutch(site, chromium, tmp_path):
    """The whole journey with the UI switched to Dutch on the login page."""
    box = site
    t = functools.partial(words, "nl")
    admin = log_in(chromium, box.url, "admin-1", PASSWORD, "nl")
    admin.goto(f"{box.url}/cameras")
    admin.get_by_role("button", name=t("Pair a camera")).click()
    code = admin.locator("#pairing-code").inner_text().strip()
    fingerprint = admin.locator("#pairing-cert").inner_text().strip()
    qr = admin.get_by_alt_text(
        t("QR code with the pairing code and the box certificate fingerprint")
    )
    assert qr.evaluate("img => img.complete && img.naturalWidth > 0")
    shot(admin, "cameras-pairing")

    crew = log_in(chromium, box.url, "crew-1", PASSWORD, "nl")
    expect(crew.locator("#latest ~ p")).to_have_text(t("None yet."))
    camera = subprocess.Popen(
        [
            sys.executable, "-m", "edgebox", "camera-sim", "--state", str(tmp_path / "cam"),
            "--box-url", box.url, "--code", code, "--cert-sha256", fingerprint,
            "--seconds", "33", "--clips", "1", "--user-id", "officer-7", "--category", "traffic",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        # The dashboard is not reloaded: its live region picks the recording up by itself.
        arrived = crew.locator("#live a[href^='/recordings/']")
        arrived.wait_for(timeout=WAIT_MS)
        output, _ = camera.communicate(timeout=WAIT_MS / 1000)
    finally:
        camera.kill()
    assert camera.returncode == 0 and "1 of 1 clip(s) delivered" in output, output
    assert int(crew.evaluate("() => document.querySelector('#live').dataset.refreshed")) >= 1
    assert crew.url.rstrip("/") == box.url
    shot(crew, "dashboard-live")
    rid = arrived.get_attribute("href").rsplit("/", 1)[1]

    arrived.click()
    crew.get_by_label(t("Incident number")).fill("INC-2026-0042")
    crew.get_by_label(t("yes"), exact=True).check()
    crew.get_by_label(t("Notes"), exact=True).fill(
        'Stopped vehicle on A1. <script>alert("x")</script>'
    )
    crew.get_by_role("button", name=t("Save tags")).click()
    expect(crew.get_by_role("status")).to_contain_text(t("tags saved"))
    expect(crew.locator(".notes")).to_have_text(
        'Stopped vehicle on A1. <script>alert("x")</script>'
    )
    expect(crew.locator("html")).to_have_attribute("lang", "nl")
    shot(crew, "recording-tagged-nl")
    row = box.store.one("SELECT incident, warned FROM recordings WHERE id = ?", (rid,))
    assert (row["incident"], row["warned"]) == ("INC-2026-0042", 1)

    supervisor = log_in(chromium, box.url, "supervisor-1", PASSWORD, "nl")
    supervisor.goto(f"{box.url}/recordings/{rid}")
    supervisor.get_by_label(t("Your review secret")).fill(SECRET)
    supervisor.get_by_role("button", name=t("Unlock review")).click()
    state = play_and_seek(supervisor)
    assert state["error"] is None and 32 <= state["duration"] <= 34, state
    assert abs(state["at"] - state["target"]) < 1.5, state
    shot(supervisor, "playback")
    viewed = box.store.query(
        "SELECT actor FROM custody WHERE event = 'recording.viewed' AND subject = ?", (rid,)
    )
    assert [r["actor"] for r in viewed][:1] == ["supervisor-1"]

    admin.goto(f"{box.url}/cameras")
    admin.get_by_role(
        "button", name=t("Revoke %(serial)s").replace("%(serial)s", "").strip()
    ).click()
    expect(admin.locator("tbody")).to_contain_text(t("revoked"))
    shot(admin, "cameras-revoked")
    assert box.store.one("SELECT COUNT(*) AS n FROM devices WHERE revoked_at IS NULL")["n"] == 0


def test_every_page_has_no_serious_accessibility_problem(site, chromium, camera, tmp_path):
    box = site
    clip = make_clip(
        tmp_path / "clip.mp4", seconds=4, pre_event_seconds=1, started_at=dt.datetime.now(dt.UTC)
    )
    response, _ = upload_all(camera, (tmp_path / "clip.mp4").read_bytes())
    rid = response.headers["EdgeBox-Recording-Id"]
    assert clip.sha256 == box.store.one("SELECT evidence_sha256 FROM recordings")["evidence_sha256"]
    problems = []

    anonymous = chromium.new_context().new_page()
    anonymous.goto(f"{box.url}/login")
    problems += accessibility_problems(anonymous, "login")
    shot(anonymous, "login")

    admin = log_in(chromium, box.url, "admin-1", PASSWORD)
    admin.goto(f"{box.url}/cameras")
    admin.get_by_role("button", name="Pair a camera").click()
    for name, path in [("cameras", None), ("users", "/users"), ("settings", "/settings")]:
        if path:
            admin.goto(box.url + path)
        problems += accessibility_problems(admin, name)
        shot(admin, name)

    supervisor = log_in(chromium, box.url, "supervisor-1", PASSWORD)
    pages = [("dashboard", "/"), ("recordings", "/recordings"), ("audit", "/audit")]
    for name, path in [*pages, ("compliance", "/compliance")]:
        supervisor.goto(box.url + path)
        problems += accessibility_problems(supervisor, name)
        shot(supervisor, name)
    supervisor.goto(f"{box.url}/recordings/{rid}")
    problems += accessibility_problems(supervisor, "recording-locked")
    supervisor.get_by_label("Your review secret").fill(SECRET)
    supervisor.get_by_role("button", name="Unlock review").click()
    supervisor.locator("#player").wait_for()
    problems += accessibility_problems(supervisor, "recording-unlocked")
    shot(supervisor, "recording-unlocked")

    crew = log_in(chromium, box.url, "crew-1", PASSWORD)
    crew.goto(f"{box.url}/recordings/{rid}")
    problems += accessibility_problems(crew, "recording-crew")
    assert problems == [], "\n".join(problems)


def test_the_accessibility_check_sees_a_real_problem(chromium):
    page = chromium.new_context().new_page()
    page.set_content(
        '<html lang="en"><head><title>t</title></head><body><main>'
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">'
        "<button></button></main></body></html>"
    )
    problems = accessibility_problems(page, "control-case")
    assert any("image-alt (critical)" in p for p in problems), problems
    assert any("button-name (critical)" in p for p in problems), problems
