"""The compliance report over real HTTPS (page, API, exports) and the CLI, on a real box."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import html
import io
import json

import pytest

from edgebox.box import Box
from edgebox.clock import iso, utcnow
from edgebox.config import load_config
from tests.conftest import enroll, make_box, run_cli
from tests.test_ingest import upload_all
from tests.test_web_auth import PASSWORD, browser, login

DAY = dt.timedelta(days=1)


def _ago(days: float) -> str:
    return iso(utcnow() - days * DAY)


# (name, camera, metadata): what each recording's camera said about it
CLIPS = [
    ("short", "CAM-A", {"pre_event_seconds": "10", "warned": "true", "user_id": "u-1"}),
    ("unanswered", "CAM-A", {"pre_event_seconds": "30", "user_id": "u-2", "category": "riot"}),
    ("not-warned", "CAM-B", {"pre_event_seconds": "31", "warned": "false", "user_id": "u-2"}),
    ("old", "CAM-B", {"pre_event_seconds": "45", "exemption": "large group", "user_id": "u-1"}),
    ("other", "CAM-B", {"pre_event_seconds": "45", "exemption": "the man ran off"}),
]


@pytest.fixture
def world(tmp_path):
    """A police box with users, two cameras, five recordings, one hold and one silent camera;
    returns (box, {clip name: recording id})."""
    config = make_box(tmp_path / "box")
    environ = {"EDGEBOX_COMPLIANCE__ORGANISATION_TYPE": "police"}
    box = Box(load_config(config, environ=environ)).start(("127.0.0.1", 0))
    for name, role in (("cara", "crew"), ("sam", "supervisor"), ("ida", "admin")):
        box.users.add(name, role, PASSWORD)
    cameras = {
        serial: enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"], serial)
        for serial in ("CAM-A", "CAM-B", "CAM-SILENT")
    }
    ids = {}
    for number, (name, serial, meta) in enumerate(CLIPS):
        started = _ago(25) if name == "old" else _ago(2 - number / 10)
        metadata = {"started_at": started, "category": "traffic", **meta}
        response, _ = upload_all(cameras[serial], f"clip {name}".encode() * 100, metadata=metadata)
        ids[name] = response.headers["EdgeBox-Recording-Id"]
    client, token = login(box, "sam")
    placed = client.post(
        f"{box.url}/api/v1/recordings/{ids['other']}/hold",
        json={"hold": True, "reason": "court order 12/34"},
        headers={"X-CSRF-Token": token},
    )
    assert placed.status_code == 200, placed.text
    with box.store.write() as db:  # the camera last talked to the box two days ago
        db.execute(
            "UPDATE devices SET last_seen_at = ?, paired_at = ? WHERE serial = 'CAM-SILENT'",
            [_ago(2), _ago(3)],
        )
    yield box, ids
    box.stop()


def _custody_count(box) -> int:
    return box.store.one("SELECT count(*) AS n FROM custody")["n"]


def _ids(section: dict) -> set[str]:
    return {item["id"] for item in section["items"]}


def test_report_lists_each_check_with_counts_and_filters(world):
    box, ids = world
    client, _ = login(box, "sam")
    body = client.get(f"{box.url}/api/v1/compliance").json()
    assert body["counts"] == {
        "pre_event": 1,
        "warning": 2,
        "at_risk": 1,
        "legal_hold": 1,
        "silent_camera": 1,
    }
    sections = body["sections"]
    assert _ids(sections["pre_event"]) == {ids["short"]}
    assert "10 s, below the required 30 s" in sections["pre_event"]["items"][0]["finding"]
    assert _ids(sections["warning"]) == {ids["unanswered"], ids["not-warned"]}
    findings = {i["id"]: i["finding"] for i in sections["warning"]["items"]}
    assert findings[ids["unanswered"]] == "not answered"
    assert "no exemption reason" in findings[ids["not-warned"]]
    assert _ids(sections["at_risk"]) == {ids["old"]}
    assert "retention floor" in sections["at_risk"]["items"][0]["finding"]
    assert _ids(sections["legal_hold"]) == {ids["other"]}
    assert "user:sam" in sections["legal_hold"]["items"][0]["finding"]
    assert "court order 12/34" in sections["legal_hold"]["items"][0]["finding"]
    assert [c["serial"] for c in sections["silent_camera"]["items"]] == ["CAM-SILENT"]
    assert body["by_camera"]["warning"] == {"CAM-A": 1, "CAM-B": 1}
    assert body["by_user"]["warning"] == {"u-2": 2}
    # camera-side free text is kept as an "other" reason with the camera's words
    held = box.store.one("SELECT exemption FROM recordings WHERE id = ?", (ids["other"],))
    assert held["exemption"] == "other: the man ran off"
    old = box.store.one("SELECT exemption FROM recordings WHERE id = ?", (ids["old"],))
    assert old["exemption"] == "large_group"

    def counts(**args):
        response = client.get(f"{box.url}/api/v1/compliance", params=args)
        assert response.status_code == 200, response.text
        return response.json()["counts"]

    assert counts(camera="CAM-A") == {
        "pre_event": 1,
        "warning": 1,
        "at_risk": 0,
        "legal_hold": 0,
        "silent_camera": 0,
    }
    assert counts(user="u-2", check="warning,pre_event") == {"pre_event": 0, "warning": 2}
    assert counts(category="riot", check="warning") == {"warning": 1}
    assert counts(check="at_risk", to=_ago(10)) == {"at_risk": 1}
    assert counts(check="at_risk,warning", **{"from": _ago(10)}) == {"at_risk": 0, "warning": 2}
    limited = client.get(f"{box.url}/api/v1/compliance", params={"limit": 1}).json()
    assert len(limited["sections"]["warning"]["items"]) == 1
    assert limited["sections"]["warning"]["truncated"] is True
    assert limited["counts"]["warning"] == 2

    # fire and ambulance crews: no per-user statistics
    rules = dataclasses.replace(box.config.compliance, organisation_type="ambulance")
    box.config = dataclasses.replace(box.config, compliance=rules)
    withheld = client.get(f"{box.url}/api/v1/compliance").json()
    assert withheld["by_user"] is None and "withheld" in withheld["per_user_statistics"]
    assert withheld["counts"] == body["counts"]


BAD = [
    ({"from": "yesterday"}, "from"),
    ({"to": "2026-13-01T00:00:00Z"}, "to"),
    ({"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "to"),
    ({"check": "faces"}, "check"),
    ({"check": ","}, "check"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"person": "anyone"}, "person"),
    ({"camera": "x" * 200}, "camera"),
]


def test_bad_filters_get_400_and_change_nothing(world):
    box, _ = world
    client, token = login(box, "sam")
    before = _custody_count(box)
    for args, field in BAD:
        api = client.get(f"{box.url}/api/v1/compliance", params=args)
        assert api.status_code == 400, (args, api.text)
        assert api.json()["field"] == field
        exported = client.post(
            f"{box.url}/api/v1/compliance/export",
            json={"format": "csv", "filters": args},
            headers={"X-CSRF-Token": token},
        )
        assert exported.status_code == 400 and exported.json()["field"] == field
        page = client.get(f"{box.url}/compliance", params=args)
        assert page.status_code == 400 and api.json()["message"] in html.unescape(page.text)
    for body in ({"format": "pdf"}, {"filters": {}}, {"format": "csv", "filters": []}, []):
        refused = client.post(
            f"{box.url}/api/v1/compliance/export", json=body, headers={"X-CSRF-Token": token}
        )
        assert refused.status_code == 400, body
    assert _custody_count(box) == before  # no export was logged, nothing else changed


def test_roles(world):
    box, _ = world
    assert browser(box).get(f"{box.url}/api/v1/compliance").status_code == 401
    crew, token = login(box, "cara")
    assert crew.get(f"{box.url}/api/v1/compliance").status_code == 403
    assert crew.get(f"{box.url}/compliance").status_code == 403
    denied = crew.post(
        f"{box.url}/api/v1/compliance/export",
        json={"format": "csv"},
        headers={"X-CSRF-Token": token},
    )
    assert denied.status_code == 403
    admin, _ = login(box, "ida")
    assert admin.get(f"{box.url}/api/v1/compliance").status_code == 200
    spec = browser(box).get(f"{box.url}/api/openapi.json").json()
    operation = spec["paths"]["/api/v1/compliance"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {
        "from",
        "to",
        "camera",
        "user",
        "category",
        "check",
        "limit",
    }
    assert "post" in spec["paths"]["/api/v1/compliance/export"]


def test_exports_are_logged_with_their_hash(world):
    box, ids = world
    client, token = login(box, "sam")
    filters = {"camera": "CAM-B", "check": "warning,legal_hold,at_risk"}
    response = client.post(
        f"{box.url}/api/v1/compliance/export",
        json={"format": "csv", "filters": filters},
        headers={"X-CSRF-Token": token},
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in response.headers["Content-Disposition"]
    digest = hashlib.sha256(response.content).hexdigest()
    assert response.headers["EdgeBox-Export-Sha256"] == digest
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert {(r["check"], r["recording_id"]) for r in rows} == {
        ("warning", ids["not-warned"]),
        ("legal_hold", ids["other"]),
        ("at_risk", ids["old"]),
    }
    entry = box.store.one(
        "SELECT * FROM custody WHERE seq = ?", (int(response.headers["EdgeBox-Custody-Seq"]),)
    )
    assert entry["event"] == "compliance.exported" and entry["actor"] == "user:sam"
    details = json.loads(entry["details"])
    assert details["sha256"] == digest and details["format"] == "csv"
    assert details["filters"]["camera"] == "CAM-B" and details["rows"] == 3
    assert details["counts"] == {"warning": 1, "at_risk": 1, "legal_hold": 1}

    # the page's printable export, posted by its form with the CSRF token
    page = client.get(f"{box.url}/compliance", params={"camera": "CAM-B"})
    assert page.status_code == 200
    assert 'data-check="warning">1<' in page.text and "Export printable report" in page.text
    assert "past 90% full" in page.text and "<p>None.</p>" in page.text  # no silent camera
    printed = client.post(
        f"{box.url}/compliance/export",
        data={"csrf_token": token, "format": "html", "camera": "CAM-B"},
    )
    assert printed.status_code == 200 and printed.headers["Content-Type"].startswith("text/html")
    text = printed.text
    assert box.config.box.box_id in text and ids["not-warned"] in text and "<script" not in text
    last = box.store.one("SELECT * FROM custody ORDER BY seq DESC LIMIT 1")
    assert last["event"] == "compliance.exported"
    assert json.loads(last["details"])["sha256"] == hashlib.sha256(printed.content).hexdigest()
    # without the CSRF token the export is refused and not logged
    refused = client.post(f"{box.url}/compliance/export", data={"format": "html"})
    assert refused.status_code == 403
    assert box.store.one("SELECT max(seq) AS s FROM custody")["s"] == last["seq"]


def test_cli(world, tmp_path):
    box, ids = world
    config = box.config.source
    env = {"EDGEBOX_COMPLIANCE__ORGANISATION_TYPE": "police"}
    shown = run_cli("compliance", "--check", "pre_event", "--json", config=config, env=env)
    assert shown.returncode == 0, shown.stderr
    assert _ids(json.loads(shown.stdout)["sections"]["pre_event"]) == {ids["short"]}
    out = tmp_path / "report.csv"
    written = run_cli(
        "compliance", "--export", "csv", "--out", str(out), "--by", "kim", "--json", config=config
    )
    assert written.returncode == 0, written.stderr
    result = json.loads(written.stdout)
    assert result["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    entry = box.store.one("SELECT * FROM custody WHERE seq = ?", (result["custody_seq"],))
    assert (
        entry["actor"] == "user:kim" and json.loads(entry["details"])["sha256"] == result["sha256"]
    )
    before = _custody_count(box)
    bad = run_cli("compliance", "--check", "faces", config=config)
    assert bad.returncode == 2 and bad.stderr.startswith("error: check must be")
    again = run_cli("compliance", "--export", "csv", "--out", str(out), config=config)
    assert again.returncode == 2 and "exists" in again.stderr
    assert _custody_count(box) == before


def test_exemption_answers_are_validated(world):
    box, ids = world
    client, token = login(box, "cara")
    url = f"{box.url}/api/v1/recordings/{ids['unanswered']}/tags"
    before = _custody_count(box)
    for bad in ("because", "other", "other: x", "other:"):
        refused = client.post(url, json={"exemption": bad}, headers={"X-CSRF-Token": token})
        assert refused.status_code == 400 and refused.json()["field"] == "exemption", bad
    assert _custody_count(box) == before
    for given, stored in (
        ("Large group", "large_group"),
        ("severity", "severity"),
        ("other:  crowd turned hostile ", "other: crowd turned hostile"),
    ):
        tagged = client.post(url, json={"exemption": given}, headers={"X-CSRF-Token": token})
        assert tagged.status_code == 200 and tagged.json()["exemption"] == stored
    # the page's form: a reason and a note
    form = client.post(
        f"{box.url}/recordings/{ids['not-warned']}/tags",
        data={"csrf_token": token, "warned": "no", "exemption": "severity"},
    )
    assert form.status_code == 200
    row = box.store.one(
        "SELECT warned, exemption FROM recordings WHERE id = ?", (ids["not-warned"],)
    )
    assert row == {"warned": 0, "exemption": "severity"}
    sup, _ = login(box, "sam")
    assert sup.get(f"{box.url}/api/v1/compliance").json()["counts"]["warning"] == 0


@pytest.mark.parametrize(
    "variable, value, needle",
    [
        ("EDGEBOX_COMPLIANCE__ORGANISATION_TYPE", "hospital", "organisation_type must be one of"),
        ("EDGEBOX_COMPLIANCE__AT_RISK_DAYS", "30", "at_risk_days must be 0 to 29"),
        ("EDGEBOX_COMPLIANCE__MIN_PRE_EVENT_SECONDS", "-1", "min_pre_event_seconds"),
        ("EDGEBOX_COMPLIANCE__SILENT_CAMERA_HOURS", "0", "silent_camera_hours"),
    ],
)
def test_bad_compliance_config_is_refused(box_config, variable, value, needle):
    checked = run_cli("config", "check", config=box_config, env={variable: value})
    assert checked.returncode == 2, checked.stdout
    assert needle in checked.stderr and variable in checked.stderr


def test_list_gap_follows_the_configured_minimum(world):
    box, ids = world
    client, _ = login(box, "sam")
    rules = dataclasses.replace(box.config.compliance, min_pre_event_seconds=31.5)
    box.config = dataclasses.replace(box.config, compliance=rules)
    listed = client.get(f"{box.url}/api/v1/recordings", params={"gap": "pre_event"}).json()
    report = client.get(f"{box.url}/api/v1/compliance", params={"check": "pre_event"}).json()
    expected = {ids["short"], ids["unanswered"], ids["not-warned"]}  # 10 s, 30 s, 31 s
    assert {r["id"] for r in listed["items"]} == expected
    assert _ids(report["sections"]["pre_event"]) == expected
