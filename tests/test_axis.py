"""The Axis content destination over real HTTPS, driven by python-swiftclient playing the
system controller: registration, a recording of several real MP4 clips with bookmarks and a
GNSS track, Status: Complete, end-to-end encryption, and the spec's error codes."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import socket
import ssl
import time

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from swiftclient.exceptions import ClientException

from edgebox import catalog, vault
from edgebox.axis.groups import open_recordings
from edgebox.keys import x25519_private_from_file
from edgebox.recordings import data_key_for
from edgebox.scheduler import jobs_of
from edgebox.verify import verify_box
from tests.axis_controller import (
    CONTROLLER,
    SERIAL,
    SYSTEM_ID,
    USER_UUID,
    Clip,
    Controller,
    connect,
    decrypt,
    epoch,
    make_clips,
)
from tests.conftest import run_cli
from tests.test_full_disk import only_refusals_run_the_watermark_check, wait_for_watermark_check
from tests.test_web_auth import PASSWORD, login

START = dt.datetime(2026, 11, 28, 16, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Clip]:
    """Three real, small MP4 clips following each other (made once for the module)."""
    return make_clips(tmp_path_factory.mktemp("axis-clips"), 3, START)


@pytest.fixture
def account(box) -> dict:
    """An Axis account on the running box."""
    return box.axis.accounts.add("depot")


@pytest.fixture
def controller(box, account) -> Controller:
    """A registered controller (system object, one user, one camera)."""
    ctl = Controller(connect(box.url, account["username"], account["key"], box.keys.tls_cert))
    ctl.register()
    return ctl


def _central_key(box):
    """The demo central private key `edgebox init --demo` leaves beside the box."""
    return x25519_private_from_file(box.config.data_dir.parent / "central-demo" / "central.key")


def _vault_plaintext(box, recording_id: str) -> bytes:
    """What central gets back from a vault file with its own key (a vault round trip)."""
    path = box.uploads.vault_path(recording_id)
    reader = vault.Reader(path, data_key_for(path, _central_key(box), role="central"))
    return b"".join(reader.segment(i) for i in range(reader.header.segments))


def _plaintext_on_disk(box, needles: list[bytes]) -> list[str]:
    """Files under the box's folder holding any of `needles` (there must be none)."""
    found = []
    for path in box.config.data_dir.parent.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [str(path) for needle in needles if needle in data]
    return found


def _needle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[middle : middle + 48]


def _counts(box) -> tuple:
    q = box.store.one
    return (
        q("SELECT COUNT(*) AS n FROM recordings")["n"],
        q("SELECT COUNT(*) AS n FROM axis_objects")["n"],
        q("SELECT COUNT(*) AS n FROM axis_containers")["n"],
        sorted(p.name for p in box.uploads.partial_dir.iterdir()),
    )


def test_auth_gives_a_token_and_refuses_bad_logins(box, account):
    conn = connect(box.url, account["username"], account["key"], box.keys.tls_cert)
    url, token = conn.get_auth()
    assert url == f"{box.url}/v1/AUTH_depot"
    assert conn.head_container("System")["x-container-object-count"] == "2"
    for user, key in (("depot", "wrong"), ("nobody", account["key"]), ("", "")):
        with pytest.raises(ClientException) as refused:
            connect(box.url, user, key, box.keys.tls_cert).get_auth()
        assert refused.value.http_status == 401
    events = [r["event"] for r in box.store.query("SELECT event FROM custody")]
    assert events.count("axis.login") == 1 and events.count("axis.login_failed") == 3

    box.users.add("admin-1", "admin", PASSWORD)
    session, _ = login(box, "admin-1")
    paths = session.get(f"{box.url}/api/openapi.json").json()["paths"]
    assert "get" in paths["/auth/v1.0"]
    assert {"put", "post", "get"} <= set(paths["/v1/AUTH_{account}/{container}/{name}"])

    box.axis.accounts.token_seconds = -1  # every token is now past its lifetime
    with pytest.raises(ClientException) as expired:
        conn.get_object("System", "Capabilities.json")
    assert (
        expired.value.http_status == 401
        and "expired" in expired.value.http_response_content.decode()
    )
    box.axis.accounts.token_seconds = 3600
    box.axis.accounts.disable("depot")
    with pytest.raises(ClientException) as disabled:
        conn.head_container("System")
    assert disabled.value.http_status == 401


def test_system_objects_capabilities_and_categories(box, controller):
    conn = controller.conn
    headers, body = conn.get_object("System", "Capabilities.json")
    assert headers["etag"] == hashlib.md5(body, usedforsecurity=False).hexdigest()
    capabilities = json.loads(body)
    declared = {name for group in capabilities.values() for name, on in group.items() if on}
    assert declared == {
        "StoreReadSystemID",
        "StoreBookmarks",
        "ReadCategories",
        "StoreGNSSTrackRecording",
        "StoreRejectedContent",
        "StoreUserIDKey",
        "StoreSignedVideo",
    }
    assert capabilities["StoreAndRead"] == {"StoreReadSystemID": True}
    headers, body = conn.get_object("System", "Categories.json")
    assert headers["etag"] == hashlib.md5(body, usedforsecurity=False).hexdigest()
    names = [c["Name"] for c in json.loads(body)]
    assert names == box.config.axis.categories.split(",")
    # StoreReadSystemID: the controller reads its system object back
    headers = conn.head_object("System", SYSTEM_ID)
    assert headers["x-object-meta-systemname"] == "Depot Nord"
    assert headers["etag"] == hashlib.md5(b"", usedforsecurity=False).hexdigest()
    camera = box.store.one("SELECT * FROM devices WHERE serial = ?", (SERIAL,))
    assert camera["source"] == "Axis BWS" and camera["model"] == "W110"
    status = json.loads(run_cli("axis", "status", "--json", config=_config(box)).stdout)
    assert status["systems"][0]["name"] == "Depot Nord"
    assert status["users"][0]["user_id"] == "BADGE-4711"


def _config(box):
    return box.config.data_dir.parent / "edgebox.toml"


def test_a_recording_of_clips_becomes_one_recording(box, controller, clips):
    trigger_on = clips[0].start + dt.timedelta(seconds=1.0)  # one second of pre-buffer
    trigger_off = clips[-1].stop
    sent = controller.recording(clips, trigger_on, trigger_off, bookmarks=2)

    listed = catalog.search(box.store, {})["items"]
    assert len(listed) == 1
    assert listed[0]["axis"]["complete"] and listed[0]["axis"]["clips"] == len(clips)
    rec = catalog.detail(box.store, listed[0]["id"])
    assert rec["axis"]["complete"] and rec["axis"]["container"] == sent.container
    assert rec["serial"] == SERIAL and rec["user_id"] == "BADGE-4711"
    assert rec["started_at"].startswith("2026-11-28T16:00:00")
    assert rec["stopped_at"].startswith(trigger_off.strftime("%Y-%m-%dT%H:%M:%S"))
    assert rec["pre_event_seconds"] == 1.0
    assert rec["trigger_on"] == "Button" and rec["trigger_off"] == "Button"
    assert rec["gps"] == "55.718409,13.221184"
    assert rec["category"] == "Incident"
    assert rec["axis"]["camera"]["controller_serial"] == CONTROLLER
    members = {m["object"]: m for m in rec["axis"]["members"]}
    assert {m["kind"] for m in members.values()} == {"clip", "bookmark", "gnss"}
    for name, data in sent.clips.items():
        assert members[name]["evidence_sha256"] == hashlib.sha256(data).hexdigest()
        assert _vault_plaintext(box, members[name]["recording_id"]) == data
    for name, data in sent.others.items():
        assert members[name]["evidence_sha256"] == hashlib.sha256(data).hexdigest()
    completed = [
        json.loads(r["details"])
        for r in box.store.query(
            "SELECT details FROM custody WHERE event = ?", ("axis.recording_completed",)
        )
    ]
    assert len(completed) == 1 and len(completed[0]["members"]) == len(members)
    assert json.loads(
        box.store.one("SELECT payload FROM outbox WHERE ref = 'axis.recording'")["payload"]
    )["members"]
    # a hold on the one recording people see holds every vault file of it
    catalog.set_hold(box.store, rec["id"], True, "court order", "user:supervisor")
    held = box.store.one(
        "SELECT COUNT(*) AS n FROM recordings WHERE axis_recording = ? AND legal_hold = 1",
        (sent.container,),
    )
    assert held["n"] == len(members)
    catalog.tag(box.store, rec["id"], {"incident": "INC-2026-77"}, "user:crew")
    tagged = box.store.query(
        "SELECT DISTINCT incident FROM recordings WHERE axis_recording = ?", (sent.container,)
    )
    assert tagged == [{"incident": "INC-2026-77"}]
    # closed: nothing more goes into it
    with pytest.raises(ClientException) as closed:
        controller.conn.put_object(sent.container, "20261128_160010_9.mp4", b"late")
    assert closed.value.http_status == 403
    assert verify_box(box).ok
    result = run_cli("verify", config=_config(box))
    assert result.returncode == 0, result.stdout + result.stderr
    needles = [_needle(d) for d in sent.clips.values()] + [sent.others[n] for n in sent.others]
    assert _plaintext_on_disk(box, needles) == []


def test_end_to_end_encrypted_recording_opens_at_central(box, account, clips, tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "central-rsa.pub").write_bytes(public_pem)
    made = run_cli(
        "axis",
        "connection-file",
        "--account",
        "depot-e2e",
        "--public-key",
        str(tmp_path / "central-rsa.pub"),
        "--public-key-id",
        "central-2026",
        "--uri",
        f"{box.url}/auth/v1.0",  # the box under test listens on a port of its own choosing
        "--json",
        config=_config(box),
    )
    assert made.returncode == 0, made.stderr
    connection = json.loads(made.stdout)
    assert connection["WantEncryption"] is True and connection["PublicKeyId"] == "central-2026"
    assert base64.b64decode(connection["PublicKey"]) == public_pem
    box_cert = x509.load_pem_x509_certificate(box.keys.tls_cert.read_bytes())
    der = box_cert.public_bytes(serialization.Encoding.DER)
    assert base64.b64decode(connection["HTTPSCertificate"][0]) == der
    assert connection["ContainerType"] == "mp4" and connection["SiteName"] == "Test Van"
    ctl = Controller(
        connect(
            connection["AuthenticationTokenURI"][0].removesuffix("/auth/v1.0"),
            connection["BlobAPIUserName"],
            connection["BlobAPIKey"],
            box.keys.tls_cert,
        )
    )
    ctl.register()
    public = serialization.load_pem_public_key(base64.b64decode(connection["PublicKey"]))
    sent = ctl.recording(clips[:2], clips[0].start, clips[1].stop, public_key=public)

    rec = catalog.detail(box.store, catalog.search(box.store, {})["items"][0]["id"])
    members = {m["object"]: m for m in rec["axis"]["members"]}
    assert {m["kind"] for m in members.values()} == {"clip", "key", "bookmark", "gnss"}
    for name, ciphertext in sent.clips.items():
        stored = _vault_plaintext(box, members[name]["recording_id"])
        assert stored == ciphertext  # kept exactly as the controller sent it
        key_name = name.rsplit(".", 1)[0] + ".key"
        key_object = _vault_plaintext(box, members[key_name]["recording_id"])
        assert key_object == sent.keys[key_name]
        plain = decrypt(stored, key_object, private)
        assert plain[4:8] == b"ftyp" and plain in {c.path.read_bytes() for c in clips[:2]}
    assert verify_box(box).ok
    plain_needles = [_needle(c.path.read_bytes()) for c in clips[:2]]
    assert _plaintext_on_disk(box, plain_needles) == []


def test_half_uploaded_recording_is_kept_and_shown_incomplete(box, controller, clips):
    sent = controller.recording(clips[:2], clips[0].start, clips[1].stop, complete=False)
    [listed] = catalog.search(box.store, {})["items"]
    assert listed["axis"] == {
        "status": "Transferring",
        "complete": False,
        "clips": 2,
        "size": sum(len(d) for d in [*sent.clips.values(), *sent.others.values()]),
    }
    rec = catalog.detail(box.store, listed["id"])
    assert rec["axis"]["status"] == "Transferring" and not rec["axis"]["complete"]
    assert len([m for m in rec["axis"]["members"] if m["kind"] == "clip"]) == 2
    [open_one] = open_recordings(box.store)
    assert open_one["name"] == sent.container and open_one["recording_id"] == listed["id"]
    box.users.add("super-1", "supervisor", PASSWORD)
    session, _ = login(box, "super-1")
    assert "incomplete" in session.get(f"{box.url}/recordings").text
    page = session.get(f"{box.url}/recordings/{listed['id']}").text
    assert "Axis BWS" in page and "incomplete" in page.lower()
    assert CONTROLLER in page
    cameras = session.get(f"{box.url}/cameras").text
    assert "Axis BWS" in cameras and CONTROLLER in cameras and "Depot Nord" in cameras
    assert sent.container in cameras  # listed under "still transferring"
    # a bookmark re-described before the end (Swift POST replaces an object's metadata)
    [bookmark] = [n for n in sent.others if n.startswith("bookmark_")]
    controller.conn.post_object(
        sent.container, bookmark, headers={"X-Object-Meta-Categoryname": "Traffic"}
    )
    assert (
        controller.conn.head_object(sent.container, bookmark)["x-object-meta-categoryname"]
        == "Traffic"
    )
    assert "x-object-meta-tags" not in controller.conn.head_object(sent.container, bookmark)
    # the rest arrives later and closes it
    controller.complete(sent.container, clips[1].stop)
    assert open_recordings(box.store) == []
    assert catalog.detail(box.store, listed["id"])["category"] == "Traffic"
    events = [r["event"] for r in box.store.query("SELECT event FROM custody")]
    assert "axis.object_metadata_changed" in events and "axis.recording_completed" in events


def _put(conn, container, name, data=b"x", **kw):
    with pytest.raises(ClientException) as refused:
        conn.put_object(container, name, data, **kw)
    return refused.value


def test_every_error_code_and_nothing_changes(box, controller, clips):
    conn = controller.conn
    good = f"{USER_UUID}_{SERIAL}_{epoch(START)}"
    conn.put_container(good, headers={"X-Container-Meta-Triggerontime": epoch(START)})
    before = _counts(box)
    data = clips[0].path.read_bytes()
    # 400: content the box will never accept
    for container, headers in (
        ("not-a-recording", {}),
        (f"ffffffff-0000_{SERIAL}_{epoch(START)}", {}),  # unknown user
        (f"{USER_UUID}_UNKNOWN-CAM_{epoch(START)}", {}),  # unknown camera
        (f"{USER_UUID}_{SERIAL}_1", {"X-Container-Meta-Triggerontime": "12"}),  # 1970
    ):
        with pytest.raises(ClientException) as refused:
            conn.put_container(container, headers=headers)
        assert refused.value.http_status == 400, container
    assert _put(conn, good, "empty.mp4", b"").http_status == 400  # a clip with no content
    with pytest.raises(ClientException) as no_clip:  # Complete before any clip
        conn.post_container(good, headers={"X-Container-Meta-Status": "Complete"})
    assert no_clip.value.http_status == 400
    assert box.axis.container(good)["status"] == "Transferring"
    assert _put(conn, good, "notes.txt").http_status == 400  # not an object the spec knows
    too_long = {"X-Object-Meta-Note": "x" * 300}  # past Swift's 256-character value
    assert _put(conn, good, "20261128_160000_9.mp4", headers=too_long).http_status == 400
    assert (
        _put(
            conn,
            good,
            "backwards.mp4",
            headers={
                "X-Object-Meta-Starttime": epoch(START),
                "X-Object-Meta-Stoptime": epoch(START),
            },
        ).http_status
        == 400
    )
    # 401: no token
    assert (
        requests.put(
            f"{box.url}/v1/AUTH_depot/{good}/a.mp4", data=b"x", verify=box.keys.tls_cert
        ).status_code
        == 401
    )
    # 403: another account's storage URL; the box's own objects; footage read back
    url, token = conn.get_auth()
    other = requests.put(
        f"{box.url}/v1/AUTH_other/{good}/a.mp4",
        data=b"x",
        headers={"X-Auth-Token": token},
        verify=box.keys.tls_cert,
    )
    assert other.status_code == 403
    assert _put(conn, "System", "Capabilities.json").http_status == 403
    conn.put_object(good, "20261128_160000_1.mp4", data)
    with pytest.raises(ClientException) as read_back:
        conn.get_object(good, "20261128_160000_1.mp4")
    assert read_back.value.http_status == 403
    assert _put(conn, good, "20261128_160000_1.mp4", b"other").http_status == 403  # never replaced
    camera = box.store.one("SELECT id FROM devices WHERE serial = ?", (SERIAL,))
    box.pairing.revoke(camera["id"])  # an operator revoked the camera on the box
    assert _put(conn, good, "20261128_160001_1.mp4", data).http_status == 403
    with box.store.write() as db:  # (undone directly, for the codes that follow)
        db.execute("UPDATE devices SET revoked_at = NULL WHERE id = ?", [camera["id"]])
    stored = _counts(box)
    # 404: unknown container or object
    assert _put(conn, "ffff_" + good, "a.mp4").http_status == 404
    missing = f"{USER_UUID}_{SERIAL}_{epoch(START + dt.timedelta(hours=1))}"
    assert _put(conn, missing, "a.mp4").http_status == 404
    with pytest.raises(ClientException) as gone:
        conn.head_object(good, "nothing.mp4")
    assert gone.value.http_status == 404
    with pytest.raises(ClientException) as gone:
        conn.post_container(missing, headers={"X-Container-Meta-Status": "Complete"})
    assert gone.value.http_status == 404
    # 411: a chunked body (the vault header needs the size first)
    chunked = requests.put(
        f"{url}/{good}/chunked.mp4",
        data=iter([b"abc", b"def"]),
        headers={"X-Auth-Token": token},
        verify=box.keys.tls_cert,
    )
    assert chunked.status_code == 411
    # 422: ETag mismatch; nothing of it is kept
    assert _put(conn, good, "20261128_160002_2.mp4", data, etag="0" * 32).http_status == 422
    # 503: busy, with Retry-After
    for _ in range(box.config.axis.max_parallel_uploads):
        box.axis._busy.acquire()
    busy = requests.put(
        f"{url}/{good}/20261128_160002_2.mp4",
        data=data,
        headers={"X-Auth-Token": token},
        verify=box.keys.tls_cert,
    )
    for _ in range(box.config.axis.max_parallel_uploads):
        box.axis._busy.release()
    assert busy.status_code == 503 and busy.headers["Retry-After"]
    # 507: the disk cannot keep its reserve; the watermark check is brought forward
    settings = box.uploads.settings
    with only_refusals_run_the_watermark_check(box) as runs:
        box.uploads.settings = dataclasses.replace(settings, reserve_free_bytes=1 << 60)
        full = _put(conn, good, "20261128_160002_2.mp4", data)
        assert full.http_status == 507 and full.http_response_headers["Retry-After"] == "30"
        wait_for_watermark_check(box, runs)
        box.uploads.settings = settings
    assert jobs_of(box).run_now("storage_watermarks")["alarm"] is False  # space again
    assert _counts(box)[:3] == stored[:3] and _counts(box)[3] == before[3] == []
    failed = box.store.query("SELECT state FROM uploads WHERE state != 'finished'")
    assert {r["state"] for r in failed} <= {"failed"}
    assert verify_box(box).ok


def _cut_short_put(url: str, cert, token: str, path: str, declared: int, sent: bytes) -> None:
    """A PUT that declares `declared` bytes, sends `sent`, and vanishes (a dropped link)."""
    host, port = url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with socket.create_connection((host, int(port))) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(
            f"PUT {path} HTTP/1.1\r\nHost: {host}\r\nX-Auth-Token: {token}\r\n"
            f"Content-Length: {declared}\r\n\r\n".encode()
            + sent
        )
        time.sleep(0.3)


def _wait_for(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_a_put_cut_short_leaves_nothing_and_can_be_sent_again(box, controller, clips):
    conn = controller.conn
    container = f"{USER_UUID}_{SERIAL}_{epoch(START)}"
    conn.put_container(container)
    url, token = conn.get_auth()
    data = clips[0].path.read_bytes()
    path = f"/v1/AUTH_depot/{container}/20261128_160000_1.mp4"
    _cut_short_put(box.url, box.keys.tls_cert, token, path, len(data), data[: len(data) // 2])
    failed = _wait_for(lambda: box.store.one("SELECT * FROM uploads WHERE state = 'failed'"))
    assert "did not complete" in failed["error"]
    assert list(box.uploads.partial_dir.iterdir()) == []
    assert box.store.one("SELECT COUNT(*) AS n FROM recordings")["n"] == 0
    conn.put_object(container, "20261128_160000_1.mp4", data)  # the controller sends it again
    [member] = box.store.query("SELECT evidence_sha256 FROM recordings")
    assert member["evidence_sha256"] == hashlib.sha256(data).hexdigest()


def test_a_put_cut_by_kill9_is_dropped_at_restart(box_process, clips):
    made = run_cli("axis", "add-account", "depot", "--json", config=box_process.config)
    account = json.loads(made.stdout)
    conn = connect(box_process.url, "depot", account["key"], box_process.cert)
    Controller(conn).register()
    container = f"{USER_UUID}_{SERIAL}_{epoch(START)}"
    conn.put_container(container)
    url, token = conn.get_auth()
    partial_dir = box_process.config.parent / "data" / "uploads"
    data = clips[0].path.read_bytes()
    host, port = box_process.url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(box_process.cert))
    context.check_hostname = False
    with socket.create_connection((host, int(port))) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(
            f"PUT /v1/AUTH_depot/{container}/a.mp4 HTTP/1.1\r\nHost: {host}\r\n"
            f"X-Auth-Token: {token}\r\nContent-Length: {len(data) * 4}\r\n\r\n".encode()
            + data
        )
        _wait_for(lambda: any(p.suffix == ".partial" for p in partial_dir.iterdir()))
        box_process.kill9()
    box_process.start()
    assert not any(partial_dir.iterdir())
    status = json.loads(run_cli("status", "--json", config=box_process.config).stdout)
    assert status["uploads_in_progress"] == []
    conn = connect(box_process.url, "depot", account["key"], box_process.cert)
    conn.put_object(container, "a.mp4", data)
    headers = conn.head_object(container, "a.mp4")
    assert headers["etag"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
