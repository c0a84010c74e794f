"""tus extensions beyond creation: creation-with-upload, creation-defer-length, and the pairing
URL of a box running on another port than its config says (concatenation: test_tus_concat)."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest

from edgebox.config import load_config
from tests.conftest import enroll, run_cli
from tests.test_full_disk import _quiet_box, small_disk  # noqa: F401 - the fixture

MIB = 1 << 20


def _meta(camera) -> str:
    return f"serial {base64.b64encode(camera.serial.encode()).decode()}"


def _post(camera, body: bytes, length: int | None = None, **extra):
    headers = camera.headers(
        Upload_Length=str(len(body) if length is None else length),
        Upload_Metadata=_meta(camera),
        Content_Type="application/offset+octet-stream",
        **extra,
    )
    return camera.session.post(f"{camera.url}/tus/", data=body, headers=headers)


def _counts(box) -> dict:
    return {
        table: box.store.one(f"SELECT COUNT(*) AS n FROM {table}")["n"]  # noqa: S608
        for table in ("uploads", "recordings")
    } | {"files": len(list((box.data_dir / "uploads").iterdir()))}


def test_creation_with_upload_takes_the_whole_recording_in_the_post(box, camera):
    data = os.urandom(2 * MIB + 77)
    created = _post(camera, data)
    assert created.status_code == 201, created.text
    assert int(created.headers["Upload-Offset"]) == len(data)
    rid = created.headers["EdgeBox-Recording-Id"]
    assert created.headers["EdgeBox-Evidence-Sha256"] == hashlib.sha256(data).hexdigest()
    row = box.store.one("SELECT evidence_sha256, size FROM recordings WHERE id = ?", (rid,))
    assert row == {"evidence_sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_creation_with_upload_of_a_first_part_then_patch(box, camera):
    data = os.urandom(3 * MIB)
    created = _post(camera, data[:MIB], length=len(data))
    assert created.status_code == 201, created.text
    assert created.headers["Upload-Offset"] == str(MIB)
    location = created.headers["Location"]
    assert camera.head(location).headers["Upload-Offset"] == str(MIB)
    done = camera.patch(location, MIB, data[MIB:])
    assert done.status_code == 204
    assert done.headers["EdgeBox-Evidence-Sha256"] == hashlib.sha256(data).hexdigest()


def test_creation_with_a_body_of_the_wrong_type_stores_nothing(box, camera):
    before = _counts(box)
    refused = camera.session.post(
        f"{camera.url}/tus/",
        data=b"x" * 100,
        headers=camera.headers(Upload_Length="100", Content_Type="text/plain"),
    )
    assert refused.status_code == 415
    assert _counts(box) == before


def test_a_failed_body_at_creation_leaves_a_resumable_upload(box, camera):
    data = os.urandom(MIB)
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    created = _post(camera, data, Upload_Checksum=f"sha256 {wrong}")
    assert created.status_code == 460, created.text
    location = created.headers["Location"]
    assert camera.head(location).headers["Upload-Offset"] == "0"
    assert camera.patch(location, 0, data).status_code == 204


def test_pairing_prints_the_url_the_running_box_serves(box_process):
    assert load_config(box_process.config).server.listen != f"127.0.0.1:{box_process.port}"
    paired = run_cli("cameras", "pair", "--json", config=box_process.config)
    assert paired.returncode == 0, paired.stderr
    result = json.loads(paired.stdout)
    assert result["box_url"] == box_process.url
    camera = enroll(result["box_url"], box_process.cert, result["code"])
    assert _post(camera, b"evidence").status_code == 201
    box_process.stop()
    after = json.loads(run_cli("cameras", "pair", "--json", config=box_process.config).stdout)
    assert after["box_url"] != box_process.url  # nothing serves there any more


def _create_deferred(camera, **extra):
    return camera.session.post(
        f"{camera.url}/tus/",
        headers=camera.headers(
            **{"Upload_Defer_Length": "1", "Upload_Metadata": _meta(camera), **extra}
        ),
    )


def _stored_matches(box, rid: str, data: bytes) -> None:
    """The recording's row, its vault file and what a reviewer decrypts all agree with `data`."""
    from edgebox import vault
    from edgebox.recordings import data_key_for
    from edgebox.verify import verify_box
    from tests.conftest import SECRET

    row = box.store.one("SELECT * FROM recordings WHERE id = ?", (rid,))
    assert row["evidence_sha256"] == hashlib.sha256(data).hexdigest()
    assert row["size"] == len(data)
    path = box.uploads.vault_path(rid)
    assert row["stored_sha256"] == vault.file_sha256(path)
    assert row["stored_size"] == path.stat().st_size
    review = box.keys.unlock_review(SECRET)
    reader = vault.Reader(path, data_key_for(path, review))
    assert reader.verify() == row["evidence_sha256"]
    assert b"".join(reader.read_range(0, len(data))) == data
    report = verify_box(box, review)
    assert report.ok, report.to_dict()


@pytest.mark.parametrize(
    "size", [0, 5, MIB, 2 * MIB, 2 * MIB + 3], ids=["empty", "tiny", "1seg", "2seg", "2seg+3"]
)
def test_deferred_length_declared_by_the_last_patch(box, camera, size):
    data = os.urandom(size)
    created = _create_deferred(camera)
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    head = camera.head(location)
    assert head.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in head.headers
    offset = 0
    for start in range(0, size, MIB):  # whole segments first, length unknown
        part = data[start : start + MIB]
        if start + MIB >= size:
            break
        assert camera.patch(location, start, part).status_code == 204
        offset = start + MIB
    done = camera.patch(location, offset, data[offset:], Upload_Length=str(size))
    assert done.status_code == 204, done.text
    _stored_matches(box, done.headers["EdgeBox-Recording-Id"], data)
    events = [r["event"] for r in box.store.query("SELECT event FROM custody ORDER BY seq")]
    assert "upload.length_declared" in events and "recording.ingested" in events


def test_deferred_length_declared_by_an_empty_last_patch(box, camera):
    """A streaming camera learns the length after its last byte: a PATCH with no body and
    Upload-Length ends the upload; the segment held back as maybe-the-last is sealed last."""
    data = os.urandom(2 * MIB)
    location = _create_deferred(camera).headers["Location"]
    assert camera.patch(location, 0, data).status_code == 204
    assert camera.head(location).headers["Upload-Offset"] == str(2 * MIB)
    done = camera.patch(location, 2 * MIB, b"", Upload_Length=str(2 * MIB))
    assert done.status_code == 204, done.text
    _stored_matches(box, done.headers["EdgeBox-Recording-Id"], data)


def test_deferred_length_declared_early_then_resumed_after_a_restart(box, camera):
    data = os.urandom(3 * MIB + 10)
    location = _create_deferred(camera).headers["Location"]
    first = camera.patch(location, 0, data[: MIB + 5], Upload_Length=str(len(data)))
    assert first.status_code == 204
    assert camera.head(location).headers["Upload-Length"] == str(len(data))
    uid = location.rsplit("/", 1)[1]
    with box.uploads._registry:  # as after a restart: the held-back tail is lost
        box.uploads._active.pop(uid).writer.close()
    offset = int(camera.head(location).headers["Upload-Offset"])
    assert offset == MIB
    done = camera.patch(location, offset, data[offset:])
    assert done.status_code == 204, done.text
    _stored_matches(box, done.headers["EdgeBox-Recording-Id"], data)


def test_deferred_length_resumes_before_the_length_is_known(box, camera):
    data = os.urandom(2 * MIB + 7)
    location = _create_deferred(camera).headers["Location"]
    assert camera.patch(location, 0, data[: 2 * MIB]).status_code == 204
    uid = location.rsplit("/", 1)[1]
    with box.uploads._registry:
        box.uploads._active.pop(uid).writer.close()
    head = camera.head(location)
    assert head.headers["Upload-Offset"] == str(MIB)  # the kept-back segment was in memory
    assert head.headers["Upload-Defer-Length"] == "1"
    done = camera.patch(location, MIB, data[MIB:], Upload_Length=str(len(data)))
    assert done.status_code == 204, done.text
    _stored_matches(box, done.headers["EdgeBox-Recording-Id"], data)


def test_deferred_length_bad_input_changes_nothing(box, camera):
    for headers in (
        {"Upload_Defer_Length": "2"},
        {"Upload_Defer_Length": "1", "Upload_Length": "10"},
    ):
        before = _counts(box)
        assert _create_deferred(camera, **headers).status_code == 400
        assert _counts(box) == before
    location = _create_deferred(camera).headers["Location"]
    assert camera.patch(location, 0, b"x" * 100).status_code == 204
    below = camera.patch(location, 100, b"y", Upload_Length="50")
    assert below.status_code == 400 and "below" in below.json()["message"]
    assert camera.head(location).headers["Upload-Defer-Length"] == "1"
    too_big = str(box.config.ingest.max_upload_bytes + 1)
    assert camera.patch(location, 100, b"y", Upload_Length=too_big).status_code == 413
    assert camera.patch(location, 100, b"y", Upload_Length="300").status_code == 204
    changed = camera.patch(location, 101, b"z", Upload_Length="301")
    assert changed.status_code == 400 and "cannot change" in changed.json()["message"]
    assert camera.head(location).headers["Upload-Offset"] == "101"
    past = camera.patch(location, 101, b"z" * 200)
    assert past.status_code == 413
    assert camera.head(location).headers["Upload-Offset"] == "101"


def test_deferred_uploads_reserve_only_what_they_are_sent(small_disk):  # noqa: F811
    """Space (docs/ingest.md): a deferred upload reserves nothing beyond the bytes it holds;
    each chunk is checked as it comes, and the length once declared, like a creation. On a
    small filesystem of its own, so nothing else moves the free space under the test."""
    import dataclasses
    import shutil

    box, camera = _quiet_box(small_disk, "van-deferred")
    try:
        location = _create_deferred(camera).headers["Location"]
        assert camera.patch(location, 0, os.urandom(8 * MIB)).status_code == 204
        free = shutil.disk_usage(box.uploads.settings.data_dir).free
        box.uploads.settings = dataclasses.replace(
            box.uploads.settings, reserve_free_bytes=free - 24 * MIB
        )  # 24 MiB usable from here on
        assert camera.create(12 * MIB).status_code == 201  # the deferred one reserves no more
        refused = camera.patch(location, 8 * MIB, os.urandom(16 * MIB))  # 12 + 16 > 24
        assert refused.status_code == 507
        declared = camera.patch(location, 8 * MIB, b"", Upload_Length=str(24 * MIB))
        assert declared.status_code == 507  # 16 MiB more for it, 12 MiB for the other: > 24
        assert camera.head(location).headers["Upload-Defer-Length"] == "1"
        assert camera.patch(location, 8 * MIB, os.urandom(4 * MIB)).status_code == 204
        assert camera.patch(location, 12 * MIB, b"", Upload_Length=str(12 * MIB)).status_code == 204
    finally:
        box.stop()
