"""Upstream sync end to end: real Mosquitto with TLS, real boxes, real central workers."""

from __future__ import annotations

import hashlib
import os

from edgebox import vault
from edgebox.verify import verify_box
from tests.conftest import enroll
from tests.sync_fixtures import (
    central_holds,
    central_workers,
    start_box,
    synced,
    wait_for,
)
from tests.test_ingest import upload_all

MIB = 1 << 20


def fill(box, count: int, size: int = MIB) -> list[bytes]:
    """Upload `count` recordings of random bytes through a freshly paired camera."""
    camera = enroll(
        box.url, box.keys.tls_cert, box.pairing.new_code()["code"], f"CAM-{box.config.box.box_id}"
    )
    payloads = [os.urandom(size + i * 1000) for i in range(count)]
    for data in payloads:
        upload_all(camera, data)
    return payloads


def test_full_flow_two_boxes_two_workers(tmp_path, broker, pki):
    store = tmp_path / "central"
    workers = central_workers(store, broker, pki, count=2)
    boxes = [start_box(tmp_path / f"box{i}", broker, pki, f"van-{i}") for i in range(2)]
    try:
        payloads = {b.config.box.box_id: fill(b, 3, MIB + 17) for b in boxes}
        for b in boxes:
            wait_for(lambda b=b: synced(b), what=f"{b.config.box.box_id} synced")
        held = central_holds(store)
        for b in boxes:
            for rec in b.store.query("SELECT * FROM recordings"):
                assert rec["sealed"] == 1
                events = [
                    e["event"]
                    for e in b.store.query(
                        "SELECT event FROM custody WHERE subject = ? ORDER BY seq", (rec["id"],)
                    )
                ]
                assert events[-2:] == ["recording.synced", "recording.sealed"]
                synced_entry = b.store.one(
                    "SELECT details FROM custody WHERE subject = ? AND event = 'recording.synced'",
                    (rec["id"],),
                )
                assert held[rec["id"]] in synced_entry["details"]
            assert verify_box(b).ok
        assert len(held) == 6
        evidence = {
            r["evidence_sha256"] for b in boxes for r in b.store.query("SELECT * FROM recordings")
        }
        assert evidence == {hashlib.sha256(d).hexdigest() for p in payloads.values() for d in p}
        for b in boxes:
            for rec in b.store.query("SELECT * FROM recordings"):
                path = store / "boxes" / b.config.box.box_id / "recordings" / f"{rec['id']}.ebv"
                assert vault.file_sha256(path) == held[rec["id"]]
    finally:
        for b in boxes:
            b.stop()
        for w in workers:
            w.stop()
