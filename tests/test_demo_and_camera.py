"""The README's demo and the camera simulator, run as the real commands against a real box."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import requests

from edgebox.clips import probe_clip
from tests.conftest import SECRET, BoxProcess, free_port, run_cli


def test_demo_delivers_lists_and_verifies(tmp_path):
    folder = tmp_path / "demo"
    port = free_port()
    result = run_cli(
        "demo",
        "--dir",
        str(folder),
        "--listen",
        f"127.0.0.1:{port}",
        "--clips",
        "1",
        "--seconds",
        "31",
        "--once",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 recordings stored encrypted" in result.stdout
    assert "central confirmed all 2 recordings" in result.stdout
    held = json.loads(
        run_cli("central", "list", "--store", str(folder / "central"), "--json").stdout
    )
    assert len(held) == 2 and all(r["complete"] for r in held)
    config = folder / "edgebox.toml"
    assert run_cli("verify", config=config).returncode == 0
    listed = json.loads(run_cli("recordings", "list", "--json", config=config).stdout)
    assert len(listed) == 2 and all(r["pre_event_seconds"] == 30 for r in listed)
    assert {r["evidence_sha256"] for r in listed} == {r["evidence_sha256"] for r in held}
    assert all(r["sync_state"] == "synced" and r["sealed"] for r in listed)
    # The web UI lists both recordings.
    box = BoxProcess(config).start()
    try:
        browser = requests.Session()
        browser.trust_env = False
        browser.verify = str(box.cert)
        anonymous = browser.get(f"{box.url}/", timeout=10, allow_redirects=False)
        assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]
        browser.post(
            f"{box.url}/login", data={"username": "demo", "password": "demo-password"}, timeout=10
        )
        page = browser.get(f"{box.url}/recordings", timeout=10)
        assert page.status_code == 200
        for rec in listed:
            assert f'id="rec-{rec["id"]}"' in page.text
    finally:
        box.stop()
    # Synced recordings are sealed: the box refuses a local export and points to central...
    out = tmp_path / "clip.mp4"
    result = run_cli(
        "export",
        listed[0]["id"],
        "--out",
        str(out),
        config=config,
        env={"EDGEBOX_REVIEW_SECRET": "demo-supervisor"},
    )
    assert result.returncode == 2 and "is sealed" in result.stderr and not out.exists()
    # ...where central's key yields a real, playable H.264 clip with the camera's hash.
    package = tmp_path / "package"
    result = run_cli(
        "central",
        "export",
        listed[0]["id"],
        "--store",
        str(folder / "central"),
        "--key",
        str(folder / "central-demo" / "central.key"),
        "--out",
        str(package),
    )
    assert result.returncode == 0, result.stderr
    [clip] = package.glob("*.mp4")
    assert "h264" in probe_clip(clip).video_codecs
    assert listed[0]["camera_sha256"] == listed[0]["evidence_sha256"]


def test_camera_sim_waits_for_the_box_and_delivers(box_process, tmp_path):
    pairing = json.loads(run_cli("cameras", "pair", "--json", config=box_process.config).stdout)
    state = tmp_path / "cam"
    sim = [
        "camera-sim",
        "--state",
        str(state),
        "--box-url",
        box_process.url,
        "--seconds",
        "31",
        "--clips",
        "1",
    ]
    first = run_cli(*sim, "--code", pairing["code"], "--cert-sha256", pairing["cert_sha256"])
    assert first.returncode == 0, first.stderr
    box_process.kill9()
    # The box is gone: the camera records, cannot deliver yet, keeps its clip and retries.
    second = subprocess.Popen(
        [sys.executable, "-m", "edgebox", *sim],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(4)
    box_process.start()
    output, _ = second.communicate(timeout=180)
    assert second.returncode == 0, output
    assert "Connection refused" in output and "retrying in" in output
    assert "1 of 1 clip(s) delivered" in output
    assert list((state / "outbox").iterdir()) == []
    listed = json.loads(run_cli("recordings", "list", "--json", config=box_process.config).stdout)
    assert len(listed) == 2
    assert all(r["camera_sha256"] == r["evidence_sha256"] for r in listed)
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    deep = run_cli("verify", "--deep", "--secret-file", str(secret), config=box_process.config)
    assert deep.returncode == 0, deep.stdout
