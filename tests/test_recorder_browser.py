"""RTSP cameras in Debian's real Chromium: the Cameras page lists them with live state and an
accessible Record button; a recording made from that button plays and seeks in <video>."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.chromium import accessibility_problems, launch, log_in, shot
from tests.conftest import SECRET, free_port
from tests.rtsp_fixtures import RtspCamera, wait_until
from tests.test_browser import play_and_seek
from tests.test_web_auth import PASSWORD


@pytest.fixture
def station(box):
    """A real RTSP camera pulled by the in-process box, and a supervisor."""
    box.users.add("supervisor-1", "supervisor", PASSWORD)
    with RtspCamera(free_port(), ["/hall"]) as camera:
        box.recorder.registry.add("hall", camera.url("/hall"), "test", post_event_seconds=1)
        box.recorder.registry.add("attic", camera.url("/nothere"), "test")
        yield camera


def test_record_from_the_cameras_page_and_play_it(box, station):
    wait_until(lambda: box.recorder.registry.get("hall")["state"] == "streaming", 30, "hall")
    wait_until(lambda: box.recorder.registry.get("attic")["state"] == "offline", 30, "attic")
    with sync_playwright() as playwright:
        browser = launch(playwright, box.keys.tls_cert)
        try:
            page = log_in(browser, box.url, "supervisor-1", PASSWORD)
            page.goto(f"{box.url}/cameras")
            row = page.locator('tr[data-camera="hall"]')
            expect(row).to_contain_text("streaming")
            expect(page.locator('tr[data-camera="attic"]')).to_contain_text("404")
            problems = accessibility_problems(page, "cameras-rtsp")
            shot(page, "cameras-rtsp")
            page.wait_for_timeout(6000)  # a few seconds of pre-event in the ring
            row.get_by_label("Why").fill("visitor at the gate")
            row.get_by_role("button", name="Record hall").click()
            expect(page.get_by_role("status")).to_contain_text("started")
            stop = page.locator('tr[data-camera="hall"]').get_by_role("button", name="Stop")
            page.wait_for_timeout(3000)
            stop.click()
            expect(page.get_by_role("status")).to_contain_text("stopping")
            recording = wait_until(
                lambda: box.store.one(
                    "SELECT r.id FROM recordings r JOIN custody c ON c.subject = r.id "
                    "AND c.event = 'recorder.recorded' WHERE r.serial = 'hall'"
                ),
                60,
                "the recording",
            )
            page.goto(f"{box.url}/recordings/{recording['id']}")
            page.get_by_label("Your review secret").fill(SECRET)
            page.get_by_role("button", name="Unlock review").click()
            state = play_and_seek(page)
            shot(page, "rtsp-playback")
        finally:
            browser.close()
    assert problems == []
    assert state["error"] is None and state["duration"] >= 8, state
    assert abs(state["at"] - state["target"]) < 1.5, state
