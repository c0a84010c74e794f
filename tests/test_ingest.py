"""tus ingest end to end over real HTTPS: happy paths, resume, kill -9, errors, plaintext scan."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
import requests
from tusclient import client as tus_client

from edgebox import vault
from edgebox.recordings import data_key_for
from tests.conftest import SECRET, enroll

MIB = 1 << 20


def rows(box, sql, params=()):
    """Read rows from the box's database."""
    return box.store.query(sql, params)


def upload_all(camera, data: bytes, chunk: int = MIB, metadata: dict | None = None):
    """Create an upload and PATCH it in chunks; returns the final response and location."""
    created = camera.create(len(data), metadata)
    assert created.status_code == 201, created.text
    location = created.headers["Location"]
    offset = 0
    response = None
    while offset < len(data):
        response = camera.patch(location, offset, data[offset : offset + chunk])
        assert response.status_code == 204, response.text
        offset = int(response.headers["Upload-Offset"])
    return response, location


def test_options_advertises_protocol(box, camera):
    response = camera.session.options(f"{box.url}/tus/")
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "checksum",
        "concatenation",
        "termination",
        "expiration",
    }
    assert int(response.headers["Tus-Max-Size"]) == box.config.ingest.max_upload_bytes
    assert "sha256" in response.headers["Tus-Checksum-Algorithm"]


def test_tuspy_upload_stores_encrypted_recording(box, camera, tmp_path, monkeypatch):
    data = os.urandom(3 * MIB + 12345)
    source = tmp_path / "clip.mp4"
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(box.keys.tls_cert))  # tuspy coerces verify to bool
    stream = open(source, "rb")  # noqa: SIM115 - tuspy leaks files it opens itself
    uploader = tus_client.TusClient(
        f"{box.url}/tus/", headers={"Authorization": f"Bearer {camera.token}"}
    ).uploader(
        file_stream=stream,
        chunk_size=MIB,
        upload_checksum=True,
        metadata={
            "serial": camera.serial,
            "filename": "clip.mp4",
            "sha256": digest,
            "started_at": "2026-11-28T10:00:00Z",
            "stopped_at": "2026-11-28T10:01:10Z",
            "pre_event_seconds": "30",
            "category": "traffic",
            "warned": "true",
            "gps": "50.8503,4.3517",
            "user_id": "officer-7",
            "trigger_on": "holster",
            "trigger_off": "button",
            "x-vendor-field": "kept",
        },
    )
    uploader.upload()
    stream.close()
    [rec] = rows(box, "SELECT * FROM recordings")
    assert rec["evidence_sha256"] == digest and rec["camera_sha256"] == digest
    assert rec["category"] == "traffic" and rec["warned"] == 1 and rec["pre_event_seconds"] == 30
    assert '"x-vendor-field": "kept"' in rec["metadata"]
    path = box.uploads.vault_path(rec["id"])
    assert vault.file_sha256(path) == rec["stored_sha256"]
    assert data[:4096] not in path.read_bytes()
    review = box.keys.unlock_review(SECRET)
    reader = vault.Reader(path, data_key_for(path, review))
    assert reader.verify() == digest
    events = [
        r["event"] for r in rows(box, "SELECT event FROM custody WHERE subject = ?", (rec["id"],))
    ]
    assert events == ["upload.started", "recording.ingested"]
    assert not list(box.uploads.partial_dir.iterdir())


def test_tuspy_resumes_a_stopped_upload(box, camera, tmp_path, monkeypatch):
    data = os.urandom(5 * MIB)
    source = tmp_path / "clip.bin"
    source.write_bytes(data)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(box.keys.tls_cert))
    client = tus_client.TusClient(
        f"{box.url}/tus/", headers={"Authorization": f"Bearer {camera.token}"}
    )
    with open(source, "rb") as stream:
        first = client.uploader(
            file_stream=stream, chunk_size=MIB, metadata={"serial": camera.serial}
        )
        first.upload(stop_at=2 * MIB + 100)
    with open(source, "rb") as stream:
        second = client.uploader(file_stream=stream, url=first.url, chunk_size=MIB)
        assert second.offset == 2 * MIB + 100
        second.upload()
    [rec] = rows(box, "SELECT evidence_sha256 FROM recordings")
    assert rec["evidence_sha256"] == hashlib.sha256(data).hexdigest()


def test_final_response_and_head_report_recording(box, camera):
    data = os.urandom(MIB + 7)
    response, location = upload_all(camera, data, chunk=700_000)
    digest = hashlib.sha256(data).hexdigest()
    assert response.headers["EdgeBox-Evidence-Sha256"] == digest
    head = camera.head(location)
    assert head.status_code == 200 and head.headers["Upload-Offset"] == str(len(data))
    assert head.headers["EdgeBox-Recording-Id"] == response.headers["EdgeBox-Recording-Id"]


def test_empty_recording(box, camera):
    created = camera.create(0, {"sha256": hashlib.sha256(b"").hexdigest()})
    assert created.status_code == 201
    assert created.headers["Upload-Offset"] == "0"
    assert created.headers["EdgeBox-Evidence-Sha256"] == hashlib.sha256(b"").hexdigest()


def test_four_cameras_at_once(box):
    cameras = [
        enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"], f"CAM-{i}")
        for i in range(4)
    ]
    payloads = [os.urandom(4 * MIB + i * 1000) for i in range(4)]
    errors = []

    def deliver(camera, data):
        try:
            upload_all(camera, data, chunk=MIB // 2 + 3)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [
        threading.Thread(target=deliver, args=pair) for pair in zip(cameras, payloads, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    stored = {r["serial"]: r["evidence_sha256"] for r in rows(box, "SELECT * FROM recordings")}
    assert stored == {
        c.serial: hashlib.sha256(d).hexdigest() for c, d in zip(cameras, payloads, strict=True)
    }


# -- errors: precise status, nothing changed -------------------------------------------------


def snapshot(box) -> tuple:
    """Everything an error must leave untouched."""
    return (
        rows(box, "SELECT * FROM recordings"),
        rows(box, "SELECT id, state FROM uploads"),
        sorted(p.name for p in box.uploads.vault_dir.iterdir()),
    )


def test_unknown_and_missing_token(box, camera):
    camera.token = "not-a-token"
    assert camera.create(10).status_code == 401
    response = requests.post(
        f"{box.url}/tus/",
        verify=str(box.keys.tls_cert),
        headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"},
    )
    assert response.status_code == 401 and response.json()["message"] == "missing bearer token"


def test_revoked_camera_is_refused(box, camera):
    created = camera.create(100)
    box.pairing.revoke(camera.device_id)
    before = snapshot(box)
    assert camera.create(10).status_code == 403
    response = camera.patch(created.headers["Location"], 0, b"x" * 100)
    assert response.status_code == 403 and "revoked" in response.json()["message"]
    assert snapshot(box) == before


def test_other_cameras_upload_is_refused(box, camera):
    created = camera.create(100)
    other = enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"], "CAM-OTHER")
    assert other.patch(created.headers["Location"], 0, b"x" * 100).status_code == 403


def test_wrong_offset_conflicts(box, camera):
    location = camera.create(3 * MIB).headers["Location"]
    assert camera.patch(location, 0, b"a" * 1000).status_code == 204
    before = snapshot(box)
    response = camera.patch(location, 500, b"b" * 1000)
    assert response.status_code == 409 and "does not match" in response.json()["message"]
    assert camera.head(location).headers["Upload-Offset"] == "1000"
    assert snapshot(box) == before


def test_checksum_mismatch_discards_the_chunk(box, camera):
    data = os.urandom(2 * MIB + 5)
    location = camera.create(len(data), {"sha256": hashlib.sha256(data).hexdigest()}).headers[
        "Location"
    ]
    assert camera.patch(location, 0, data[: MIB + 3]).status_code == 204
    wrong = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()
    response = camera.patch(location, MIB + 3, data[MIB + 3 :], Upload_Checksum=f"sha256 {wrong}")
    assert response.status_code == 460 and "Checksum" in response.json()["message"]
    assert camera.head(location).headers["Upload-Offset"] == str(MIB + 3)
    good = base64.b64encode(hashlib.sha256(data[MIB + 3 :]).digest()).decode()
    response = camera.patch(location, MIB + 3, data[MIB + 3 :], Upload_Checksum=f"sha256 {good}")
    assert response.status_code == 204
    assert response.headers["EdgeBox-Evidence-Sha256"] == hashlib.sha256(data).hexdigest()


def test_whole_file_hash_mismatch_is_rejected(box, camera):
    data = os.urandom(MIB)
    location = camera.create(len(data), {"sha256": "0" * 64}).headers["Location"]
    response = camera.patch(location, 0, data)
    assert response.status_code == 460 and response.json()["field"] == "sha256"
    assert rows(box, "SELECT * FROM recordings") == []
    assert rows(box, "SELECT state FROM uploads") == [{"state": "failed"}]
    assert list(box.uploads.vault_dir.iterdir()) == []
    assert camera.head(location).status_code == 410


@pytest.mark.parametrize(
    "metadata, field",
    [
        ({"started_at": "yesterday"}, "started_at"),
        ({"gps": "91,0"}, "gps"),
        ({"pre_event_seconds": "-1"}, "pre_event_seconds"),
        ({"warned": "maybe"}, "warned"),
        ({"sha256": "xyz"}, "sha256"),
        ({"filename": "../../etc/passwd"}, "filename"),
        (
            {"started_at": "2026-11-28T10:00:00Z", "stopped_at": "2026-11-28T09:00:00Z"},
            "stopped_at",
        ),
        ({"warned": "true", "exemption": "crowd"}, "exemption"),
    ],
)
def test_bad_metadata_names_the_field(box, camera, metadata, field):
    before = snapshot(box)
    response = camera.create(100, metadata)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert snapshot(box) == before


def test_malformed_metadata_encoding(box, camera):
    response = camera.session.post(
        f"{box.url}/tus/",
        headers=camera.headers(Upload_Length="10", Upload_Metadata="filename !!!notbase64"),
    )
    assert response.status_code == 400 and response.json()["field"] == "filename"


def test_serial_of_another_camera_is_refused(box, camera):
    response = camera.create(10, {"serial": "SOMEONE-ELSE"})
    assert response.status_code == 403 and response.json()["field"] == "serial"


def test_too_large(box, camera):
    before = snapshot(box)
    response = camera.create(box.config.ingest.max_upload_bytes + 1)
    assert response.status_code == 413
    location = camera.create(100).headers["Location"]
    response = camera.patch(location, 0, b"x" * 101)
    assert response.status_code == 413
    assert snapshot(box)[0] == before[0]


def test_not_enough_space_at_creation(tmp_path):
    from edgebox.box import Box
    from edgebox.config import load_config
    from tests.conftest import make_box

    config = make_box(tmp_path / "small")
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    # Leave 4 GiB above the reserve: wide enough for other work on a shared disk.
    reserve = {"EDGEBOX_INGEST__RESERVE_FREE_BYTES": str(free - 4096 * MIB)}
    running = Box(load_config(config, environ=reserve)).start(("127.0.0.1", 0))
    try:
        camera = enroll(running.url, running.keys.tls_cert, running.pairing.new_code()["code"])
        response = camera.create(32 * 1024 * MIB)
        assert response.status_code == 507 and response.headers["Retry-After"]
        assert rows(running, "SELECT * FROM uploads") == []
        assert camera.create(MIB).status_code == 201
    finally:
        running.stop()


def test_wrong_tus_version_and_content_type(box, camera):
    response = camera.session.post(
        f"{box.url}/tus/", headers={**camera.headers(), "Tus-Resumable": "0.2"}
    )
    assert response.status_code == 412 and response.headers["Tus-Version"] == "1.0.0"
    location = camera.create(10).headers["Location"]
    response = camera.session.patch(
        box.url + location,
        data=b"x",
        headers=camera.headers(Upload_Offset="0", Content_Type="text/plain"),
    )
    assert response.status_code == 415


def test_termination_and_finished_recordings_are_kept(box, camera):
    location = camera.create(2 * MIB).headers["Location"]
    camera.patch(location, 0, b"z" * MIB)
    response = camera.session.delete(box.url + location, headers=camera.headers())
    assert response.status_code == 204
    assert camera.head(location).status_code == 410
    assert list(box.uploads.partial_dir.iterdir()) == []
    _, done = upload_all(camera, b"evidence" * 1000)
    response = camera.session.delete(box.url + done, headers=camera.headers())
    assert response.status_code == 403
    assert len(rows(box, "SELECT * FROM recordings")) == 1


def test_expiration_discards_idle_uploads(box, camera):
    import datetime as dt

    location = camera.create(2 * MIB).headers["Location"]
    assert "GMT" in camera.head(location).headers["Upload-Expires"]
    camera.patch(location, 0, b"q" * MIB)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=box.config.ingest.expire_hours + 1)
    assert box.uploads.expire(later) == [location.rsplit("/", 1)[1]]
    assert camera.head(location).status_code == 410
    assert list(box.uploads.partial_dir.iterdir()) == []
    events = [r["event"] for r in rows(box, "SELECT event FROM custody")]
    assert "upload.expired" in events


# -- crashes -----------------------------------------------------------------------------------


def _send_partial(
    url: str, cert: Path, token: str, location: str, offset: int, total: int, send: int, on_sent
) -> None:
    """Send a PATCH announcing `total` bytes but only `send` of them, then call on_sent()."""
    host, port = url.split("//")[1].split(":")
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
    conn.putrequest("PATCH", location)
    for name, value in {
        "Tus-Resumable": "1.0.0",
        "Authorization": f"Bearer {token}",
        "Upload-Offset": str(offset),
        "Content-Length": str(total),
        "Content-Type": "application/offset+octet-stream",
    }.items():
        conn.putheader(name, value)
    conn.endheaders()
    return conn


def test_kill9_mid_upload_then_resume(box_process, tmp_path):
    import json

    from edgebox.ingest.pairing import Pairing  # noqa: F401 - pairing via the CLI below
    from tests.conftest import run_cli

    code = json.loads(run_cli("cameras", "pair", "--json", config=box_process.config).stdout)[
        "code"
    ]
    camera = enroll(box_process.url, box_process.cert, code)
    data = os.urandom(12 * MIB + 777)
    location = camera.create(len(data), {"sha256": hashlib.sha256(data).hexdigest()}).headers[
        "Location"
    ]
    conn = _send_partial(
        box_process.url, box_process.cert, camera.token, location, 0, len(data), 0, None
    )
    sent = 7 * MIB + 1234
    conn.send(data[:sent])
    # Wait until the box has sealed at least the first segments, then kill it mid-body.
    partial = (
        box_process.config.parent / "data" / "uploads" / f"{location.rsplit('/', 1)[1]}.partial"
    )
    import time

    deadline = time.monotonic() + 20
    while partial.stat().st_size < 4096 + 6 * (MIB + 16) and time.monotonic() < deadline:
        time.sleep(0.05)
    box_process.kill9()
    conn.close()
    box_process.start()
    head = camera.head(location)
    assert head.status_code == 200
    offset = int(head.headers["Upload-Offset"])
    assert offset % MIB == 0 and 0 < offset <= sent
    while offset < len(data):
        response = camera.patch(location, offset, data[offset : offset + 3 * MIB])
        assert response.status_code == 204, response.text
        offset = int(response.headers["Upload-Offset"])
    assert response.headers["EdgeBox-Evidence-Sha256"] == hashlib.sha256(data).hexdigest()
    result = run_cli("verify", config=box_process.config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_plaintext_never_reaches_the_disk(box_process):
    import json
    import time

    from tests.conftest import run_cli

    marker = b"EDGEBOX-PLAINTEXT-MARKER-0123456789-"
    data = (marker * (6 * MIB // len(marker) + 1))[: 6 * MIB]
    code = json.loads(run_cli("cameras", "pair", "--json", config=box_process.config).stdout)[
        "code"
    ]
    camera = enroll(box_process.url, box_process.cert, code)
    upload_all(camera, data, chunk=2 * MIB + 11)
    # An interrupted upload: the body stops half way and the connection drops.
    location = camera.create(len(data)).headers["Location"]
    conn = _send_partial(
        box_process.url, box_process.cert, camera.token, location, 0, len(data), 0, None
    )
    conn.send(data[: 3 * MIB + 99])
    time.sleep(0.5)
    conn.close()
    time.sleep(0.5)
    box_process.stop()
    scanned = 0
    for path in (box_process.config.parent).rglob("*"):
        if path.is_file():
            scanned += 1
            assert marker not in path.read_bytes(), f"plaintext found in {path}"
    assert scanned > 5


def test_corrected_chunk_after_checksum_failure_is_accepted(box, camera):
    """A chunk that fails its checksum never reaches the disk, so the right bytes may follow."""
    data = os.urandom(3 * MIB)
    location = camera.create(len(data)).headers["Location"]
    corrupted = bytearray(data[: 2 * MIB])
    corrupted[MIB + 5] ^= 0xFF
    claimed = base64.b64encode(hashlib.sha256(data[: 2 * MIB]).digest()).decode()
    response = camera.patch(location, 0, bytes(corrupted), Upload_Checksum=f"sha256 {claimed}")
    assert response.status_code == 460
    response = camera.patch(location, 0, data[: 2 * MIB], Upload_Checksum=f"sha256 {claimed}")
    assert response.status_code == 204
    response = camera.patch(location, 2 * MIB, data[2 * MIB :])
    assert response.headers["EdgeBox-Evidence-Sha256"] == hashlib.sha256(data).hexdigest()


def test_a_corrupted_8_mib_checksummed_chunk_never_blocks_the_right_one(box, camera):
    """8 MiB of plaintext (eight segments and their tags) stay in memory until the checksum
    is checked; a chunk over that limit is refused up front and changes nothing."""
    data = os.urandom(9 * MIB)
    location = camera.create(len(data)).headers["Location"]
    too_big = base64.b64encode(hashlib.sha256(data).digest()).decode()
    refused = camera.patch(location, 0, data, Upload_Checksum=f"sha256 {too_big}")
    assert refused.status_code == 413 and "at most" in refused.json()["message"]
    assert camera.head(location).headers["Upload-Offset"] == "0"
    past_end = camera.patch(location, 0, data + b"x" * MIB)  # the refusal arrives too
    assert past_end.status_code == 413 and "past Upload-Length" in past_end.json()["message"]
    assert camera.head(location).headers["Upload-Offset"] == "0"
    corrupted = bytearray(data[: 8 * MIB])
    corrupted[7 * MIB + 9] ^= 0x01
    claimed = base64.b64encode(hashlib.sha256(data[: 8 * MIB]).digest()).decode()
    response = camera.patch(location, 0, bytes(corrupted), Upload_Checksum=f"sha256 {claimed}")
    assert response.status_code == 460
    assert box.uploads.partial_path(location.rsplit("/", 1)[1]).stat().st_size == 4096
    response = camera.patch(location, 0, data[: 8 * MIB], Upload_Checksum=f"sha256 {claimed}")
    assert response.status_code == 204
    response = camera.patch(location, 8 * MIB, data[8 * MIB :])
    assert response.headers["EdgeBox-Evidence-Sha256"] == hashlib.sha256(data).hexdigest()


def test_different_bytes_where_segments_were_stored_are_refused(box):
    """Without a checksum, sealed segments are written at once; a rolled-back offset then only
    takes the same bytes again, never others (one nonce must not protect two plaintexts)."""
    from edgebox.vault import Writer, new_header

    key = os.urandom(32)
    header = new_header(
        recording_id="r", device_id="d", plaintext_size=4 * MIB, data_key=key, stanzas=[]
    )
    writer = Writer.create(box.uploads.partial_dir / "nonce-test.partial", header, key)
    mark = writer.mark()
    first = os.urandom(2 * MIB)
    writer.write(first)
    writer.rollback(mark)
    mark = writer.mark()
    from edgebox.errors import VaultError

    with pytest.raises(VaultError, match="already stored with different bytes"):
        writer.write(os.urandom(2 * MIB))
    writer.rollback(mark)
    writer.write(first)
    assert writer.durable_offset == 2 * MIB
    writer.close()


def test_chunked_patch_bodies(box, camera):
    data = os.urandom(2 * MIB + 3)
    location = camera.create(len(data)).headers["Location"]

    def pieces(raw: bytes, size: int = 300_000):
        for start in range(0, len(raw), size):
            yield raw[start : start + size]

    response = camera.session.patch(
        box.url + location,
        data=pieces(data[:MIB]),
        headers=camera.headers(Upload_Offset="0", Content_Type="application/offset+octet-stream"),
    )
    assert response.status_code == 204 and response.headers["Upload-Offset"] == str(MIB)
    too_much = camera.session.patch(
        box.url + location,
        data=pieces(data[MIB:] + b"extra"),
        headers=camera.headers(
            Upload_Offset=str(MIB), Content_Type="application/offset+octet-stream"
        ),
    )
    assert too_much.status_code == 413
    assert camera.head(location).headers["Upload-Offset"] == str(MIB)
    response = camera.session.patch(
        box.url + location,
        data=pieces(data[MIB:]),
        headers=camera.headers(
            Upload_Offset=str(MIB), Content_Type="application/offset+octet-stream"
        ),
    )
    assert response.headers["EdgeBox-Evidence-Sha256"] == hashlib.sha256(data).hexdigest()


def test_a_camera_that_vanishes_mid_body_resumes_from_what_was_kept(box, camera):
    """The connection drops halfway through a PATCH body: the box keeps every byte that
    arrived, HEAD says where to go on, and the resumed upload has the right evidence hash."""
    data = os.urandom(5 * MIB + 777)
    location = camera.create(len(data)).headers["Location"]
    context = ssl.create_default_context(cafile=str(box.keys.tls_cert))
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # no unread session tickets: a clean FIN
    host, port = box.url.removeprefix("https://").split(":")
    with context.wrap_socket(
        socket.create_connection((host, int(port))), server_hostname=host
    ) as tls:
        head = (
            f"PATCH {location} HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\n"
            f"Authorization: Bearer {camera.token}\r\nUpload-Offset: 0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        tls.sendall(head.encode() + data[: 3 * MIB + 12345])
    offset = None
    for _ in range(100):  # the box notices the cut when its read fails
        offset = int(camera.head(location).headers["Upload-Offset"])
        if offset:
            break
        threading.Event().wait(0.1)
    assert offset == 3 * MIB + 12345, offset
    response = camera.patch(location, offset, data[offset:])
    assert response.status_code == 204, response.text
    assert response.headers["EdgeBox-Evidence-Sha256"] == hashlib.sha256(data).hexdigest()
