"""ansible/: lint with the production profile, then the edgebox role applied for real.

The role runs with connection local into a temporary prefix (`edgebox_root`) with
`edgebox_manage_services: false` (no system user, no systemctl). A real wheel of this tree is
installed from a real wheelhouse, the box identity is made by `edgebox init`, and a second run
must change nothing. Rollouts use two more wheels made from the real one: X.post1, whose
`edgebox status` fails (a release that breaks on the box's data), and a healthy one.
An unreachable host (SSH to a closed port on 127.0.0.1) stands in for an offline box.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgebox.keys import key_id
from tests.conftest import build_wheel

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent
BOX = "box-test"
SECRETS = {
    "edgebox_supervisor_secret": "s3cret-supervisor-review",
    "edgebox_mqtt_password": "s3cret-mqtt-password",
    "edgebox_camera_wifi_passphrase": "s3cret-camera-wifi",
}
MAX_EXPOSURE = 2.0
BROKEN, HEALTHY = "{}.post1", "{}.post2"  # releases made from the real wheel
# Rollouts in these tests leave out the camera Wi-Fi and ansible-pull parts of the role (the
# converge tests cover them) and use batches of one box, the canary being the offline one.
QUICK_UPDATE = (
    "-e",
    '{"edgebox_camera_wifi": false, "edgebox_pull": false, "edgebox_rollout_batches": [1, 1]}',
)
RECAP = re.compile(
    r"^(?P<host>\S+)\s*: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.M,
)


def tool(name: str) -> str:
    """A console script of this venv (ansible-playbook, ansible-lint), else from PATH."""
    path = BIN / name
    return str(path) if path.exists() else shutil.which(name) or name


def run(*command, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run a command and capture its output as text."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


def pip_wheel_of_this_tree(dist: Path) -> Path:
    """The real edgebox wheel, built as the issue says: pip wheel --no-deps."""
    return build_wheel(dist)


def repack_wheel(src: Path, dist: Path, version: str, *, broken: bool = False) -> Path:
    """The same wheel as another version; `broken` makes `edgebox status` raise on the box."""
    old = re.match(r"edgebox-([^-]+)-", src.name).group(1)
    old_info, new_info = f"edgebox-{old}.dist-info/", f"edgebox-{version}.dist-info/"
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(src) as wheel:
        for name in wheel.namelist():
            data = wheel.read(name)
            if name == "edgebox/__init__.py":
                data, n = re.subn(
                    rb'__version__ = "[^"]+"', f'__version__ = "{version}"'.encode(), data
                )
                assert n == 1
            elif name == old_info + "METADATA":
                data = re.sub(rb"(?m)^Version: .*$", f"Version: {version}".encode(), data)
            elif name == "edgebox/box.py" and broken:
                assert b"class Box" in data and b"def status(self" in data
                data += (
                    b"\n\ndef _broken_status(self):\n"
                    b"    raise RuntimeError('simulated broken release')\n\n\n"
                    b"Box.status = _broken_status\n"
                )
            files[name.replace(old_info, new_info)] = data
    record = new_info + "RECORD"
    lines = []
    for name, data in files.items():
        if name != record:
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            lines.append(f"{name},sha256={digest.decode()},{len(data)}")
    files[record] = ("\n".join([*lines, f"{record},,"]) + "\n").encode()
    out = dist / f"edgebox-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return out


def central_key(path: Path) -> str:
    """Write a fresh X25519 public key (PEM) for central; return its key id."""
    public = X25519PrivateKey.generate().public_key()
    path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_id(public)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (the offline box's SSH)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Fleet:
    """A test fleet: one box in a prefix (connection local) and one box that is offline."""

    base: Path
    prefix: Path
    inventory: Path
    reports: Path
    central_key_id: str
    env: dict
    version: str
    first_run: subprocess.CompletedProcess | None = None

    def playbook(self, name: str, *extra: str) -> subprocess.CompletedProcess:
        """Run one of ansible/'s playbooks against this fleet."""
        return run(
            tool("ansible-playbook"),
            "-i",
            str(self.inventory),
            name,
            *extra,
            cwd=ANSIBLE,
            env=self.env,
        )

    def recap(self, result: subprocess.CompletedProcess, host: str = BOX) -> dict[str, int]:
        """The PLAY RECAP counters of `host`."""
        for match in RECAP.finditer(result.stdout):
            if match["host"] == host:
                return {k: int(v) for k, v in match.groupdict().items() if k != "host"}
        raise AssertionError(f"no recap for {host}:\n{result.stdout[-3000:]}")

    def path(self, absolute: str) -> Path:
        """Where an absolute path of a real box lives in the prefix."""
        return self.prefix / absolute.lstrip("/")

    def edgebox(self, *args: str) -> subprocess.CompletedProcess:
        """Run the installed edgebox (current release) against the rendered config."""
        return run(
            str(self.path("/opt/edgebox/current/bin/edgebox")),
            *args,
            "--config",
            str(self.path("/etc/edgebox/edgebox.toml")),
        )

    def release(self) -> str:
        """The release /opt/edgebox/current points at."""
        return os.readlink(self.path("/opt/edgebox/current")).split("/")[-1]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Fleet:
    """Wheels, a wheelhouse archive, keys and an inventory; then the first converge of the box."""
    base = tmp_path_factory.mktemp("fleet")
    dist = base / "dist"
    wheel = pip_wheel_of_this_tree(dist)
    version = re.match(r"edgebox-([^-]+)-", wheel.name).group(1)
    repack_wheel(wheel, dist, BROKEN.format(version), broken=True)
    repack_wheel(wheel, dist, HEALTHY.format(version))

    # The dependency wheelhouse an offline box is given (from the index, once).
    wheelhouse = base / "wheelhouse"
    downloaded = run(
        sys.executable, "-m", "pip", "download", "-q", "-d", str(wheelhouse), str(wheel)
    )
    assert downloaded.returncode == 0, downloaded.stderr
    archive = base / "wheelhouse-test.tar"
    with tarfile.open(archive, "w") as tar:
        for item in sorted(wheelhouse.iterdir()):
            if item.name.endswith(".whl"):
                tar.add(item, arcname=item.name)

    ca = base / "broker-ca.crt"
    made = run(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(base / "broker-ca.key"), "-out", str(ca),
        "-subj", "/CN=EdgeBox test fleet CA", "-days", "2",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    kid = central_key(base / "central.pub")

    prefix = base / "root"
    reports = base / "reports"
    box_vars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "ansible_become": False,
    }
    offline_vars = {
        "ansible_host": "127.0.0.1",
        "ansible_port": closed_port(),
        "ansible_connection": "ssh",
        "ansible_ssh_common_args": "-o ConnectTimeout=5 -o StrictHostKeyChecking=no",
    }
    group_vars = {
        "edgebox_root": str(prefix),
        "edgebox_manage_services": False,
        "edgebox_version": version,
        "edgebox_wheel_dir": str(dist),
        "edgebox_wheelhouse": str(archive),
        "edgebox_python": sys.executable,
        "edgebox_central_public_key": str(base / "central.pub"),
        "edgebox_broker_url": "mqtts://broker.example.org:8883",
        "edgebox_broker_ca": str(ca),
        "edgebox_organisation": "Test Zone",
        "edgebox_site": "Test Van",
        "edgebox_listen": "0.0.0.0:8443",
        "edgebox_settings_fleet": {"retention": {"category_days": {"incident": 365}}},
        "edgebox_settings_extra": {"ingest": {"expire_hours": 12}},
        "edgebox_camera_wifi": True,
        "edgebox_pull": True,
        "edgebox_pull_repo": "https://git.example.org/fleet/edgebox-ansible.git",
        "edgebox_reports_dir": str(reports),
        "edgebox_health_retries": 2,
        "edgebox_health_delay": 1,
        **SECRETS,
    }
    inventory = base / "inventory.json"
    # The offline box comes first, so it is the canary batch of a rollout.
    inventory.write_text(
        json.dumps(
            {
                "edgebox": {
                    "hosts": {"offline-box": offline_vars, BOX: box_vars},
                    "vars": group_vars,
                }
            },
            indent=2,
        )
    )
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_HOME": str(base / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(base / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    fleet = Fleet(base, prefix, inventory, reports, kid, env, version)
    first = fleet.playbook("site.yml", "--limit", BOX)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr
    assert fleet.recap(first)["changed"] > 0
    fleet.first_run = first
    return fleet


# --------------------------------------------------------------------------- lint


def test_ansible_lint_passes_with_the_production_profile():
    result = run(
        tool("ansible-lint"),
        "--profile",
        "production",
        "--offline",
        "--nocolor",
        cwd=ANSIBLE,
        env={**os.environ, "ANSIBLE_HOME": str(ANSIBLE / ".ansible-home-lint")},
    )
    shutil.rmtree(ANSIBLE / ".ansible-home-lint", ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


# --------------------------------------------------------------------------- converge


def test_role_converges_and_a_second_run_changes_nothing(fleet):
    identity = fleet.path("/var/lib/edgebox/data/keys/identity.pub").read_bytes()
    second = fleet.playbook("site.yml", "--limit", BOX)
    assert second.returncode == 0, second.stdout[-6000:]
    assert fleet.recap(second) == {"ok": fleet.recap(second)["ok"], "changed": 0,
                                   "unreachable": 0, "failed": 0}  # fmt: skip
    # The identity made on the box by `edgebox init` is never replaced.
    assert fleet.path("/var/lib/edgebox/data/keys/identity.pub").read_bytes() == identity


def test_secrets_stay_out_of_the_output_and_off_other_files(fleet):
    output = fleet.first_run.stdout + fleet.first_run.stderr
    for name, secret in SECRETS.items():
        assert secret not in output, f"{name} leaked into the playbook output"
    password = fleet.path("/etc/edgebox/credentials/mqtt-password")
    assert password.read_text() == SECRETS["edgebox_mqtt_password"]
    assert password.stat().st_mode & 0o777 == 0o600
    hostapd = fleet.path("/etc/hostapd/edgebox-camera.conf")
    assert f"wpa_passphrase={SECRETS['edgebox_camera_wifi_passphrase']}\n" in hostapd.read_text()
    assert hostapd.stat().st_mode & 0o777 == 0o600
    config = fleet.path("/etc/edgebox/edgebox.toml").read_text()
    assert not any(secret in config for secret in SECRETS.values())


def test_rendered_config_passes_edgebox_config_check(fleet):
    checked = fleet.edgebox("config", "check", "--json")
    assert checked.returncode == 0, checked.stderr
    config = json.loads(checked.stdout)["config"]
    assert config["box"]["box_id"] == BOX
    assert config["box"]["data_dir"] == str(fleet.path("/var/lib/edgebox/data"))
    assert config["upstream"]["ca"] == str(fleet.path("/etc/edgebox/mqtt/ca.crt"))
    assert config["upstream"]["username"] == BOX
    assert config["upstream"]["password_file"] == str(
        fleet.path("/etc/edgebox/credentials/mqtt-password")
    )
    assert config["replication"]["enabled"] is False  # Litestream runs as its own unit
    assert config["replication"]["replica_dir"] == str(fleet.path("/srv/edgebox-replica"))
    assert config["retention"]["category_days"] == {"incident": 365}
    assert config["ingest"]["expire_hours"] == 12
    # The box made its identity; init's own config file beside the data is gone.
    assert fleet.path("/var/lib/edgebox/data/keys/identity.key").exists()
    assert not fleet.path("/var/lib/edgebox/edgebox.toml").exists()
    status = fleet.edgebox("status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["box_id"] == BOX


def test_litestream_reads_the_rendered_config(fleet):
    litestream = fleet.path("/opt/edgebox/current/bin/litestream")
    result = run(
        str(litestream), "databases", "-config", str(fleet.path("/etc/edgebox/litestream.yml"))
    )
    assert result.returncode == 0, result.stderr
    assert str(fleet.path("/var/lib/edgebox/data/box.db")) in result.stdout


def test_rendered_units_verify_and_equal_deploy(fleet):
    units = fleet.path("/etc/systemd/system")
    names = ["edgebox.service", "edgebox-litestream.service"]
    verified = run("systemd-analyze", "verify", *(str(units / n) for n in names))
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr == "", verified.stderr
    for name in names:
        rendered = (units / name).read_text().replace(str(fleet.prefix), "")
        assert rendered == (ROOT / "deploy" / name).read_text(), f"{name} differs from deploy/"
        result = run("systemd-analyze", "security", "--offline=true", str(units / name))
        level = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)[1])
        assert level <= MAX_EXPOSURE, result.stdout
    # The ansible-pull units are valid too (ansible-core itself is not installed here).
    pull = run(
        "systemd-analyze", "verify",
        str(units / "edgebox-ansible-pull.service"), str(units / "edgebox-ansible-pull.timer"),
    )  # fmt: skip
    problems = [
        line for line in pull.stderr.splitlines() if "ansible-pull is not executable" not in line
    ]
    assert problems == [], pull.stderr


def test_rendered_camera_wifi_files_pass_their_tools(fleet, tmp_path):
    from tests.test_deploy import check_hostapd_config

    check_hostapd_config(fleet.path("/etc/hostapd/edgebox-camera.conf"), tmp_path)
    dnsmasq = run(
        "dnsmasq", "--test", f"--conf-file={fleet.path('/etc/dnsmasq.d/edgebox-camera.conf')}"
    )
    assert dnsmasq.returncode == 0, dnsmasq.stderr
    nft = run("nft", "-c", "-f", str(fleet.path("/etc/nftables.d/edgebox-camera.nft")))
    assert nft.returncode == 0, nft.stderr
    assert (
        'include "/etc/nftables.d/edgebox-camera.nft"'
        in fleet.path("/etc/nftables.conf").read_text()
    )


# --------------------------------------------------------------------------- fleet playbooks


@pytest.mark.slow
def test_update_whose_health_check_fails_rolls_back(fleet):
    before = fleet.release()
    broken = BROKEN.format(fleet.version)
    result = fleet.playbook("update.yml", "-e", f"edgebox_version={broken}", *QUICK_UPDATE)
    assert result.returncode != 0, "a rollback must fail the rollout"
    # The box runs the release it ran before, and that release is healthy.
    assert fleet.release() == before
    version = run(str(fleet.path("/opt/edgebox/current/bin/edgebox")), "--version")
    assert version.stdout.strip() == f"edgebox, version {before}"
    assert fleet.edgebox("status", "--json").returncode == 0
    record = json.loads(fleet.path("/opt/edgebox/last-rollback.json").read_text())
    assert record["failed_version"] == broken and record["restored_version"] == before
    assert "simulated broken release" in record["reason"]
    # The rollout report names both boxes: the canary was offline, the other rolled back.
    report = json.loads((fleet.reports / f"update-{broken}.json").read_text())
    assert report["counts"] == {"rolled_back": 1, "unreachable": 1}
    lines = {line["host"]: line for line in report["lines"]}
    assert lines[BOX]["version_in_service"] == before
    assert "rolled back to" in lines[BOX]["detail"]
    assert lines["offline-box"]["result"] == "unreachable"
    assert fleet.recap(result, "offline-box")["failed"] == 0


@pytest.mark.slow
def test_update_to_a_healthy_release_skips_the_offline_box(fleet):
    before = fleet.release()
    healthy = HEALTHY.format(fleet.version)
    result = fleet.playbook("update.yml", "-e", f"edgebox_version={healthy}", *QUICK_UPDATE)
    assert result.returncode == 0, result.stdout[-6000:]
    assert fleet.release() == healthy
    assert fleet.edgebox("status", "--json").returncode == 0
    report = json.loads((fleet.reports / f"update-{healthy}.json").read_text())
    assert report["counts"] == {"unreachable": 1, "updated": 1}
    line = next(line for line in report["lines"] if line["host"] == BOX)
    assert line["previous_version"] == before and line["version_in_service"] == healthy
    assert fleet.recap(result, "offline-box")["unreachable"] == 0  # ignored, not fatal


def test_status_playbook_writes_one_fleet_report(fleet):
    result = fleet.playbook("status.yml")
    assert result.returncode == 0, result.stdout[-6000:]
    report = json.loads((fleet.reports / "fleet-status.json").read_text())
    assert report["boxes"] == 2
    assert report["counts"] == {"ok": 1, "unreachable": 1}
    lines = {line["host"]: line for line in report["lines"]}
    box = lines[BOX]
    assert box["status"]["box_id"] == BOX
    assert box["status"]["keys"]["central_key_id"]
    assert box["version"] == fleet.release()
    assert lines["offline-box"]["result"] == "unreachable"


def test_rotate_central_key_imports_the_new_key_once(fleet):
    status = json.loads(fleet.edgebox("status", "--json").stdout)
    assert status["keys"]["central_key_id"] == fleet.central_key_id
    new_id = central_key(fleet.base / "central-2.pub")
    new_key = f"edgebox_central_public_key={fleet.base / 'central-2.pub'}"
    rotated = fleet.playbook("rotate-central-key.yml", "-e", new_key)
    assert rotated.returncode == 0, rotated.stdout[-6000:]
    status = json.loads(fleet.edgebox("status", "--json").stdout)
    assert status["keys"]["central_key_id"] == new_id
    report = json.loads((fleet.reports / "rotate-central-key.json").read_text())
    assert report["counts"] == {"rotated": 1, "unreachable": 1}
    again = fleet.playbook("rotate-central-key.yml", "-e", new_key)
    assert again.returncode == 0, again.stdout[-6000:]
    report = json.loads((fleet.reports / "rotate-central-key.json").read_text())
    assert report["counts"] == {"unchanged": 1, "unreachable": 1}
    # Runs last: site.yml would now put back the inventory's key (edgebox_central_public_key).
