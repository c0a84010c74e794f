"""tus edges found by review: races with termination, a HEAD during a stalled PATCH, expiry
before the cleanup job, method override, and header values that used to give 500."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import sqlite3
import ssl
from urllib.parse import urlsplit

import pytest

from tests.test_ingest import upload_all

MIB = 1 << 20


def stale_rows(box, monkeypatch, upload_id: str) -> dict:
    """Make Uploads._row answer with the row as it is now, whatever happens next: the state a
    request sees when another request commits between its read and its write (the race is
    forced this way; its real window is microseconds)."""
    stale = box.store.one("SELECT * FROM uploads WHERE id = ?", (upload_id,))
    monkeypatch.setattr(type(box.uploads), "_row", lambda self, uid, device: dict(stale))
    return stale


def upload_id(location: str) -> str:
    return location.rsplit("/", 1)[1]


def test_a_delete_that_loses_the_race_to_the_last_patch_leaves_the_evidence(
    box, camera, monkeypatch
):
    data = b"evidence"
    created = camera.create(len(data))
    location = created.headers["Location"]
    stale_rows(box, monkeypatch, upload_id(location))
    assert camera.patch(location, 0, data).status_code == 204  # finished
    deleted = camera.session.delete(camera.url + location, headers=camera.headers())
    assert deleted.status_code == 403, deleted.text
    monkeypatch.undo()
    row = box.store.one("SELECT state FROM uploads WHERE id = ?", (upload_id(location),))
    assert row["state"] == "finished"
    events = [r["event"] for r in box.store.query("SELECT event FROM custody ORDER BY seq")]
    assert "upload.terminated" not in events
    assert camera.head(location).status_code == 200


def test_a_patch_that_loses_the_race_to_a_delete_gets_410(box, camera, monkeypatch):
    created = camera.create(2 * MIB)
    location = created.headers["Location"]
    assert camera.patch(location, 0, b"x" * MIB).status_code == 204
    with box.uploads._registry:  # as after a restart: no writer open in memory
        box.uploads._active.pop(upload_id(location)).writer.close()
    stale_rows(box, monkeypatch, upload_id(location))
    assert camera.session.delete(camera.url + location, headers=camera.headers()).status_code == 204
    late = camera.patch(location, MIB, b"y" * MIB)
    assert late.status_code == 410, late.text
    assert late.headers["Tus-Resumable"] == "1.0.0"


def _stalled_patch(camera, location: str, offset: int, length: int, sent: bytes):
    """A PATCH that announced `length` bytes, sent `sent`, and stalls (socket left open)."""
    url = urlsplit(camera.url)
    context = ssl.create_default_context(cafile=str(camera.cert))
    context.check_hostname = False
    tls = context.wrap_socket(socket.create_connection((url.hostname, url.port), timeout=30))
    head = [
        f"PATCH {location} HTTP/1.1",
        f"Host: {url.hostname}:{url.port}",
        *(f"{k}: {v}" for k, v in camera.headers().items()),
        f"Upload-Offset: {offset}",
        "Content-Type: application/offset+octet-stream",
        f"Content-Length: {length}",
    ]
    tls.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + sent)
    return tls


def test_head_answers_at_once_while_a_patch_stalls(box, camera):
    created = camera.create(4 * MIB)
    location = created.headers["Location"]
    assert camera.patch(location, 0, b"a" * MIB).status_code == 204
    stalled = _stalled_patch(camera, location, MIB, 2 * MIB, b"b" * (MIB + 100))
    try:
        active = box.uploads._active[upload_id(location)]
        for _ in range(200):  # until the stalled request holds the writer
            if active.lock.locked():
                break
            stalled.settimeout(0.05)
            try:
                stalled.recv(1)
            except TimeoutError:
                pass
        assert active.lock.locked()
        head = camera.session.head(camera.url + location, headers=camera.headers(), timeout=10)
        assert head.status_code == 200
        assert head.headers["Upload-Offset"] == str(MIB)  # the last acknowledged offset
        busy = camera.patch(location, MIB, b"c" * MIB)
        assert busy.status_code == 409
    finally:
        stalled.close()


def test_an_upload_past_its_expiry_is_gone_before_the_cleanup_job(box, camera):
    created = camera.create(2 * MIB)
    location = created.headers["Location"]
    assert camera.patch(location, 0, b"x" * MIB).status_code == 204
    conn = sqlite3.connect(box.store.path)
    conn.execute(
        "UPDATE uploads SET expires_at = '2020-01-01T00:00:00.000000Z' WHERE id = ?",
        (upload_id(location),),
    )
    conn.commit()
    conn.close()
    assert camera.head(location).status_code == 410
    late = camera.patch(location, MIB, b"y" * MIB)
    assert late.status_code == 410 and "expired" in late.json()["message"]
    row = box.store.one("SELECT expires_at FROM uploads WHERE id = ?", (upload_id(location),))
    assert row["expires_at"].startswith("2020-")  # the PATCH did not bring it back
    assert box.uploads.expire() == [upload_id(location)]


def test_x_http_method_override_is_the_method(box, camera):
    data = b"override"
    location = camera.create(len(data)).headers["Location"]
    url = camera.url + location
    head = camera.session.get(url, headers=camera.headers(X_HTTP_Method_Override="HEAD"))
    assert head.status_code == 200 and head.headers["Upload-Offset"] == "0"
    patched = camera.session.post(
        url,
        data=data,
        headers=camera.headers(
            X_HTTP_Method_Override="PATCH",
            Upload_Offset="0",
            Content_Type="application/offset+octet-stream",
        ),
    )
    assert patched.status_code == 204, patched.text
    other = camera.create(10).headers["Location"]
    gone = camera.session.post(
        camera.url + other, headers=camera.headers(X_HTTP_Method_Override="DELETE")
    )
    assert gone.status_code == 204
    assert camera.head(other).status_code == 410


@pytest.mark.parametrize("value", ["²", "¹²", "1²"])  # sent as latin-1 bytes (0xB2, 0xB9)
def test_non_ascii_digits_are_a_clear_400(box, camera, value):
    before = box.store.one("SELECT COUNT(*) AS n FROM uploads")["n"]
    created = camera.session.post(
        f"{box.url}/tus/",
        headers={**camera.headers(), "Upload-Length": value},
    )
    assert created.status_code == 400
    assert created.json()["field"] == "Upload-Length"
    assert box.store.one("SELECT COUNT(*) AS n FROM uploads")["n"] == before
    location = camera.create(4).headers["Location"]
    patched = camera.session.patch(
        camera.url + location,
        data=b"abcd",
        headers={
            **camera.headers(Content_Type="application/offset+octet-stream"),
            "Upload-Offset": value,
        },
    )
    assert patched.status_code == 400 and patched.json()["field"] == "Upload-Offset"


@pytest.mark.parametrize(
    "stamp", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00", "0999-01-01T00:00:00Z"]
)
def test_times_outside_the_usable_years_are_a_clear_400(box, camera, stamp):
    created = camera.create(10, {"started_at": stamp})
    assert created.status_code == 400, created.text
    assert created.json()["field"] == "started_at"


def test_a_malformed_checksum_header_is_400_not_460(box, camera):
    location = camera.create(4).headers["Location"]
    short = base64.b64encode(hashlib.md5(b"abcd").digest()).decode()  # noqa: S324 - 16 bytes
    for header in ("sha256", "sha256 ", f"sha256 {short}"):
        answer = camera.patch(location, 0, b"abcd", Upload_Checksum=header)
        assert answer.status_code == 400, (header, answer.text)
        assert answer.json()["field"] == "Upload-Checksum"
    assert camera.head(location).headers["Upload-Offset"] == "0"


def test_metadata_keys_may_hold_any_character_but_space_and_comma(box, camera):
    response, _ = upload_all(camera, b"1234", metadata={"x:y": "1", "a@b": "2"})
    rec = box.store.one(
        "SELECT metadata FROM recordings WHERE id = ?", (response.headers["EdgeBox-Recording-Id"],)
    )
    assert '"x:y"' in rec["metadata"] and '"a@b"' in rec["metadata"]


def test_responses_flask_makes_itself_carry_tus_resumable(box, camera):
    location = camera.create(4).headers["Location"]
    refused = camera.session.get(camera.url + location, headers=camera.headers())
    assert refused.status_code == 405
    assert refused.headers["Tus-Resumable"] == "1.0.0"


def test_bytes_already_written_are_not_reserved_twice_at_creation(box, camera):
    """The space check keeps room for what unfinished uploads still need: their declared size
    less what their files already hold (which the disk's free space already lacks)."""
    import dataclasses
    import shutil

    first = camera.create(64 * MIB).headers["Location"]
    for offset in range(0, 56 * MIB, 8 * MIB):
        assert camera.patch(first, offset, os.urandom(8 * MIB)).status_code == 204
    free = shutil.disk_usage(box.uploads.settings.data_dir).free
    box.uploads.settings = dataclasses.replace(
        box.uploads.settings, reserve_free_bytes=free - 40 * MIB
    )  # 40 MiB usable: 8 MiB still due on the first upload (not 64), 8 MiB for the second
    second = camera.create(8 * MIB)
    assert second.status_code == 201, second.text
    # 8 + 8 + 400 > 40: refused, nothing created. Far over, not just over: the disk is the
    # machine's own, and other processes' files come and go while the test runs (a soak that
    # freed 12 MiB meanwhile once had a 36 MiB upload taken).
    refused = camera.create(400 * MIB)
    assert refused.status_code == 507
    assert box.store.one("SELECT COUNT(*) AS n FROM uploads")["n"] == 2


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _raw_request(camera, lines: list[str], body: bytes = b"") -> int:
    """Send a request with exactly these header lines over TLS; the answer's status."""
    url = urlsplit(camera.url)
    context = ssl.create_default_context(cafile=str(camera.cert))
    context.check_hostname = False
    with socket.create_connection((url.hostname, url.port), timeout=30) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            answer = b""
            while b"\r\n" not in answer and (chunk := tls.recv(4096)):
                answer += chunk
    return int(answer.split()[1])


@pytest.mark.parametrize(
    "first, second",
    [
        ("Upload-Offset: 0", "Upload-Offset: 4"),
        ("Content-Length: 2", "Content-Length: 4"),
        (  # a wrong checksum, then the right one: neither may be picked silently
            f"Upload-Checksum: sha256 {_b64_sha256(b'wxyz')}",
            f"Upload-Checksum: sha256 {_b64_sha256(b'abcd')}",
        ),
    ],
)
def test_a_single_value_header_given_twice_is_refused(box, camera, first, second):
    location = camera.create(4).headers["Location"]
    url = urlsplit(camera.url)
    lines = [
        f"PATCH {location} HTTP/1.1",
        f"Host: {url.hostname}:{url.port}",
        *(f"{k}: {v}" for k, v in camera.headers().items()),
        "Content-Type: application/offset+octet-stream",
        "Connection: close",
        first,
        second,
    ]
    for default in ("Upload-Offset: 0", "Content-Length: 4"):
        if not any(line.split(":")[0] == default.split(":")[0] for line in (first, second)):
            lines.append(default)
    assert _raw_request(camera, lines, b"abcd") == 400
    assert camera.head(location).headers["Upload-Offset"] == "0"


def test_start_sweeps_upload_files_no_receiving_upload_owns(box_config):
    """A creation that crashed before its row, and a resume key left by a crash between a
    recording's commit and its deletion, are removed at start; a live upload's files stay."""
    from edgebox.box import Box
    from edgebox.config import load_config
    from tests.conftest import enroll

    box = Box(load_config(box_config)).start(("127.0.0.1", 0))
    try:
        camera = enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"])
        done, _ = upload_all(camera, b"finished clip")
        live = camera.create(2 * MIB).headers["Location"]
        assert camera.patch(live, 0, b"x" * MIB).status_code == 204
        finished_id = box.store.one(
            "SELECT upload_id FROM recordings WHERE id = ?",
            (done.headers["EdgeBox-Recording-Id"],),
        )["upload_id"]
        uploads = box.uploads.partial_dir
    finally:
        box.stop()
    stray = [uploads / "ghost.partial", uploads / "ghost.resume", uploads / f"{finished_id}.resume"]
    for path in stray:
        path.write_bytes(b"left by a crash")
    kept = sorted(p.name for p in uploads.iterdir() if p.stem == upload_id(live))
    assert len(kept) == 2
    box = Box(load_config(box_config)).start(("127.0.0.1", 0))
    try:
        assert not any(path.exists() for path in stray)
        assert sorted(p.name for p in uploads.iterdir()) == kept
        camera.url = box.url
        assert camera.head(live).headers["Upload-Offset"] == str(MIB)
    finally:
        box.stop()
