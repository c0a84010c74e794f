"""Central on an S3 store (a real SeaweedFS): a real box's recordings and replica reach the
bucket, and a store that goes down mid-transfer costs nothing: no ack before the bytes are in
the store, an alarm, and after the restart every file once."""

from __future__ import annotations

import time

from edgebox.central.blobs.s3 import S3Blobs
from edgebox.central.files import recording_key
from tests.seaweed import SeaweedFS
from tests.sync_fixtures import alarms, central_holds, central_workers, sealed, start_box, wait_for
from tests.test_sync import fill


def synced_ids(box) -> set[str]:
    return {
        r["id"] for r in box.store.query("SELECT id FROM recordings WHERE sync_state = 'synced'")
    }


def stored(blobs: S3Blobs, box_id: str, recording_id: str):
    return blobs.head(recording_key(box_id, recording_id))


def test_store_down_mid_transfer_nothing_acked_then_every_file_once(
    tmp_path, broker, pki, monkeypatch
):
    server = SeaweedFS(tmp_path / "seaweed").start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("EDGEBOX_S3_CONNECT_TIMEOUT", "1")
    work = tmp_path / "work"
    workers = central_workers(work, broker, pki, count=2, blobs=server.url)
    box = start_box(tmp_path / "box", broker, pki, "van-s3")
    blobs = S3Blobs(server.bucket, "central")
    try:
        fill(box, 6, 700_000)
        wait_for(lambda: synced_ids(box), what="a first recording confirmed")
        server.stop()  # mid-transfer: later recordings are on their way
        wait_for(
            lambda: any("blob store" in a for a in alarms(work)),
            timeout=30,
            what="an alarm about the store",
        )
        acked_before = synced_ids(box)
        assert len(acked_before) < 6
        time.sleep(4)  # more than the box's ack timeout: fins are sent again meanwhile
        assert synced_ids(box) == acked_before, "a recording was confirmed while the store was down"
        message = next(a for a in alarms(work) if "blob store" in a)
        assert "object store s3://evidence/central" in message
        server.start()
        wait_for(lambda: sealed(box), timeout=90, what="every recording confirmed after restart")
        ids = {r["id"] for r in box.store.query("SELECT id FROM recordings")}
        held = central_holds(work)  # the hashes central confirmed (sealing changed the box's)
        assert len(ids) == 6 and set(held) == ids
        for rid, sha in held.items():
            assert stored(blobs, "van-s3", rid).sha256 == sha
            custody = box.store.one(
                "SELECT details FROM custody WHERE subject = ? AND event = 'recording.synced'",
                (rid,),
            )
            assert sha in custody["details"]
        keys = list(blobs.list("boxes/van-s3/recordings/"))
        assert len(keys) == 12 and len(set(keys)) == 12  # each .ebv and manifest, once
        assert not list((work / "transfers" / "van-s3").glob("*/data"))  # nothing left staged
    finally:
        box.stop()
        for worker in workers:
            worker.stop()
        server.stop()
