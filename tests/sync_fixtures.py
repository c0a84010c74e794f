"""Fixtures for sync tests: a real TLS Mosquitto, real boxes wired to it, real central workers."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest

from edgebox.box import Box
from edgebox.central.index import Index
from edgebox.central.worker import central_settings, start_workers
from edgebox.config import load_config
from tests.brokers import Mosquitto, TestPKI
from tests.conftest import make_box


@pytest.fixture
def pki(tmp_path) -> TestPKI:
    """A throwaway CA with server and client certificates."""
    return TestPKI(tmp_path / "pki")


@pytest.fixture
def broker(tmp_path, pki):
    """A running Mosquitto with TLS listeners on free ports."""
    with Mosquitto(tmp_path / "broker", pki) as running:
        yield running


def upstream_env(broker: Mosquitto, pki: TestPKI, box_id: str, **extra) -> dict:
    """EDGEBOX_UPSTREAM__* overrides that point a box at the broker with a client certificate."""
    cert, key = pki.client_cert(box_id)
    env = {
        "EDGEBOX_UPSTREAM__BROKER": broker.url_tls_cert,
        "EDGEBOX_UPSTREAM__CA": str(broker.ca_path),
        "EDGEBOX_UPSTREAM__CLIENT_CERT": str(cert),
        "EDGEBOX_UPSTREAM__CLIENT_KEY": str(key),
        "EDGEBOX_UPSTREAM__ACK_TIMEOUT_SECONDS": "3",
        "EDGEBOX_UPSTREAM__CHUNK_SIZE": str(256 * 1024),
    }
    env.update({f"EDGEBOX_UPSTREAM__{k.upper()}": str(v) for k, v in extra.items()})
    return env


def start_box(folder: Path, broker, pki, box_id: str, **extra) -> Box:
    """Create (if needed) and start an in-process box wired to the broker."""
    config = folder / "edgebox.toml"
    if not config.exists():
        make_box(folder, box_id=box_id)
    env = upstream_env(broker, pki, box_id, **extra)
    return Box(load_config(config, environ=env)).start(("127.0.0.1", 0))


@contextlib.contextmanager
def offline_box(folder: Path, box_id: str):
    """A box with no upstream (created in `folder` if needed), started; stopped on exit."""
    config = folder / "edgebox.toml"
    if not config.exists():
        make_box(folder, box_id=box_id)
    box = Box(load_config(config, environ={})).start(("127.0.0.1", 0))
    try:
        yield box
    finally:
        box.stop()


@contextlib.contextmanager
def box_and_central(folder: Path, broker, pki, box_id: str, store: Path, workers: int = 1):
    """Central's workers on `store` and a box (made in `folder` if needed) wired to them,
    started; all stopped on exit."""
    started = central_workers(store, broker, pki, count=workers)
    try:
        box = start_box(folder, broker, pki, box_id)
        try:
            yield box
        finally:
            box.stop()
    finally:
        for worker in started:
            worker.stop()


def central_workers(
    store: Path, broker, pki, count: int = 2, blobs: str | None = None, index: str = "sqlite"
):
    """Start central workers with their own client certificate (on `store` as the work
    folder; complete files in `blobs` when given, e.g. an s3:// URL)."""
    cert, key = pki.client_cert("central")
    settings = central_settings(
        broker.url_tls_cert, ca=str(broker.ca_path), cert=str(cert), key=str(key)
    )
    return start_workers(store, settings, count, blobs, index)


def central_holds(store: Path) -> dict:
    """recording id -> stored sha256 for every complete recording central indexed."""
    index = Index(store)
    try:
        return {
            r["recording_id"]: r["stored_sha256"] for r in index.query("SELECT * FROM recordings")
        }
    finally:
        index.close()


def wait_for(predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition"):
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def synced(box) -> bool:
    """Whether every recording on the box is confirmed by central."""
    rows = box.store.query("SELECT sync_state FROM recordings")
    return bool(rows) and all(r["sync_state"] == "synced" for r in rows)


def sealed(box) -> bool:
    """Whether every recording on the box is confirmed by central and sealed."""
    rows = box.store.query("SELECT sync_state, sealed FROM recordings")
    return bool(rows) and all(r["sync_state"] == "synced" and r["sealed"] for r in rows)


def alarms(store: Path) -> list[str]:
    """Central's alarms."""
    index = Index(store)
    try:
        return [r["message"] for r in index.query("SELECT message FROM alarms")]
    finally:
        index.close()


def dump(obj) -> str:
    """JSON for assertion messages."""
    return json.dumps(obj, indent=1, default=str)
