"""The simulated camera against a real HTTPS tus server: pinning, pairing, resume, hashes."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgebox.camera import (
    AuthError,
    CameraSim,
    PinningError,
    decode_tus_metadata,
    encode_tus_metadata,
    rfc3339,
    run_camera,
)
from edgebox.keys import certificate_fingerprint, generate_tls_certificate

TOKEN = "token-of-the-test-camera"
CODE = "ABCDE23456"
SMALL = {"width": 160, "height": 90, "fps": 10}


# -- tus metadata -----------------------------------------------------------------------


def test_tus_metadata_encoding():
    header = encode_tus_metadata(
        {"filename": "a.mp4", "warned": True, "empty": "", "skipped": None, "gps": "50.1,4.2"}
    )
    assert header == "filename YS5tcDQ=,warned dHJ1ZQ==,empty,gps NTAuMSw0LjI="
    assert decode_tus_metadata(header) == {
        "filename": "a.mp4",
        "warned": "true",
        "empty": "",
        "gps": "50.1,4.2",
    }


def test_tus_metadata_is_utf8_and_rejects_bad_keys():
    header = encode_tus_metadata({"exemption": "groupe trop nombreux, émeute"})
    assert (
        header == "exemption " + base64.b64encode("groupe trop nombreux, émeute".encode()).decode()
    )
    for bad in ("with space", "a,b", "", "x" * 65):
        with pytest.raises(ValueError):
            encode_tus_metadata({bad: "v"})


def test_rfc3339_is_utc_with_z():
    brussels = dt.timezone(dt.timedelta(hours=1))
    assert rfc3339(dt.datetime(2026, 11, 28, 17, 0, tzinfo=brussels)) == ("2026-11-28T16:00:00Z")


# -- a real HTTPS box: enrollment and a small tus 1.0.0 server ---------------------------


def _self_signed(tmp_path):
    """A box-like self-signed certificate, made the way `edgebox init` makes the box's."""
    key_pem, cert_pem = generate_tls_certificate("test", ["localhost", "127.0.0.1"])
    cert_path, key_path = tmp_path / "box.pem", tmp_path / "box.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return cert_path, key_path, certificate_fingerprint(cert_pem)


class _BoxState:
    """What the test box received, and the faults it should inject."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, int]] = []  # method, path, client port
        self.uploads: dict[str, dict] = {}
        self.crash_once_at: int | None = None  # offset past which a PATCH "crashes" the box
        self.lose_to: int = 0  # offset the box falls back to after that crash
        self.fail_patches_after: int | None = None  # answer 500 to PATCHes past this offset
        self.wrong_evidence = False
        self.drop_final_answer = False  # finish the upload but never answer the last PATCH


class _BoxHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    box: _BoxState

    def log_message(self, *args):
        pass

    def _note(self):
        with self.box.lock:
            self.box.requests.append((self.command, self.path, self.client_address[1]))

    def _reply(self, status, headers=None, body=b""):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status, message):
        self._reply(
            status,
            {"Content-Type": "application/json"},
            json.dumps({"error": "IngestError", "message": message}).encode(),
        )

    def _body(self):
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _upload(self):
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._error(401, "unknown device token")
            return None
        if self.headers.get("Tus-Resumable") != "1.0.0":
            self._error(412, "Tus-Resumable 1.0.0 required")
            return None
        upload = self.box.uploads.get(self.path.rsplit("/", 1)[-1])
        if upload is None:
            self._error(404, "no such upload")
        return upload

    def _progress(self, upload):
        headers = {"Tus-Resumable": "1.0.0", "Upload-Offset": str(len(upload["data"]))}
        if len(upload["data"]) == upload["length"]:
            evidence = hashlib.sha256(upload["data"]).hexdigest()
            headers["EdgeBox-Recording-Id"] = "rec-" + upload["id"]
            headers["EdgeBox-Evidence-Sha256"] = "0" * 64 if self.box.wrong_evidence else evidence
        return headers

    def do_POST(self):
        self._note()
        body = self._body()
        if self.path == "/api/v1/cameras/enroll":
            request = json.loads(body)
            if request.get("code") != CODE:
                return self._error(403, "pairing code is unknown")
            return self._reply(
                201,
                {"Content-Type": "application/json"},
                json.dumps({"device_id": "dev-1", "token": TOKEN}).encode(),
            )
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._error(401, "unknown device token")
        with self.box.lock:
            upload_id = f"u{len(self.box.uploads) + 1}"
            self.box.uploads[upload_id] = {
                "id": upload_id,
                "length": int(self.headers["Upload-Length"]),
                "data": bytearray(),
                "metadata": decode_tus_metadata(self.headers.get("Upload-Metadata", "")),
            }
        return self._reply(201, {"Tus-Resumable": "1.0.0", "Location": f"/tus/{upload_id}"})

    def do_HEAD(self):
        self._note()
        upload = self._upload()
        if upload is not None:
            self._reply(200, {**self._progress(upload), "Upload-Length": str(upload["length"])})

    def do_PATCH(self):
        self._note()
        chunk = self._body()
        upload = self._upload()
        if upload is None:
            return None
        offset = int(self.headers["Upload-Offset"])
        if offset != len(upload["data"]):
            return self._error(409, f"offset {offset} != {len(upload['data'])}")
        algorithm, _, digest = self.headers.get("Upload-Checksum", "").partition(" ")
        if algorithm != "sha256" or base64.b64decode(digest) != hashlib.sha256(chunk).digest():
            return self._error(460, "checksum mismatch")
        box = self.box
        if box.fail_patches_after is not None and offset >= box.fail_patches_after:
            return self._error(500, "storage hiccup")
        upload["data"] += chunk
        if box.crash_once_at is not None and len(upload["data"]) > box.crash_once_at:
            box.crash_once_at = None
            del upload["data"][box.lose_to :]  # the partial segment is lost in the crash
            self.close_connection = True  # and the client never sees an answer
            return None
        if box.drop_final_answer and len(upload["data"]) == upload["length"]:
            box.drop_final_answer = False
            self.close_connection = True
            return None
        return self._reply(204, self._progress(upload))


@pytest.fixture
def tus_box(tmp_path):
    cert_path, key_path, fingerprint = _self_signed(tmp_path)
    state = _BoxState()
    handler = type("Handler", (_BoxHandler,), {"box": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"https://127.0.0.1:{server.server_address[1]}"
    state.fingerprint = fingerprint
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def sim_camera(tmp_path, tus_box):
    with CameraSim(
        tmp_path / "cam", serial="BWC-7", backoff=0.01, max_backoff=0.05, **SMALL
    ) as cam:
        cam.pair(tus_box.url, CODE, tus_box.fingerprint)
        yield cam


def test_pairing_refuses_a_wrong_certificate_without_sending_the_code(tmp_path, tus_box):
    cam = CameraSim(tmp_path / "cam", serial="BWC-7")
    wrong = hashlib.sha256(b"another box").hexdigest()
    with pytest.raises(PinningError, match="refusing to pair"):
        cam.pair(tus_box.url, CODE, wrong)
    assert tus_box.requests == [], "not a single HTTP request may reach an unpinned box"
    assert not cam.paired
    state = json.loads((tmp_path / "cam" / "camera.json").read_text())
    assert state["token"] is None and state["cert_pem"] is None
    assert CODE not in (tmp_path / "cam" / "camera.json").read_text()


def test_pairing_with_the_right_certificate_stores_token_privately(tmp_path, tus_box):
    cam = CameraSim(tmp_path / "cam", serial="BWC-7")
    assert cam.pair(tus_box.url, CODE, tus_box.fingerprint.upper()) == "dev-1"
    assert [r[:2] for r in tus_box.requests] == [("POST", "/api/v1/cameras/enroll")]
    state_file = tmp_path / "cam" / "camera.json"
    assert state_file.stat().st_mode & 0o777 == 0o600
    state = json.loads(state_file.read_text())
    assert state["token"] == TOKEN and state["cert_sha256"] == tus_box.fingerprint
    assert CameraSim(tmp_path / "cam").paired, "a restarted camera stays paired"


def test_upload_delivers_over_one_connection_and_deletes_local_copy(sim_camera, tus_box):
    path = sim_camera.record(
        2, pre_event_seconds=1, user_id="u-42", category="traffic", exemption="large group"
    )
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    [result] = sim_camera.upload_pending(chunk_size=8 << 10)
    assert result.status == "delivered", result.message
    assert result.evidence_sha256 == expected and result.recording_id == "rec-u1"
    assert not path.exists() and sim_camera.pending == []
    upload = tus_box.uploads["u1"]
    assert hashlib.sha256(upload["data"]).hexdigest() == expected
    meta = upload["metadata"]
    assert meta["sha256"] == expected and meta["serial"] == "BWC-7"
    assert meta["user_id"] == "u-42" and meta["category"] == "traffic"
    assert meta["exemption"] == "large group" and "warned" not in meta
    assert meta["pre_event_seconds"] == "1" and meta["filename"] == path.name
    tus_ports = {port for _, where, port in tus_box.requests if where.startswith("/tus/")}
    assert len(tus_ports) == 1, "every chunk reuses one connection"
    assert sum(method == "PATCH" for method, _, _ in tus_box.requests) > 2


def test_metadata_passes_the_box_parser(sim_camera):
    from edgebox.ingest.metadata import parse_recording_metadata

    sim_camera.record(1, pre_event_seconds=0.5)
    entry = sim_camera.pending[0]
    columns, _ = parse_recording_metadata(encode_tus_metadata(entry["metadata"]), "BWC-7")
    assert columns["camera_sha256"] == entry["sha256"]
    assert columns["warned"] == 1 and columns["exemption"] is None
    assert columns["pre_event_seconds"] == 0.5


def test_upload_resumes_from_a_lower_offset_after_the_box_crashed(sim_camera, tus_box):
    path = sim_camera.record(2, pre_event_seconds=1)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    tus_box.crash_once_at, tus_box.lose_to = 20 << 10, 10 << 10  # crash in chunk 3, keep 10 KiB
    [result] = sim_camera.upload_pending(chunk_size=8 << 10)
    assert result.status == "delivered", result.message
    assert hashlib.sha256(tus_box.uploads["u1"]["data"]).hexdigest() == expected
    methods = [method for method, _, _ in tus_box.requests]
    assert methods.count("POST") == 2  # enroll + one upload: resumed, not restarted
    assert "HEAD" in methods


def test_lost_final_answer_is_recovered_by_head_without_a_second_upload(sim_camera, tus_box):
    path = sim_camera.record(1, pre_event_seconds=0)
    tus_box.drop_final_answer = True
    [result] = sim_camera.upload_pending(chunk_size=8 << 10)
    assert result.status == "delivered", result.message
    assert result.recording_id == "rec-u1" and len(tus_box.uploads) == 1
    assert tus_box.requests[-1][0] == "HEAD" and not path.exists()


def test_restarted_camera_resumes_its_upload(tmp_path, sim_camera, tus_box):
    path = sim_camera.record(2, pre_event_seconds=1)
    tus_box.fail_patches_after = 8 << 10
    sim_camera.max_attempts = 2
    [result] = sim_camera.upload_pending(chunk_size=8 << 10)
    assert result.status == "deferred" and path.exists()
    sim_camera.close()
    tus_box.fail_patches_after = None

    with CameraSim(tmp_path / "cam", backoff=0.01) as restarted:
        assert restarted.pending[0]["upload_url"].endswith("/tus/u1")
        [result] = restarted.upload_pending(chunk_size=8 << 10)
    assert result.status == "delivered", result.message
    assert len(tus_box.uploads) == 1, "the restarted camera continued the same upload"
    assert not path.exists()


def test_evidence_hash_mismatch_keeps_the_local_copy(sim_camera, tus_box):
    path = sim_camera.record(1, pre_event_seconds=0)
    tus_box.wrong_evidence = True
    [result] = sim_camera.upload_pending()
    assert result.status == "mismatch"
    assert path.exists() and sim_camera.pending[0]["status"] == "mismatch"
    assert sim_camera.upload_pending() == [], "a mismatched clip is not re-sent blindly"


def test_refused_token_raises_and_keeps_the_clip(sim_camera, tus_box, tmp_path):
    path = sim_camera.record(1, pre_event_seconds=0)
    state_file = tmp_path / "cam" / "camera.json"
    state = json.loads(state_file.read_text())
    state["token"] = "revoked"
    state_file.write_text(json.dumps(state))
    with CameraSim(tmp_path / "cam") as restarted, pytest.raises(AuthError, match="pair"):
        restarted.upload_pending()
    assert path.exists()


def test_cameras_in_threads_each_deliver(tmp_path, tus_box):
    results, errors = {}, []

    def one(index):
        try:
            results[index] = run_camera(
                tmp_path / f"cam{index}",
                box_url=tus_box.url,
                code=CODE,
                cert_sha256=tus_box.fingerprint,
                clips=1,
                seconds=1,
                pre_event=30,
                chunk_size=16 << 10,
                log=lambda line: None,
            )
        except Exception as exc:  # reported below, in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert all([r.status for r in results[i]] == ["delivered"] for i in range(3))
    serials = {upload["metadata"]["serial"] for upload in tus_box.uploads.values()}
    assert len(serials) == 3


def _age(path, seconds: float = 120) -> None:
    """Make a file look as old as one a crash left behind."""
    import os
    import time

    old = time.time() - seconds
    os.utime(path, (old, old))


def test_a_clip_recorded_but_never_queued_is_queued_and_delivered(sim_camera, tus_box):
    """The camera died between recording a clip into its outbox and queueing it."""
    name = "BWC-7_20261129T101500Z_00042.mp4"
    clip = sim_camera.outbox / name
    clip.write_bytes(b"footage recorded before the crash" * 100)
    _age(clip)
    expected = hashlib.sha256(clip.read_bytes()).hexdigest()
    [result] = sim_camera.upload_pending(chunk_size=8 << 10)
    assert result.status == "delivered" and result.evidence_sha256 == expected
    meta = next(iter(tus_box.uploads.values()))["metadata"]
    assert meta["filename"] == name and meta["recovered"] == "true"
    assert meta["started_at"] == "2026-11-29T10:15:00Z" and meta["sha256"] == expected
    assert not clip.exists()


def test_leftovers_of_a_crash_are_tidied_kept_or_delivered(sim_camera, tus_box):
    """A confirmed clip's copy goes; a half-written clip is footage, so it is delivered
    (marked incomplete) before it goes; a fresh file is left to its recording thread."""
    delivered = sim_camera.outbox / "BWC-7_20261129T101500Z_00001.mp4"
    delivered.write_bytes(b"already confirmed by the box")
    sim_camera._state.drop({"file": delivered.name}, delivered={"recording_id": "r", "sha256": "x"})
    half = sim_camera.outbox / ".BWC-7_20261129T101600Z_00002.mp4.part"
    half.write_bytes(b"an encoder killed mid-clip")
    _age(half)
    fresh = sim_camera.outbox / "BWC-7_20261129T101700Z_00003.mp4"
    fresh.write_bytes(b"being queued right now by the recording thread")
    [result] = sim_camera.upload_pending(chunk_size=8 << 10)
    assert result.status == "delivered"
    assert result.path.endswith("BWC-7_20261129T101600Z_00002.mp4")
    [upload] = tus_box.uploads.values()
    assert upload["data"] == b"an encoder killed mid-clip"
    assert upload["metadata"]["incomplete"] == "true"
    assert not delivered.exists() and not half.exists()
    assert fresh.exists()


def test_two_processes_on_one_state_folder_deliver_each_clip_once(tmp_path, tus_box):
    """Two CameraSim objects (separate state copies, as two processes would have) on one
    folder: the flock makes them take turns, and the second finds the clip delivered."""
    first = CameraSim(tmp_path / "cam", serial="BWC-7", backoff=0.01, **SMALL)
    first.pair(tus_box.url, CODE, tus_box.fingerprint)
    first.record(1, pre_event_seconds=1)
    second = CameraSim(tmp_path / "cam", backoff=0.01, **SMALL)
    outcomes, threads = [], []
    for cam in (first, second):
        thread = threading.Thread(target=lambda c=cam: outcomes.extend(c.upload_pending(8 << 10)))
        threads.append(thread)
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r.status for r in outcomes] == ["delivered"]
    assert len(tus_box.uploads) == 1
    first.close()
    second.close()
