"""deploy/: the systemd units, the camera Wi-Fi files and the central Mosquitto config, checked
with the real tools (systemd-analyze, hostapd, dnsmasq, nft, mosquitto) rather than by eye."""

from __future__ import annotations

import queue
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgebox.config import UpstreamSection
from tests.brokers import MOSQUITTO, Inbox, TestPKI, close_client, connect_client

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = ["edgebox.service", "edgebox-litestream.service"]
MAX_EXPOSURE = 2.0
CHUNK = UpstreamSection.chunk_size  # the default segment the broker must let through


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    """Run a command and capture its output as text."""
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def exposure(unit: Path) -> float:
    """systemd-analyze's overall exposure level for a unit file, checked offline."""
    result = run("systemd-analyze", "security", "--offline=true", str(unit))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout
    return float(match.group(1))


def verify_units(units: list[Path], root: Path | None = None) -> subprocess.CompletedProcess:
    """systemd-analyze verify, optionally against an alternate root."""
    command = ["systemd-analyze", "verify"]
    if root is not None:
        command.append(f"--root={root}")
    return run(*command, *map(str, units))


def fake_root(tmp_path: Path, units: list[Path]) -> Path:
    """A root with systemd's own units, the given units, and the executables they name."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for unit in units:
        text = unit.read_text()
        (unit_dir / unit.name).write_text(text)
        for command in re.findall(r"^Exec\w+=[-@:+!]*(\S+)", text, re.M):
            stub = root / command.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
    return root


# --------------------------------------------------------------------------- systemd units


def test_units_pass_systemd_analyze_verify(tmp_path):
    root = fake_root(tmp_path, [DEPLOY / name for name in UNITS])
    result = verify_units([root / "etc/systemd/system" / name for name in UNITS], root=root)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "systemd-analyze printed warnings:\n" + result.stderr


@pytest.mark.parametrize("name", UNITS)
def test_units_exposure_is_at_most_two(name):
    assert exposure(DEPLOY / name) <= MAX_EXPOSURE


def test_box_unit_is_confined_to_its_state_and_replica():
    text = (DEPLOY / "edgebox.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["User"] == settings["Group"] == "edgebox"
    assert settings["ProtectSystem"] == "strict"
    assert settings["ReadWritePaths"].split() == ["/var/lib/edgebox", "-/srv/edgebox-replica"]
    assert settings["NoNewPrivileges"] == "yes"
    assert settings["CapabilityBoundingSet"] == ""
    assert settings["MemoryDenyWriteExecute"] == "yes"
    assert "@system-service" in text
    assert settings["RestrictAddressFamilies"].split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert settings["ExecStart"] == "/opt/edgebox/current/bin/edgebox run"


def test_litestream_unit_is_part_of_the_box_and_runs_as_its_user():
    text = (DEPLOY / "edgebox-litestream.service").read_text()
    assert "PartOf=edgebox.service" in text
    assert "User=edgebox" in text and "Group=edgebox" in text
    assert "PrivateNetwork=yes" in text  # a file replica needs no network
    assert "litestream replicate -config /etc/edgebox/litestream.yml" in text


def test_litestream_example_config_is_read_by_litestream():
    litestream = Path(shutil.which("litestream") or ROOT / ".venv/bin/litestream")
    result = run(str(litestream), "databases", "-config", str(DEPLOY / "litestream.yml.example"))
    assert result.returncode == 0, result.stderr
    assert "/var/lib/edgebox/data/box.db" in result.stdout and "file" in result.stdout


# --------------------------------------------------------------------------- camera Wi-Fi


def check_hostapd_config(conf: Path, tmp_path: Path) -> str:
    """Let hostapd parse `conf` on an interface that does not exist; return its output.

    hostapd reads and checks the whole file first, then fails on the missing interface, so
    it never touches a real radio here.
    """
    text = conf.read_text()
    text = re.sub(r"(?m)^interface=.*$", "interface=ebxnone0", text)
    text = re.sub(r"(?m)^ctrl_interface=.*$", f"ctrl_interface={tmp_path / 'hostapd'}", text)
    probe = tmp_path / "hostapd-probe.conf"
    probe.write_text(text)
    result = run(shutil.which("hostapd") or "/usr/sbin/hostapd", str(probe))
    output = result.stdout + result.stderr
    assert "errors found in configuration file" not in output, output
    assert "unknown configuration item" not in output, output
    return output


def test_hostapd_example_parses_and_is_wpa2_wpa3(tmp_path):
    conf = DEPLOY / "camera-wifi/hostapd-edgebox-camera.conf"
    check_hostapd_config(conf, tmp_path)
    settings = dict(line.split("=", 1) for line in conf.read_text().splitlines() if "=" in line)
    assert settings["wpa"] == "2"
    assert settings["wpa_key_mgmt"].split() == ["WPA-PSK", "SAE"]
    assert settings["rsn_pairwise"] == "CCMP"
    assert settings["ieee80211w"] == "1"
    assert settings["ap_isolate"] == "1"  # cameras cannot reach each other


def test_dnsmasq_example_passes_its_syntax_check():
    conf = DEPLOY / "camera-wifi/dnsmasq-edgebox-camera.conf"
    result = run(shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "--test", f"--conf-file={conf}")
    assert result.returncode == 0, result.stderr
    text = conf.read_text()
    assert "dhcp-option=tag:camera,option:router\n" in text  # no gateway for cameras
    assert "bind-interfaces" in text


def test_nftables_example_passes_nft_check_and_confines_cameras():
    conf = DEPLOY / "camera-wifi/edgebox-camera.nft"
    result = run(shutil.which("nft") or "/usr/sbin/nft", "-c", "-f", str(conf))
    assert result.returncode == 0, result.stderr
    text = conf.read_text()
    assert 'tcp dport 8443 accept comment "EdgeBox ingest' in text
    chain = re.search(r"chain from_cameras \{(.*?)\n\t\}", text, re.S).group(1)
    assert chain.strip().splitlines()[-1].strip() == "counter drop"  # everything else dropped
    assert 'iifname "wlan0" counter drop' in text  # nothing forwarded from cameras


# --------------------------------------------------------------------------- central broker


@pytest.fixture
def central_broker(tmp_path):
    """deploy/mosquitto's config and ACL, run by a real mosquitto on a free port."""
    pki = TestPKI(tmp_path / "pki")
    folder = tmp_path / "broker"
    folder.mkdir()
    port = _free_port()
    acl = folder / "edgebox-central.acl"
    shutil.copy(DEPLOY / "mosquitto/edgebox-central.acl", acl)
    replace = {
        "acl_file": str(acl),
        "listener": f"{port} 127.0.0.1",
        "cafile": str(pki.ca_path),
        "certfile": str(pki.server_cert_path),
        "keyfile": str(pki.server_key_path),
        "persistence_location": f"{folder}/",
        "log_dest": f"file {folder / 'mosquitto.log'}",
    }
    lines = []
    for line in (DEPLOY / "mosquitto/edgebox-central.conf").read_text().splitlines():
        key = line.split(" ", 1)[0]
        lines.append(f"{key} {replace[key]}" if key in replace else line)
    lines.append("user root")  # the test runs as root; keep the key readable
    conf = folder / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)
        yield pki, f"mqtts://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _client(pki: TestPKI, url: str, name: str, inbox: Inbox | None = None) -> mqtt.Client:
    cert, key = pki.client_cert(name)
    client_id = re.sub(r"[^A-Za-z0-9-]", "-", name)
    return connect_client(
        url, client_id=client_id, ca=pki.ca_path, cert=cert, key=key, on_message=inbox
    )


def _received(inbox: Inbox, seconds: float = 1.5) -> list[tuple[str, bytes]]:
    """Every message that arrives within `seconds`, in order."""
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = inbox.get(timeout=left)
        except queue.Empty:
            break
        got.append((message.topic, message.payload))
    return got


def test_central_broker_acl_confines_each_box_to_its_topics(central_broker):
    pki, url = central_broker
    central_inbox, van1_inbox, van2_inbox = Inbox(), Inbox(), Inbox()
    central = _client(pki, url, "central:worker-1", central_inbox)
    van1 = _client(pki, url, "van-1", van1_inbox)
    van2 = _client(pki, url, "van-2", van2_inbox)
    try:
        for topic in (
            "$share/central/edgebox/v1/+/meta",
            "$share/central/edgebox/v1/+/file/#",
            "edgebox/v1/+/status",
        ):
            central.subscribe(topic, qos=1)
        van1.subscribe("edgebox/v1/+/ack", qos=1)  # the broker must filter to its own
        van1.subscribe("edgebox/v1/van-2/#", qos=1)  # another box's traffic: never delivered
        van2.subscribe("edgebox/v1/van-2/ack", qos=1)
        time.sleep(0.3)

        segment = b"\x5a" * CHUNK  # one full sync chunk fits the packet limit
        allowed = {
            "edgebox/v1/van-1/status": b'{"state": "online"}',
            "edgebox/v1/van-1/meta": b'{"id": "m1"}',
            "edgebox/v1/van-1/file/r1.abc/init": b'{"tid": "r1.abc"}',
            f"edgebox/v1/van-1/file/r1.abc/seg/0/{'0' * 64}": segment,
        }
        denied = {
            "edgebox/v1/van-2/meta": b'{"id": "forged"}',  # another box's topic
            "edgebox/v1/van-1/ack": b'{"re": "fin", "status": "complete"}',  # a forged answer
            "edgebox/v2/van-1/meta": b"{}",
        }
        for topic, payload in {**allowed, **denied}.items():
            van1.publish(topic, payload, qos=1).wait_for_publish(5)
        van2.publish("edgebox/v1/van-2/meta", b'{"id": "m2"}', qos=1).wait_for_publish(5)

        seen = sorted(_received(central_inbox))
        assert seen == sorted([*allowed.items(), ("edgebox/v1/van-2/meta", b'{"id": "m2"}')])

        for box in ("van-1", "van-2"):
            central.publish(f"edgebox/v1/{box}/ack", f'{{"box": "{box}"}}'.encode(), qos=1)
        assert _received(van1_inbox) == [("edgebox/v1/van-1/ack", b'{"box": "van-1"}')]
        assert _received(van2_inbox, 0.5) == [("edgebox/v1/van-2/ack", b'{"box": "van-2"}')]
    finally:
        for client in (central, van1, van2):
            close_client(client)


def test_central_broker_rejects_packets_beyond_the_limit(central_broker):
    pki, url = central_broker
    inbox = Inbox()
    central = _client(pki, url, "central:worker-2", inbox)
    van = _client(pki, url, "van-3")
    try:
        central.subscribe("$share/central/edgebox/v1/+/file/#", qos=1)
        time.sleep(0.3)
        van.publish(f"edgebox/v1/van-3/file/t/seg/0/{'1' * 64}", b"x" * (2 * CHUNK + 1), qos=1)
        assert _received(inbox) == []
    finally:
        close_client(central)
        close_client(van)
