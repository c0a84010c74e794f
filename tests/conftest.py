"""Shared fixtures: real boxes on real files and free ports, real HTTPS, enrolled cameras."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from edgebox.box import Box
from edgebox.config import load_config
from edgebox.provision import CONFIG_NAME, init_box
from tests import fuzz  # noqa: F401 - registers the hypothesis profiles before any test runs
from tests.postgres import postgres  # noqa: F401 - session fixture: a real PostgreSQL
from tests.seaweed import seaweed  # noqa: F401 - session fixture: a real SeaweedFS (S3)

pytest_plugins = ["tests.sync_fixtures"]  # broker, pki

SECRET = "test-supervisor-secret"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_box(folder: Path, box_id: str = "test-box", **env) -> Path:
    """Create a demo-keyed box in `folder` and return its config path."""
    init_box(
        folder,
        box_id=box_id,
        organisation="Test Org",
        site="Test Van",
        listen=f"127.0.0.1:{free_port()}",
        supervisor="supervisor",
        review_secret=SECRET,
        demo=True,
    )
    return folder / CONFIG_NAME


@pytest.fixture
def box_config(tmp_path) -> Path:
    """Config path of a freshly initialised box under tmp_path."""
    return make_box(tmp_path / "box")


@pytest.fixture
def box(box_config):
    """A running in-process box (HTTPS on a free port)."""
    running = Box(load_config(box_config)).start(("127.0.0.1", 0))
    yield running
    running.stop()


class Camera:
    """A paired camera's credentials plus a tiny raw tus client for precise protocol tests."""

    def __init__(self, url: str, cert: Path, device_id: str, token: str, serial: str):
        self.url, self.cert, self.device_id, self.token, self.serial = (
            url,
            cert,
            device_id,
            token,
            serial,
        )
        self.session = requests.Session()
        self.session.verify = str(cert)
        self.session.trust_env = False  # else $REQUESTS_CA_BUNDLE overrides the pinned cert

    def headers(self, **extra) -> dict:
        """tus headers with this camera's bearer token."""
        base = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {self.token}"}
        base.update({k.replace("_", "-"): v for k, v in extra.items()})
        return base

    def create(self, length: int, metadata: dict | None = None, **extra) -> requests.Response:
        """POST /tus/ with Upload-Length and encoded metadata."""
        import base64

        meta = {"serial": self.serial, **(metadata or {})}
        encoded = ",".join(
            f"{k} {base64.b64encode(str(v).encode()).decode()}" for k, v in meta.items()
        )
        return self.session.post(
            f"{self.url}/tus/",
            headers=self.headers(Upload_Length=str(length), Upload_Metadata=encoded, **extra),
        )

    def patch(self, location: str, offset: int, body: bytes, **extra) -> requests.Response:
        """PATCH one chunk at `offset`."""
        return self.session.patch(
            self.url + location,
            data=body,
            headers=self.headers(
                Upload_Offset=str(offset), Content_Type="application/offset+octet-stream", **extra
            ),
        )

    def head(self, location: str) -> requests.Response:
        """HEAD the upload."""
        return self.session.head(self.url + location, headers=self.headers())


def enroll(url: str, cert: Path, code: str, serial: str = "CAM-0001") -> Camera:
    """Enroll a camera with a pairing code over real HTTPS."""
    response = requests.post(
        f"{url}/api/v1/cameras/enroll",
        verify=str(cert),
        json={"code": code, "serial": serial, "model": "TestCam 1"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return Camera(url, cert, body["device_id"], body["token"], serial)


@pytest.fixture
def camera(box) -> Camera:
    """A camera enrolled with the running in-process box."""
    return enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"])


class BoxProcess:
    """`edgebox run` as a real subprocess, so tests can kill -9 it."""

    def __init__(self, config: Path, env: dict | None = None):
        self.config = config
        self.env = env or {}
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.cert = config.parent / "data" / "keys" / "tls.crt"
        self.proc: subprocess.Popen | None = None

    def start(self) -> BoxProcess:
        """Start the box and wait until it answers."""
        with open(self.config.parent / "box.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgebox",
                    "run",
                    "--config",
                    str(self.config),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"box exited: {(self.config.parent / 'box.log').read_text()}")
            try:
                requests.get(f"{self.url}/api/v1/health", verify=str(self.cert), timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("box did not start")

    def kill9(self) -> None:
        """SIGKILL the box: no cleanup, no flush, as in a power cut of the process."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the box gracefully if it still runs."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def box_process(box_config):
    """A box running as a subprocess (for kill -9 tests)."""
    process = BoxProcess(box_config).start()
    yield process
    process.stop()


def run_cli(
    *args: str, config: Path | None = None, input: str | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m edgebox ARGS` for real and capture its output."""
    command = [sys.executable, "-m", "edgebox", *args]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        input=input,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def build_wheel(dist: Path) -> Path:
    """The real edgebox wheel of this tree, built with `pip wheel --no-deps`."""
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = Path(dist).glob("edgebox-*.whl")
    return wheel
