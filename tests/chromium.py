"""Debian's real Chromium, driven by Playwright, for the web UI tests: launch, log in, take
screenshots into test-artifacts/ui/, and run axe-core over a page."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from pathlib import Path

from axe_playwright_python.sync_playwright import Axe
from babel.messages.pofile import read_po
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import ARTIFACTS, ROOT

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ARTIFACTS / "ui"
# The box is offline and so is this machine: no background fetches, no component updates.
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
BLOCKING = ("serious", "critical")


def spki_pin(cert_pem: Path) -> str:
    """The base64 SHA-256 of a certificate's public key, as Chromium's SPKI allow-list takes it."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def launch(playwright, box_cert: Path):
    """Start Chromium trusting exactly the box's self-signed key (as a pinned tablet would)."""
    if not CHROMIUM.exists():
        raise RuntimeError("Debian's chromium is missing: run scripts/setup.sh")
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=[*FLAGS, f"--ignore-certificate-errors-spki-list={spki_pin(box_cert)}"],
    )


@functools.cache
def _catalog(language: str) -> dict:
    path = ROOT / "web" / "translations" / language / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as handle:
        return {m.id: m.string for m in read_po(handle) if m.id and isinstance(m.id, str)}


def words(language: str, text: str) -> str:
    """`text` as the UI writes it in `language` (from the committed catalog)."""
    return _catalog(language).get(text) or text if language != "en" else text


def log_in(browser, url: str, username: str, password: str, language: str = "en"):
    """A fresh browser context (own cookies) logged in through the login form, after picking
    `language` with the page's language switch; returns its page."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{url}/login")
    if language != "en":
        page.get_by_label("Language").select_option(language)
        page.get_by_role("button", name="Switch").click()
        page.wait_for_selector(f'html[lang="{language}"]')
    page.get_by_label(words(language, "User name")).fill(username)
    page.get_by_label(words(language, "Password"), exact=True).fill(password)
    page.get_by_role("button", name=words(language, "Log in")).click()
    page.get_by_role("button", name=words(language, "Log out")).wait_for()
    return page


def shot(page, name: str) -> Path:
    """Save a full-page screenshot as test-artifacts/ui/NAME.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def accessibility_problems(page, name: str) -> list[str]:
    """Run axe-core on the page; save its report; return the serious and critical violations."""
    results = Axe().run(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / f"{name}.axe.json").write_text(json.dumps(results.response["violations"], indent=1))
    return [
        f"{name}: {v['id']} ({v['impact']}) on {[n['target'] for n in v['nodes']]}: {v['help']}"
        for v in results.response["violations"]
        if v["impact"] in BLOCKING
    ]
