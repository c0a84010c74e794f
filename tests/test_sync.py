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
    sealed,
    start_box,
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
            wait_for(lambda b=b: sealed(b), what=f"{b.config.box.box_id} synced and sealed")
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


def test_heartbeat_and_metadata_events_are_applied_once(tmp_path, broker, pki):
    from edgebox.central.index import Index
    from edgebox.scheduler import heartbeat
    from edgebox.sync.outbox import queue_meta

    store = tmp_path / "central"
    workers = central_workers(store, broker, pki, count=2)
    box = start_box(tmp_path / "box", broker, pki, "van-7")
    index = Index(store)
    try:
        wait_for(lambda: box.uplink.link.connected.is_set(), what="link up")
        assert heartbeat(box)
        queue_meta(box.store, {"type": "recording.tagged", "recording": "r1", "incident": "I-9"})
        wait_for(
            lambda: (
                box.store.one(
                    "SELECT COUNT(*) AS n FROM outbox WHERE kind = 'meta' AND state = 'done'"
                )["n"]
                == 2
            ),
            what="both acknowledged",
        )
        with box.store.write() as db:  # as if the ack had been lost: the event goes again
            db.execute("UPDATE outbox SET state = 'queued' WHERE ref = 'recording.tagged'")
        wait_for(
            lambda: (
                box.store.one("SELECT state FROM outbox WHERE ref = 'recording.tagged'")["state"]
                == "done"
            ),
            what="resent event acknowledged",
        )
        events = index.query("SELECT type, body FROM events WHERE box_id = 'van-7' ORDER BY type")
        assert [e["type"] for e in events] == ["heartbeat", "recording.tagged"]
        assert '"incident": "I-9"' in events[1]["body"]
    finally:
        index.close()
        box.stop()
        for w in workers:
            w.stop()
