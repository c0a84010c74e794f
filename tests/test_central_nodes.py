"""Two central nodes (two `edgebox central run` processes) share one S3 store (a real
SeaweedFS), one PostgreSQL index and one work folder, behind one Mosquitto: simulated boxes
that drop offline mid-transfer get every file confirmed, each stored and indexed once."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bench.fleet_box import SimBox
from bench.fleet_link import BoxRunner, BoxUplink, FleetStats
from edgebox.central.blobs.s3 import S3Blobs
from edgebox.central.files import recording_key
from tests.sync_fixtures import wait_for

BOXES, RECORDINGS = 8, 2


def central_node(name: str, broker, work: Path, store: str, index: str, env: dict, log: Path):
    argv = [
        str(Path(sys.executable).with_name("edgebox")),
        "central", "run", "--broker", broker.url_plain, "--store", store,
        "--work", str(work), "--index", index, "--workers", "2",
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_two_nodes_share_store_and_index(tmp_path, broker, seaweed, postgres, monkeypatch):
    import os

    index = postgres.new_database()
    store = f"{seaweed.url}-nodes"
    env = {**os.environ, **seaweed.env()}
    work = tmp_path / "work"
    nodes = [
        central_node(f"n{n}", broker, work, store, index, env, tmp_path / f"node{n}.log")
        for n in range(2)
    ]
    central_key = X25519PrivateKey.generate().public_key()
    fleet = []
    for n in range(BOXES):
        box = SimBox(f"node-box-{n}", tmp_path / "boxes" / str(n))
        box.record("box.enrolled")
        for _ in range(RECORDINGS):
            box.make_recording(300_000 + n, central_key)
        fleet.append(box)
    stats = FleetStats()
    try:
        wait_for(
            lambda: all("worker(s) on" in (tmp_path / f"node{n}.log").read_text() for n in (0, 1)),
            timeout=30,
            what="both nodes up",
        )
        time.sleep(1)
        deadline = time.monotonic() + 90
        rng = random.Random(7)
        threads = [
            threading.Thread(
                target=BoxRunner(
                    box,
                    BoxUplink(box, "127.0.0.1", broker.port_plain, ack_timeout=5),
                    stats,
                    random.Random(rng.random()),
                    chunk=64 * 1024,
                    offline_chance=0.3,
                ).run,
                args=(deadline,),
            )
            for box in fleet
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(100)
        assert all(node.poll() is None for node in nodes), "a node died"
    finally:
        for node in nodes:
            node.terminate()
            node.wait(20)
    expected = {(b.box_id, r.id): r.sha256 for b in fleet for r in b.recordings}
    assert set(stats.completed) == set(expected)
    with psycopg.connect(index) as conn:
        rows = conn.execute("SELECT box_id, recording_id, stored_sha256 FROM recordings").fetchall()
    assert {(b, r): s for b, r, s in rows} == expected and len(rows) == len(expected)
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    blobs = S3Blobs(seaweed.bucket, "central-nodes")
    keys = list(blobs.list("boxes/"))
    assert len(keys) == 2 * len(expected)
    for (box, rid), sha in expected.items():
        assert blobs.head(recording_key(box, rid)).sha256 == sha
    assert not list((work / "transfers").glob("*/*/data"))
    listed = subprocess.run(
        [str(Path(sys.executable).with_name("edgebox")), "central", "list", "--work", str(work),
         "--index", index, "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert {(r["box_id"], r["recording_id"]) for r in json.loads(listed.stdout)} == set(expected)
    assert stats.offline_spells > 0  # boxes did drop mid-transfer and resumed
