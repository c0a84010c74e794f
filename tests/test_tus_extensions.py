"""tus extensions beyond creation: creation-with-upload, the refusal of concatenation, and the
pairing URL of a box running on another port than its config says."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest

from edgebox.config import load_config
from tests.conftest import enroll, run_cli

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


@pytest.mark.parametrize("concat", ["partial", "final;/tus/a /tus/b"])
def test_upload_concat_is_refused_before_anything_is_stored(box, camera, concat):
    before = _counts(box)
    refused = camera.session.post(
        f"{camera.url}/tus/",
        headers=camera.headers(
            Upload_Length="10", Upload_Metadata=_meta(camera), Upload_Concat=concat
        ),
    )
    assert refused.status_code == 400
    body = refused.json()
    assert body["field"] == "Upload-Concat" and "not supported" in body["message"]
    assert _counts(box) == before
    options = camera.session.options(f"{camera.url}/tus/")
    assert "concatenation" not in options.headers["Tus-Extension"]


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
