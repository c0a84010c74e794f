"""Re-pairing a camera revokes its older token; a clip the box already holds is answered with
that recording, not stored twice (raw tus over real HTTPS, and the camera simulator)."""

from __future__ import annotations

import hashlib
import json
import os
import time

from edgebox.box import Box
from edgebox.camera import CameraSim
from edgebox.config import load_config
from edgebox.keys import certificate_fingerprint
from tests.conftest import enroll, make_box
from tests.test_ingest import upload_all

CLIP = bytes(range(256)) * 3001


def _events(box, event: str) -> list[dict]:
    return box.store.query("SELECT * FROM custody WHERE event = ? ORDER BY seq", (event,))


def _pair(box, serial: str):
    return enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"], serial)


def test_repairing_revokes_the_older_token(box, camera):
    again = _pair(box, camera.serial)
    assert camera.create(10).status_code == 403  # the old token is revoked at once
    assert again.create(10).status_code == 201
    [entry] = _events(box, "camera.revoked")
    assert entry["subject"] == camera.device_id and entry["actor"] == "box"
    details = json.loads(entry["details"])
    assert details == {
        "reason": "re-paired",
        "serial": camera.serial,
        "replaced_by": again.device_id,
    }
    other = _pair(box, "CAM-OTHER")  # another serial revokes nothing
    assert other.create(10).status_code == 201 and again.create(10).status_code == 201
    assert len(_events(box, "camera.revoked")) == 1


def test_repairing_keeps_the_old_token_when_configured(tmp_path):
    config = make_box(tmp_path / "box")
    environ = {"EDGEBOX_INGEST__REVOKE_ON_REPAIR": "false"}
    box = Box(load_config(config, environ=environ)).start(("127.0.0.1", 0))
    try:
        first = _pair(box, "CAM-1")
        second = _pair(box, "CAM-1")
        assert first.create(10).status_code == 201 and second.create(10).status_code == 201
        assert _events(box, "camera.revoked") == []
    finally:
        box.stop()


def test_a_clip_held_already_is_answered_not_stored_twice(box, camera):
    digest = hashlib.sha256(CLIP).hexdigest()
    meta = {"sha256": digest, "filename": "a.mp4"}
    done, location = upload_all(camera, CLIP, metadata=meta)
    rid = done.headers["EdgeBox-Recording-Id"]
    files = sorted(p.name for p in box.uploads.vault_dir.iterdir())

    again = camera.create(len(CLIP), meta)
    assert again.status_code == 200, again.text
    assert again.headers["Location"] == location
    assert again.headers["Upload-Offset"] == str(len(CLIP))
    assert again.headers["EdgeBox-Recording-Id"] == rid
    assert again.headers["EdgeBox-Evidence-Sha256"] == digest
    assert again.headers["EdgeBox-Duplicate"] == "true"
    # the same camera paired again asks too: same answer, and HEAD on the Location works
    repaired = _pair(box, camera.serial)
    answer = repaired.create(len(CLIP), {"sha256": digest})
    assert answer.status_code == 200 and answer.headers["EdgeBox-Recording-Id"] == rid
    head = repaired.head(answer.headers["Location"])
    assert head.status_code == 200 and head.headers["EdgeBox-Evidence-Sha256"] == digest
    assert box.store.one("SELECT count(*) AS n FROM recordings")["n"] == 1
    assert box.store.one("SELECT count(*) AS n FROM uploads")["n"] == 1
    assert sorted(p.name for p in box.uploads.vault_dir.iterdir()) == files
    logged = _events(box, "upload.duplicate")
    assert [e["subject"] for e in logged] == [rid, rid]
    assert json.loads(logged[1]["details"])["device_id"] == repaired.device_id

    # not the same clip: another camera's serial, another length, or no hash: a new upload
    stranger = _pair(box, "CAM-STRANGER")
    assert stranger.create(len(CLIP), {"sha256": digest}).status_code == 201
    assert stranger.head(location).status_code == 403  # another camera's upload stays closed
    assert repaired.create(len(CLIP) + 1, {"sha256": digest}).status_code == 201
    assert repaired.create(len(CLIP)).status_code == 201
    assert len(_events(box, "upload.duplicate")) == 2


def test_camera_sim_deletes_a_resent_clip_only_on_the_box_answer(box, tmp_path):
    fingerprint = certificate_fingerprint(box.keys.tls_cert.read_bytes())
    sim = CameraSim(tmp_path / "cam", serial="SIM-1", width=160, height=90, fps=5)
    sim.pair(box.url, box.pairing.new_code()["code"], fingerprint)
    path = sim.record(seconds=2, pre_event_seconds=1)
    kept = path.read_bytes()
    [first] = sim.upload_pending()
    assert first.delivered and not path.exists()
    sim.close()
    # the camera is reset: its state is gone, the clip survived on its card; it is paired
    # again (the old token is revoked) and finds the clip with no queue entry
    reset = CameraSim(tmp_path / "cam-reset", serial="SIM-1", width=160, height=90, fps=5)
    reset.pair(box.url, box.pairing.new_code()["code"], fingerprint)
    found = reset.outbox / path.name
    found.write_bytes(kept)
    os.utime(found, (time.time() - 3600, time.time() - 3600))  # settled long ago
    [second] = reset.upload_pending()
    assert second.delivered and second.recording_id == first.recording_id
    assert second.bytes_sent == 0 and not found.exists()
    assert second.evidence_sha256 == hashlib.sha256(kept).hexdigest()
    assert box.store.one("SELECT count(*) AS n FROM recordings")["n"] == 1
    assert [e["subject"] for e in _events(box, "upload.duplicate")] == [first.recording_id]
    assert [e["subject"] for e in _events(box, "camera.revoked")] == [sim.device_id]
    reset.close()
