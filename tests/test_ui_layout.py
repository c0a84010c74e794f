"""The UI as crews hold it: every page in real Chromium at phone (390x844), tablet (1024x768)
and desktop (1920x1080) sizes, light and dark: screenshots into test-artifacts/ui/, no
sideways scrolling, touch targets of 44 px or more, no serious or critical axe finding; the
poster and the thumbnail strip are real pictures the browser decodes, each look is in custody,
and no plaintext of the footage or of its pictures is on the box's disk afterwards."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from edgebox import catalog
from edgebox.clips import make_clip
from tests.chromium import FLAGS, accessibility_problems, launch, shot, spki_pin
from tests.conftest import SECRET
from tests.test_ingest import upload_all
from tests.test_web_auth import PASSWORD

VIEWPORTS = {"phone": (390, 844), "tablet": (1024, 768), "desktop": (1920, 1080)}
TOUCH = 44
# What a finger presses; a radio or checkbox counts by the label around it.
TARGETS = (
    "button, .button, summary, select, textarea, nav a, .rec .when a, .row-link,"
    " input:not([type=hidden]):not([type=checkbox]):not([type=radio]),"
    " label:has(> input[type=radio]), label:has(> input[type=checkbox])"
)
MEASURE = """(selector) => [...document.querySelectorAll(selector)]
  .filter((e) => e.offsetParent !== null || e.getClientRects().length)
  .map((e) => { const r = e.getBoundingClientRect();
                return { what: e.outerHTML.slice(0, 80), w: r.width, h: r.height }; })"""
OVERFLOW = """() => ({ page: document.documentElement.scrollWidth, view: window.innerWidth,
  wide: [...document.querySelectorAll('body *')]
    .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1
                   && !e.closest('.scroll'))
    .slice(0, 5).map((e) => e.outerHTML.slice(0, 80)) })"""

FETCH = """async (url) => Array.from(new Uint8Array(await (await fetch(url)).arrayBuffer()))"""


@pytest.fixture
def footage(box, camera, tmp_path):
    """Two real clips (H.264, with a pre-event) from one camera, and their plaintext bytes."""
    for role in ("crew", "supervisor", "admin"):
        box.users.add(f"{role}-1", role, PASSWORD)
    clips = []
    for number, pre in ((1, 3), (2, 40)):
        started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10 * number)
        clip = make_clip(tmp_path / f"c{number}.mp4", seconds=8, pre_event_seconds=min(pre, 7),
                         started_at=started, serial=camera.serial)  # fmt: skip
        data = clip.path.read_bytes()
        meta = {"user_id": f"officer-{number}", "started_at": clip.started_at.isoformat(),
                "stopped_at": clip.stopped_at.isoformat(), "pre_event_seconds": pre}  # fmt: skip
        response, _ = upload_all(camera, data, metadata=meta)
        clips.append((response.headers["EdgeBox-Recording-Id"], data))
        clip.path.unlink()
    return clips


def _page(browser, box, username: str, size: tuple[int, int], scheme: str = "light"):
    context = browser.new_context(
        viewport={"width": size[0], "height": size[1]}, color_scheme=scheme, has_touch=True
    )
    page = context.new_page()
    page.goto(f"{box.url}/login")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("button", name="Log out").wait_for()
    return page


def _check(page, name: str) -> list[str]:
    """Screenshot, overflow, touch targets and axe for the page as it stands."""
    shot(page, name)
    problems = []
    wide = page.evaluate(OVERFLOW)
    if wide["page"] > wide["view"] or wide["wide"]:
        problems.append(f"{name}: scrolls sideways ({wide})")
    for target in page.evaluate(MEASURE, TARGETS):
        if target["w"] < TOUCH - 0.5 or target["h"] < TOUCH - 0.5:
            problems.append(f"{name}: {target['w']:.0f}x{target['h']:.0f} px {target['what']}")
    return problems + accessibility_problems(page, name)


def _decoded(page, selector: str) -> bool:
    locator = page.locator(selector).first
    locator.scroll_into_view_if_needed()
    page.wait_for_function(
        "(s) => { const i = document.querySelector(s); return i && i.complete; }",
        arg=selector, timeout=120_000,
    )  # fmt: skip
    return locator.evaluate("(img) => img.naturalWidth > 0 && img.naturalHeight > 0")


@pytest.mark.parametrize("label", [*VIEWPORTS, "dark"])
def test_every_page_fits_is_touchable_and_accessible(box, footage, label):
    """One size per run (and the tablet in the dark): every page, each role that sees it."""
    size = VIEWPORTS.get(label, VIEWPORTS["tablet"])
    scheme = "dark" if label == "dark" else "light"
    rid = footage[0][0]
    for other, _ in footage:  # one incident filmed by both: the page shows its timeline
        catalog.tag(box.store, other, {"incident": "INC-2026-0042"}, "user:crew-1")
    problems = []
    with sync_playwright() as playwright:
        browser = launch(playwright, box.keys.tls_cert)
        supervisor = _page(browser, box, "supervisor-1", size, scheme)
        supervisor.goto(f"{box.url}/recordings")
        problems += _check(supervisor, f"{label}-recordings-locked")
        supervisor.get_by_label("Unlock review to see pictures").fill(SECRET)
        supervisor.get_by_role("button", name="Unlock review").click()
        assert _decoded(supervisor, "img.poster")
        problems += _check(supervisor, f"{label}-recordings")
        supervisor.goto(f"{box.url}/recordings/{rid}")
        assert _decoded(supervisor, "#strip")
        problems += _check(supervisor, f"{label}-recording-supervisor")
        for path, name in (("/", "dashboard"), ("/cameras", "cameras"), ("/audit", "audit")):
            supervisor.goto(box.url + path)
            problems += _check(supervisor, f"{label}-{name}")
        crew = _page(browser, box, "crew-1", size, scheme)
        crew.goto(f"{box.url}/recordings/{rid}")
        problems += _check(crew, f"{label}-recording-crew")
        admin = _page(browser, box, "admin-1", size, scheme)
        for path, name in (("/users", "users"), ("/settings", "settings")):
            admin.goto(box.url + path)
            problems += _check(admin, f"{label}-{name}")
        anonymous = browser.new_context(
            viewport={"width": size[0], "height": size[1]}, color_scheme=scheme
        )
        login = anonymous.new_page()
        login.goto(f"{box.url}/login")
        problems += _check(login, f"{label}-login")
        browser.close()
    assert problems == [], "\n".join(problems)
    looks = box.store.query(
        "SELECT actor, details FROM custody WHERE event = 'recording.viewed' AND subject = ?",
        (rid,),
    )
    assert {'{"picture":"poster"}', '{"picture":"strip"}'} <= {r["details"] for r in looks}
    assert {r["actor"] for r in looks} == {"supervisor-1"}


def test_pictures_leave_no_plaintext_on_disk(box, footage, tmp_path):
    started = time.time()
    with sync_playwright() as playwright:
        browser = launch(playwright, box.keys.tls_cert)
        page = _page(browser, box, "supervisor-1", VIEWPORTS["tablet"])
        page.goto(f"{box.url}/recordings")
        page.get_by_label("Unlock review to see pictures").fill(SECRET)
        page.get_by_role("button", name="Unlock review").click()
        assert _decoded(page, "img.poster")
        pictures = [bytes(page.evaluate(FETCH, f"/api/v1/recordings/{rid}/{kind}.jpg"))
                    for rid, _ in footage for kind in ("poster", "strip")]  # fmt: skip
        browser.close()
    assert all(p.startswith(b"\xff\xd8") and len(p) > 2000 for p in pictures)
    # Slices of each clip and each picture: none may appear in any file the box can write,
    # nor in a temporary file made while the pictures were drawn.
    needles = [data[len(data) // 2 : len(data) // 2 + 64] for _, data in footage]
    needles += [p[len(p) // 2 : len(p) // 2 + 64] for p in pictures]
    scanned = 0
    roots = [Path(box.config.data_dir).parent, Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")]
    for root in roots:
        every = (Path(d) / f for d, _, files in os.walk(root) for f in files)
        for path in every:
            try:
                if not path.is_file() or (root != roots[0] and path.stat().st_mtime < started):
                    continue
                content = path.read_bytes()
            except OSError:
                continue
            scanned += 1
            for needle in needles:
                assert needle not in content, f"plaintext in {path}"
    assert scanned > 5


def test_the_overflow_check_sees_a_wide_page(box):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[*FLAGS, f"--ignore-certificate-errors-spki-list={spki_pin(box.keys.tls_cert)}"],
        )
        page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
        page.set_content(
            '<html lang="en"><head><title>t</title></head><body><main><h1>t</h1>'
            '<div style="width:900px">wide</div><button style="height:20px">x</button>'
            "</main></body></html>"
        )
        problems = _check(page, "control-wide")
        browser.close()
    assert any("scrolls sideways" in p for p in problems), problems
    assert any("px <button" in p for p in problems), problems


def test_the_keyboard_reaches_every_control_in_order(box, footage):
    """Tab from the top of the recordings page: the skip link first, then the menu, the
    ranges, the cards and the bulk form, each with a visible focus ring."""
    with sync_playwright() as playwright:
        browser = launch(playwright, box.keys.tls_cert)
        page = _page(browser, box, "supervisor-1", VIEWPORTS["tablet"])
        page.goto(f"{box.url}/recordings")
        seen = []
        for _ in range(40):
            page.keyboard.press("Tab")
            seen.append(page.evaluate(
                """() => { const e = document.activeElement;
                     if (e === document.body) return ['(page)', 'n/a'];
                     return [e.textContent.trim() || e.name || e.id,
                             getComputedStyle(e).outlineStyle]; }"""
            ))  # fmt: skip
        browser.close()
    names = [name for name, _ in seen]
    assert names[0] == "Skip to content"
    for wanted in ("Recordings", "Switch", "Log out", "This shift", "Unlock review",
                   "recording", "Apply to each"):  # fmt: skip
        assert wanted in names, (wanted, names)
    assert names.index("This shift") < names.index("recording") < names.index("Apply to each")
    assert [s for s in seen if s[1] == "none"] == []
