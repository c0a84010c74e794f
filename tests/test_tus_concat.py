"""tus concatenation: parts are never recordings; a final upload joins them into one recording
with one evidence hash and the final request's metadata; bad finals change nothing."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest

from tests.conftest import enroll
from tests.test_tus_extensions import _counts, _stored_matches

MIB = 1 << 20


def _encode(meta: dict) -> str:
    return ",".join(f"{k} {base64.b64encode(str(v).encode()).decode()}" for k, v in meta.items())


def _part(camera, data: bytes, chunk: int = MIB) -> str:
    created = camera.session.post(
        f"{camera.url}/tus/",
        headers=camera.headers(Upload_Length=str(len(data)), Upload_Concat="partial"),
    )
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    for offset in range(0, len(data), chunk):
        done = camera.patch(location, offset, data[offset : offset + chunk])
        assert done.status_code == 204, done.text
        assert "EdgeBox-Recording-Id" not in done.headers
    return location


def _final(camera, locations: list[str], meta: dict | None = None, **extra):
    urls = " ".join(camera.url + loc for loc in locations)
    headers = camera.headers(
        Upload_Concat=f"final;{urls}",
        Upload_Metadata=_encode({"serial": camera.serial, **(meta or {})}),
        **extra,
    )
    return camera.session.post(f"{camera.url}/tus/", headers=headers)


def test_parts_joined_by_a_final_upload_make_one_recording(box, camera):
    data = os.urandom(3 * MIB + 500)
    cut = MIB + 250  # not on a segment boundary
    parts = [_part(camera, data[:cut]), _part(camera, data[cut:])]
    assert box.store.query("SELECT id FROM recordings") == [], "a part is no recording"
    assert box.store.query("SELECT id FROM outbox") == []
    final = _final(
        camera, parts, {"filename": "joined.mp4", "sha256": hashlib.sha256(data).hexdigest()}
    )
    assert final.status_code == 201, final.text
    assert final.headers["Upload-Offset"] == str(len(data))
    rid = final.headers["EdgeBox-Recording-Id"]
    assert final.headers["EdgeBox-Evidence-Sha256"] == hashlib.sha256(data).hexdigest()
    rows = box.store.query("SELECT id, filename FROM recordings")
    assert rows == [{"id": rid, "filename": "joined.mp4"}]
    _stored_matches(box, rid, data)
    assert list((box.data_dir / "uploads").iterdir()) == [], "the parts' files are gone"
    head = camera.head(final.headers["Location"])
    assert head.headers["EdgeBox-Recording-Id"] == rid
    assert head.headers["Upload-Concat"] == "final;" + " ".join(parts)
    part_head = camera.head(parts[0])
    assert part_head.headers["Upload-Offset"] == str(cut)
    assert part_head.headers["Upload-Concat"] == "partial"
    events = [r["event"] for r in box.store.query("SELECT event FROM custody ORDER BY seq")]
    assert events.count("upload.part_complete") == 2 and events.count("recording.ingested") == 1
    started = box.store.query("SELECT details FROM custody WHERE event = 'upload.started'")
    assert json.loads(started[-1]["details"])["parts"] == [p.rsplit("/", 1)[1] for p in parts]
    again = _final(camera, parts)
    assert again.status_code == 400, "parts are used once"
    assert len(box.store.query("SELECT id FROM recordings")) == 1


def test_a_complete_part_takes_no_more_bytes_and_expires(box, camera):
    location = _part(camera, b"abc")
    assert camera.head(location).headers["Upload-Offset"] == "3"
    assert camera.patch(location, 3, b"d").status_code == 409
    import datetime as dt

    from edgebox.clock import utcnow

    expired = box.uploads.expire(utcnow() + dt.timedelta(hours=box.config.ingest.expire_hours + 1))
    assert expired == [location.rsplit("/", 1)[1]]
    assert list((box.data_dir / "uploads").iterdir()) == []
    assert box.store.query("SELECT id FROM recordings") == []


def test_bad_final_uploads_change_nothing(box, camera):
    data = os.urandom(2 * MIB)
    good = [_part(camera, data[:MIB]), _part(camera, data[MIB:])]
    unfinished = camera.session.post(
        f"{camera.url}/tus/", headers=camera.headers(Upload_Length="10", Upload_Concat="partial")
    ).headers["Location"]
    other = enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"], serial="CAM-0002")
    theirs = _part(other, b"not yours")
    before = _counts(box)
    cases = [
        (_final(camera, [good[0], "/tus/nosuchupload"]), 404),
        (_final(camera, [good[0], unfinished]), 400),
        (_final(camera, [good[0], theirs]), 403),
        (_final(camera, [good[0], good[0]]), 400),
        (_final(camera, good, Upload_Length=str(2 * MIB)), 400),
        (_final(camera, good, {"sha256": "0" * 64}), 460),
    ]
    bogus = camera.session.post(
        f"{camera.url}/tus/", headers=camera.headers(Upload_Concat="final;", Upload_Length="1")
    )
    cases.append((bogus, 400))
    for response, status in cases:
        assert response.status_code == status, (status, response.text)
    assert box.store.query("SELECT id FROM recordings") == []
    assert _counts(box)["files"] == before["files"], "the parts are kept for another try"
    joined = _final(camera, good)
    assert joined.status_code == 201, joined.text
    _stored_matches(box, joined.headers["EdgeBox-Recording-Id"], data)


@pytest.mark.parametrize("how", ["terminated", "used"])
def test_a_part_that_ended_cannot_be_joined(box, camera, how):
    data = os.urandom(1000)
    parts = [_part(camera, data[:400]), _part(camera, data[400:])]
    if how == "terminated":
        ended = camera.session.delete(camera.url + parts[1], headers=camera.headers())
        assert ended.status_code == 204
    else:
        assert _final(camera, [parts[1]]).status_code == 201
    refused = _final(camera, parts)
    assert refused.status_code in (400, 410), refused.text
    assert len(box.store.query("SELECT id FROM recordings")) == (how == "used")


def test_a_clean_up_failing_after_the_join_was_recorded_keeps_the_recording(
    box, camera, monkeypatch
):
    """A step after the recording's row (dropping the final's resume key) fails with EIO:
    the answer is an error, but the recorded vault file stays. The EIO is injected, since a
    real failing unlink cannot be arranged here; everything else is the real box."""
    from pathlib import Path

    from edgebox.ingest.uploads import Uploads

    data = os.urandom(2 * MIB + 7)
    parts = [_part(camera, data[:MIB]), _part(camera, data[MIB:])]
    real = Uploads._resume_path

    class FailingUnlink(type(Path())):
        def unlink(self, missing_ok=False):
            raise OSError(5, "Input/output error")

    def resume_path(self, upload_id):
        path = real(self, upload_id)
        final = box.store.one("SELECT concat FROM uploads WHERE id = ?", (upload_id,))
        return FailingUnlink(path) if final and final["concat"] == "final" else path

    monkeypatch.setattr(Uploads, "_resume_path", resume_path)
    answer = _final(camera, parts)
    assert answer.status_code >= 400
    rows = box.store.query("SELECT id, evidence_sha256 FROM recordings")
    assert [r["evidence_sha256"] for r in rows] == [hashlib.sha256(data).hexdigest()]
    assert box.uploads.vault_path(rows[0]["id"]).exists()
