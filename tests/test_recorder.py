"""RTSP cameras the box pulls from, against real GStreamer RTSP servers on loopback.

One box (with a real Mosquitto upstream, for central's commands) and its cameras live for
the whole module, so the 30-second pre-event buffer fills once:
- `front`: the station camera, basic auth, credentials given in the URL;
- `rear`: the van camera, which a test kills mid-event and restarts;
- `lobby`: the station camera again, with a wrong password (added with the CLI);
- `dead`: a port that accepts connections and never answers;
- `missing`: a path the station does not serve (404).
The cameras' frames spell the wall clock in eight bars, so the recordings' first and last
frames tell, independently of the box, when they were filmed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from edgebox import vault
from edgebox.recordings import data_key_for
from edgebox.sync import protocol
from tests.brokers import Mosquitto, TestPKI, cert_client, close_client
from tests.conftest import SECRET, BoxProcess, free_port, make_box, run_cli
from tests.rtsp_fixtures import (
    RtspCamera,
    clock_of_frame,
    decoded_frames,
    seconds_between,
    wait_until,
)
from tests.sync_fixtures import central_holds, central_workers, start_box, synced
from tests.test_web_auth import login

BOX_ID = "rtsp-box"
PASSWORD = "correct horse battery"
USER_PASSWORD = "a long enough password"
PRE = 30.0


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """The box, its cameras and the broker, for the whole module."""
    root = tmp_path_factory.mktemp("recorder")
    pki = TestPKI(root / "pki")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (in the backlog), never answers
    station = RtspCamera(free_port(), ["/front"], user="officer", password=PASSWORD).start()
    van = RtspCamera(free_port(), ["/rear"]).start()
    with Mosquitto(root / "broker", pki) as broker:
        box = start_box(root / "box", broker, pki, BOX_ID)
        try:
            for name, role in (("ann", "crew"), ("sam", "supervisor"), ("ida", "admin")):
                box.users.add(name, role, USER_PASSWORD)
            registry = box.recorder.registry
            registry.add(
                "front", station.url("/front", "officer", PASSWORD), "test", post_event_seconds=2
            )
            registry.add("rear", van.url("/rear"), "test", post_event_seconds=2)
            registry.add("dead", f"rtsp://127.0.0.1:{silent.getsockname()[1]}/x", "test")
            registry.add("missing", station.url("/nothere"), "test", post_event_seconds=0)
            yield {
                "root": root,
                "box": box,
                "broker": broker,
                "pki": pki,
                "station": station,
                "van": van,
                "config": root / "box" / "edgebox.toml",
            }
        finally:
            box.stop()
            station.kill()
            van.kill()
            silent.close()


def camera(box, name: str) -> dict:
    """The camera's live row as the recorder reports it."""
    return next(c for c in box.recorder.cameras() if c["name"] == name)


def buffered(box, *names: str) -> None:
    """Wait until each camera's ring holds the full pre-event time."""
    for name in names:
        wait_until(
            lambda n=name: camera(box, n)["buffered_seconds"] >= PRE + 1,
            PRE + 30,
            f"{name}'s pre-event buffer",
        )


def recordings_of(box, trigger_id: str) -> list[dict]:
    """Recordings whose metadata names this trigger, once the recorder logged them whole."""
    rows = box.store.query(
        "SELECT r.* FROM recordings r JOIN custody c ON c.subject = r.id "
        "AND c.event = 'recorder.recorded' WHERE r.metadata LIKE ?",
        (f"%{trigger_id}%",),
    )
    for row in rows:
        row["meta"] = json.loads(row["metadata"])
    return rows


def wait_recordings(box, trigger_id: str, count: int, timeout: float = 60) -> list[dict]:
    """Wait until `count` recordings name this trigger."""
    return wait_until(
        lambda: (rows := recordings_of(box, trigger_id)) and len(rows) >= count and rows,
        timeout,
        f"{count} recordings of trigger {trigger_id}",
    )


def export(box, recording_id: str, folder: Path) -> Path:
    """Decrypt a recording with the supervisor's secret (outside the box's disk)."""
    path = box.uploads.vault_path(recording_id)
    reader = vault.Reader(path, data_key_for(path, box.keys.unlock_review(SECRET)))
    out = folder / f"{recording_id}.mp4"
    with open(out, "wb") as handle:
        for index in range(reader.header.segments):
            handle.write(reader.segment(index))
    return out


def probe(path: Path) -> dict:
    """ffprobe's view of a media file."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def api(rig, user: str):
    """A logged-in HTTPS session for `user`: (session, headers with the CSRF token)."""
    session, token = login(rig["box"], user, USER_PASSWORD)
    return session, {"X-CSRF-Token": token}


def markers(url: str, seconds: float = 2.0, count: int = 60) -> list[bytes]:
    """32-byte windows of the camera's H.264 as an independent client receives it."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-rtsp_transport", "tcp", "-i", url, "-t", str(seconds)]
        + ["-c", "copy", "-f", "h264", "-"],
        capture_output=True,
        timeout=30,
    ).stdout
    step = max(1, (len(raw) - 64) // count)
    return [raw[i : i + 32] for i in range(64, len(raw) - 32, step)][:count]


def plaintext_on_disk(folder: Path, windows: list[bytes]) -> list[str]:
    """Files under `folder` that hold any of the windows."""
    found = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if any(w in data for w in windows):
                found.append(str(path))
    return found


def test_bad_input_is_refused_and_changes_nothing(rig):
    box = rig["box"]
    session, headers = api(rig, "ida")
    url = f"{box.url}/api/v1/rtsp"
    before = box.store.one("SELECT COUNT(*) AS n FROM rtsp_cameras")["n"]
    cases = [
        ({"name": "x1", "url": "http://127.0.0.1/a"}, "url"),
        ({"name": "x1", "url": "rtsp://"}, "url"),
        ({"name": "bad name!", "url": "rtsp://127.0.0.1/a"}, "name"),
        ({"name": "x1", "url": "rtsp://127.0.0.1/a", "pre_event_seconds": 10}, "pre_event_seconds"),
        ({"name": "front", "url": "rtsp://127.0.0.1/a"}, "name"),
        ({"name": "x1", "url": "rtsp://u:p@127.0.0.1/a", "username": "v"}, "username"),
    ]
    for body, field in cases:
        response = session.post(f"{url}/cameras", json=body, headers=headers)
        assert response.status_code in (400, 409), (body, response.text)
        assert response.json()["field"] == field, (body, response.text)
    assert box.store.one("SELECT COUNT(*) AS n FROM rtsp_cameras")["n"] == before
    crew, crew_headers = api(rig, "ann")
    assert crew.post(f"{url}/cameras", json=cases[0][0], headers=crew_headers).status_code == 403
    no_why = crew.post(f"{url}/triggers", json={"cameras": ["front"]}, headers=crew_headers)
    assert no_why.status_code == 400 and no_why.json()["field"] == "why"
    unknown = crew.post(
        f"{url}/triggers", json={"why": "x", "cameras": ["nope"]}, headers=crew_headers
    )
    assert unknown.status_code == 404
    assert not box.store.query("SELECT 1 FROM custody WHERE event = 'recorder.triggered'")
    anonymous = session.__class__()
    anonymous.verify, anonymous.trust_env = session.verify, False
    assert anonymous.post(f"{url}/triggers", json={"why": "x"}).status_code == 401


def test_credentials_sealed_and_wrong_ones_give_a_clear_state_without_a_retry_storm(rig):
    box, station = rig["box"], rig["station"]
    secret_file = rig["root"] / "lobby-password"
    secret_file.write_text("not the password\n")
    added = run_cli(
        "cameras",
        "add-rtsp",
        "lobby",
        station.url("/front"),
        "--username",
        "officer",
        "--password-file",
        str(secret_file),
        "--json",
        config=rig["config"],
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["url"] == station.url("/front")
    row = wait_until(
        lambda: (c := camera(box, "lobby"))["state"] == "unauthorized" and c,
        30,
        "lobby to be refused",
    )
    assert "401" in row["error"] and "not the password" not in row["error"]
    sessions = box.recorder.pullers[row["id"]].sessions_started
    time.sleep(5)
    assert box.recorder.pullers[row["id"]].sessions_started == sessions == 1
    listed = run_cli("cameras", "list", "--json", config=rig["config"])
    lobby = next(c for c in json.loads(listed.stdout) if c["serial"] == "lobby")
    assert lobby["rtsp"]["state"] == "unauthorized" and lobby["rtsp"]["offline_since"]
    front = camera(box, "front")
    assert front["url"] == station.url("/front") and front["has_credentials"]
    for path in (rig["root"] / "box").rglob("*"):  # database, WAL, config, logs
        if path.is_file():
            data = path.read_bytes()
            assert PASSWORD.encode() not in data, f"camera password in clear in {path}"
            assert b"not the password" not in data, f"camera password in clear in {path}"


def test_a_stream_that_never_starts_is_offline_with_its_reason(rig):
    box = rig["box"]
    missing = wait_until(
        lambda: (c := camera(box, "missing"))["state"] == "offline" and c, 30, "missing offline"
    )
    assert "404" in missing["error"] and missing["offline_since"]
    dead = wait_until(
        lambda: (c := camera(box, "dead"))["state"] == "offline" and c, 40, "dead offline"
    )
    assert dead["error"].startswith("no stream") and dead["streaming_since"] is None
    crew, headers = api(rig, "ann")
    answer = crew.post(
        f"{box.url}/api/v1/rtsp/triggers",
        json={"why": "door alarm", "cameras": ["missing"], "post_event_seconds": 0},
        headers=headers,
    )
    assert answer.status_code == 201, answer.text
    wait_until(
        lambda: box.store.query(
            "SELECT 1 FROM custody WHERE event = 'recorder.nothing_recorded' AND subject = ?",
            (missing["id"],),
        ),
        20,
        "the empty event to be logged",
    )
    assert not recordings_of(box, answer.json()["trigger_id"])


def test_one_trigger_two_cameras_two_playable_recordings_from_30_s_before(rig, tmp_path):
    box, station, van = rig["box"], rig["station"], rig["van"]
    buffered(box, "front", "rear")
    windows = markers(station.url("/front", "officer", PASSWORD)) + markers(van.url("/rear"))
    assert len(windows) > 60
    crew, headers = api(rig, "ann")
    answer = crew.post(
        f"{box.url}/api/v1/rtsp/triggers",
        json={
            "why": "patient aggressive",
            "cameras": ["front", "rear"],
            "post_event_seconds": 4,
            "where": "depot gate",
            "incident": "INC-7",
        },
        headers=headers,
    )
    assert answer.status_code == 201, answer.text
    trigger = answer.json()
    at = time.time()
    assert [c["camera"] for c in trigger["cameras"]] == ["front", "rear"]
    spools = list((box.data_dir / "recorder").glob("*.spool"))
    assert spools, "the events spool while they record"
    assert plaintext_on_disk(rig["root"] / "box", windows) == []
    rows = wait_recordings(box, trigger["trigger_id"], 2)
    assert plaintext_on_disk(rig["root"] / "box", windows) == []
    assert not list((box.data_dir / "recorder").glob("*.spool*")), "spools are removed"
    assert {r["serial"] for r in rows} == {"front", "rear"}
    found_in_clear = 0
    for row in rows:
        assert row["incident"] == "INC-7" and row["user_id"] == "user:ann"
        assert row["pre_event_seconds"] >= PRE and row["trigger_on"] == "patient aggressive"
        assert row["meta"]["trigger_ids"] == trigger["trigger_id"]
        assert row["meta"]["source"] == "rtsp" and json.loads(row["meta"]["gaps"]) == []
        assert row["meta"]["sha256"] == row["evidence_sha256"]
        trail = [
            e["event"]
            for e in box.store.query("SELECT event FROM custody WHERE subject = ?", (row["id"],))
        ]
        assert trail[:4] == [
            "upload.started",
            "recording.ingested",
            "recording.tagged",
            "recorder.recorded",
        ]
        clip = export(box, row["id"], tmp_path)
        found_in_clear += sum(w in clip.read_bytes() for w in windows)
        info = probe(clip)
        assert info["streams"][0]["codec_name"] == "h264"
        assert PRE + 2 <= float(info["format"]["duration"]) <= PRE + 4 + 3
        frames = decoded_frames(clip)
        first = seconds_between(clock_of_frame(frames[0]), at)
        last = seconds_between(clock_of_frame(frames[-1]), at + 4)
        assert PRE <= first <= PRE + 2.5, f"{row['serial']}: first frame {first} s before"
        assert last <= 2.5, f"{row['serial']}: last frame {last} s before the end asked"
    assert found_in_clear > len(windows) // 4, "the markers are the cameras' real footage"
    recorded = box.store.query(
        "SELECT actor, details FROM custody WHERE event = 'recorder.recorded' AND details LIKE ?",
        (f"%{trigger['trigger_id']}%",),
    )
    assert len(recorded) == 2 and all(r["actor"] == "user:ann" for r in recorded)
    triggered = box.store.one(
        "SELECT actor, details FROM custody WHERE event = 'recorder.triggered' AND subject = ?",
        (trigger["trigger_id"],),
    )
    details = json.loads(triggered["details"])
    assert triggered["actor"] == "user:ann" and details["where"] == "depot gate"
    assert details["source"].startswith("api 127.0.0.1")


def test_overlapping_triggers_from_ui_and_central_extend_one_recording(rig):
    box = rig["box"]
    buffered(box, "front")
    supervisor, headers = api(rig, "sam")
    page = supervisor.get(f"{box.url}/cameras")
    assert page.status_code == 200 and 'data-camera="front"' in page.text
    assert "unauthorized" in page.text and "streaming" in page.text
    pressed = supervisor.post(
        f"{box.url}/cameras/rtsp/trigger",
        data={"camera": "front", "why": "crowd forming", "csrf_token": headers["X-CSRF-Token"]},
        allow_redirects=False,
    )
    assert pressed.status_code == 302
    event = wait_until(lambda: camera(box, "front")["recording"], 5, "the UI trigger")
    ui_trigger = event["triggers"][0]
    client = cert_client(rig["broker"], rig["pki"], "central")
    try:
        command = {
            "id": uuid.uuid4().hex,
            "command": "record",
            "who": "dispatcher-4",
            "why": "central asks for footage",
            "cameras": ["front"],
            "post_event_seconds": 3,
        }
        for _ in range(2):  # a redelivery is harmless
            client.publish(protocol.command_topic(BOX_ID), json.dumps(command), qos=1)
        wait_until(lambda: len(camera(box, "front")["recording"]["triggers"]) == 2, 10, "central's")
    finally:
        close_client(client)
    time.sleep(1)
    assert len(camera(box, "front")["recording"]["triggers"]) == 2
    stopped = supervisor.post(
        f"{box.url}/api/v1/rtsp/triggers/{ui_trigger}/stop", json={}, headers=headers
    )
    assert stopped.status_code == 200, stopped.text
    rows = wait_recordings(box, ui_trigger, 1)
    assert len(rows) == 1
    ids = rows[0]["meta"]["trigger_ids"].split(",")
    assert ids[0] == ui_trigger and len(ids) == 2
    details = json.loads(
        box.store.one(
            "SELECT details FROM custody WHERE event = 'recorder.recorded' AND subject = ?",
            (rows[0]["id"],),
        )["details"]
    )
    assert [t["source"].split()[0] for t in details["triggers"]] == ["ui", "central"]
    assert details["triggers"][1]["who"] == "central:dispatcher-4"
    commands = box.store.query(
        "SELECT 1 FROM custody WHERE event = 'central.command' AND subject = ?", (command["id"],)
    )
    assert len(commands) == 1
    assert (
        supervisor.post(
            f"{box.url}/api/v1/rtsp/triggers/{ui_trigger}/stop", json={}, headers=headers
        ).status_code
        == 404
    )


def test_camera_killed_mid_event_keeps_what_came_and_records_the_gap(rig, tmp_path):
    box, van = rig["box"], rig["van"]
    buffered(box, "rear")
    crew, headers = api(rig, "ann")
    answer = crew.post(
        f"{box.url}/api/v1/rtsp/triggers",
        json={"why": "fight", "cameras": ["rear"], "until_stopped": True},
        headers=headers,
    )
    trigger = answer.json()["trigger_id"]
    time.sleep(3)
    killed = time.time()
    van.kill()
    wait_until(lambda: camera(box, "rear")["state"] == "reconnecting", 20, "rear reconnecting")
    listed = run_cli("cameras", "list", "--json", config=rig["config"])
    rear = next(c for c in json.loads(listed.stdout) if c["serial"] == "rear")["rtsp"]
    assert rear["state"] == "reconnecting" and rear["offline_since"]
    time.sleep(2)
    van.start()
    restarted = time.time()
    wait_until(lambda: camera(box, "rear")["state"] == "streaming", 30, "rear back")
    back = time.time()
    time.sleep(3)
    crew.post(f"{box.url}/api/v1/rtsp/triggers/{trigger}/stop", json={}, headers=headers)
    (row,) = wait_recordings(box, trigger, 1)
    gaps = json.loads(row["meta"]["gaps"])
    assert len(gaps) == 1 and gaps[0]["to"] and gaps[0]["reason"]
    lost = box.store.query(
        "SELECT details FROM custody WHERE event = 'recorder.stream_lost' AND subject = ?",
        (camera(box, "rear")["id"],),
    )
    assert lost
    clip = export(box, row["id"], tmp_path)
    frames = decoded_frames(clip)
    clocks = [clock_of_frame(f) for f in frames]
    assert seconds_between(clocks[0], killed) >= PRE + 3
    jumps = [((b - a) % 256) / 2 for a, b in zip(clocks, clocks[1:], strict=False)]
    gap = max(jumps)  # the camera was down from `killed` to `restarted`; the box saw it by `back`
    assert restarted - killed - 1 <= gap <= back - killed + 2, (gap, killed, restarted, back)
    assert seconds_between(clocks[-1], time.time()) < 10, "footage after the restart is kept"
    assert float(probe(clip)["format"]["duration"]) >= PRE + 5
    alarms = {a["source"]: a for a in box.status()["alarms"]}
    assert "camera:dead" in alarms and "offline" in alarms["camera:dead"]["message"]
    assert "camera:front" not in alarms and "camera:rear" not in alarms


def test_a_box_killed_mid_event_records_what_it_spooled_at_restart(rig, tmp_path):
    station = rig["station"]
    config = make_box(tmp_path / "crashing")
    secret = tmp_path / "pw"
    secret.write_text(USER_PASSWORD)
    run_cli("users", "add", "ann", "--role", "crew", "--password-file", str(secret), config=config)
    added = run_cli(
        "cameras",
        "add-rtsp",
        "front",
        station.url("/front"),
        "--username",
        "officer",
        config=config,
        env={"EDGEBOX_CAMERA_PASSWORD": PASSWORD},
    )
    assert added.returncode == 0, added.stderr
    process = BoxProcess(config).start()
    try:
        session = requests.Session()
        session.verify, session.trust_env = str(process.cert), False
        logged = session.post(
            f"{process.url}/login", json={"username": "ann", "password": USER_PASSWORD}
        )
        headers = {"X-CSRF-Token": logged.json()["csrf_token"]}

        def streaming():
            listed = run_cli("cameras", "list", "--json", config=config)
            return json.loads(listed.stdout)[0]["rtsp"]["state"] == "streaming"

        wait_until(streaming, 30, "the camera to stream", interval=1)
        time.sleep(3)
        answer = session.post(
            f"{process.url}/api/v1/rtsp/triggers",
            json={"why": "assault", "until_stopped": True},
            headers=headers,
        )
        trigger = answer.json()["trigger_id"]
        time.sleep(4)
        process.kill9()
        spools = list((tmp_path / "crashing" / "data" / "recorder").glob("*.ts.spool"))
        assert len(spools) == 1
        process.start()

        def recorded():
            listed = run_cli("recordings", "list", "--json", config=config)
            rows = json.loads(listed.stdout) if listed.returncode == 0 else []
            return [r for r in rows if trigger in (r.get("metadata") or "")]

        (row,) = wait_until(recorded, 60, "the recovered recording", interval=1)
        assert "recovered at restart" in row["trigger_off"]
        assert json.loads(json.loads(row["metadata"])["gaps"])[0]["reason"]
    finally:
        process.stop()


def test_recordings_go_upstream_like_any_other(rig):
    """Last in the module: central confirms each recording, and the box then seals it."""
    box = rig["box"]
    store = rig["root"] / "central"
    workers = central_workers(store, rig["broker"], rig["pki"], count=1)
    try:
        wait_until(lambda: synced(box), 120, "central to confirm every recording", interval=1)
    finally:
        for worker in workers:
            worker.stop()
    held = central_holds(store)
    rows = box.store.query("SELECT id FROM recordings")
    assert rows and {r["id"] for r in rows} <= set(held)
