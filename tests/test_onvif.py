"""ONVIF discovery and stream URIs against a small ONVIF device (tests/onvif_device.py: no
ONVIF camera can run here) whose stream is a real GStreamer RTSP camera, through the CLI."""

from __future__ import annotations

import json
import socket
import time

import pytest

from edgebox.recorder import onvif
from tests.conftest import free_port, run_cli
from tests.onvif_device import OnvifDevice
from tests.rtsp_fixtures import RtspCamera, wait_until

PASSWORD = "gate password 9"


@pytest.fixture
def device():
    """An RTSP camera with basic auth, and an ONVIF device that hands out its URI."""
    with RtspCamera(free_port(), ["/main"], user="viewer", password=PASSWORD) as camera:
        onvif_device = OnvifDevice(camera.url("/main"), "viewer", PASSWORD).start()
        yield onvif_device
        onvif_device.stop()


def test_discover_then_add_by_onvif_and_the_box_pulls_it(box, box_config, device, tmp_path):
    host, port = device.discovery_address
    found = run_cli("cameras", "discover", "--address", f"{host}:{port}", "--timeout", "1",
                    "--json")  # fmt: skip
    assert found.returncode == 0, found.stderr
    (camera,) = json.loads(found.stdout)
    assert camera["xaddrs"] == [device.xaddr] and camera["name"] == "Gate"
    assert camera["hardware"] == "TestCam-1"
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    added = run_cli("cameras", "add-onvif", "gate", device.xaddr, "--username", "viewer",
                    "--password-file", str(secret), "--post-event", "1", "--json",
                    config=box_config)  # fmt: skip
    assert added.returncode == 0, added.stderr
    row = json.loads(added.stdout)
    assert row["onvif_profile"]["token"] == "main" and row["onvif_profile"]["width"] == 320
    assert PASSWORD not in added.stdout and "viewer" not in row["url"]
    assert device.calls[:4] == ["GetCapabilities", "GetProfiles", "GetStreamUri", "GetStreamUri"]
    wait_until(
        lambda: box.recorder.registry.get("gate")["state"] == "streaming",
        30,
        "the ONVIF camera to stream",
    )
    wait_until(lambda: "PullMessages" in device.calls, 20, "the box to pull the camera's events")
    time.sleep(3)
    device.motion(True)
    device.motion(False)  # an end of motion starts nothing
    recording = wait_until(
        lambda: box.store.one(
            "SELECT r.* FROM recordings r JOIN custody c ON c.subject = r.id "
            "AND c.event = 'recorder.recorded' WHERE r.serial = 'gate'"
        ),
        30,
        "the motion's recording",
    )
    assert recording["user_id"] == "camera:gate" and "Motion" in recording["trigger_on"]
    assert json.loads(recording["metadata"])["trigger_source"] == "onvif"
    triggers = box.store.query(
        "SELECT actor FROM custody WHERE event = 'recorder.triggered' AND actor = 'camera:gate'"
    )
    assert len(triggers) == 1


def test_wrong_onvif_password_or_profile_adds_nothing(box, box_config, device, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("wrong")
    refused = run_cli("cameras", "add-onvif", "gate", device.xaddr, "--username", "viewer",
                      "--password-file", str(secret), "--json", config=box_config)  # fmt: skip
    assert refused.returncode == 2
    assert "refused the ONVIF user name or password" in json.loads(refused.stdout)["message"]
    secret.write_text(PASSWORD)
    unknown = run_cli("cameras", "add-onvif", "gate", device.xaddr, "--username", "viewer",
                      "--password-file", str(secret), "--profile", "nope",
                      config=box_config)  # fmt: skip
    assert unknown.returncode == 2 and "no profile nope" in unknown.stderr
    assert "main, sub" in unknown.stderr
    nowhere = run_cli("cameras", "add-onvif", "gate", f"http://127.0.0.1:{free_port()}/x",
                      config=box_config)  # fmt: skip
    assert nowhere.returncode == 2 and "does not answer" in nowhere.stderr
    assert box.recorder.registry.list() == []


def test_discovery_ignores_strays_and_refuses_entity_bombs():
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    assert onvif.discover(0.5, listener.getsockname()) == []  # nobody answers: nothing found
    listener.close()
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><l>&b;</l>'
    )
    with pytest.raises(onvif.OnvifError, match="not usable XML"):
        onvif.parse_probe_match(bomb, "uuid:x")
    other = onvif.probe_message("uuid:someone-else")
    assert onvif.parse_probe_match(other, "uuid:mine") == []
