"""The JSON API over real HTTPS: an authorization matrix, tagging, holds, playback with Range."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.conftest import SECRET
from tests.test_ingest import upload_all
from tests.test_web_auth import PASSWORD, browser, login

ROLES = ("crew", "supervisor", "admin")


@pytest.fixture
def world(box, camera):
    """A box with one user per role and one recording; returns (box, recording id, bytes)."""
    for role in ROLES:
        box.users.add(f"{role}-1", role, PASSWORD)
    data = os.urandom(3 * (1 << 20) + 4321)
    response, _ = upload_all(camera, data)
    return box, response.headers["EdgeBox-Recording-Id"], data


# (method, path, JSON body, roles allowed; "any" = every logged-in role)
MATRIX = [
    ("GET", "/api/v1/recordings", None, "any"),
    ("GET", "/api/v1/recordings/{rid}", None, "any"),
    ("GET", "/api/v1/status", None, "any"),
    ("GET", "/api/v1/me", None, "any"),
    ("POST", "/api/v1/recordings/{rid}/tags", {"notes": "checked"}, ("crew", "supervisor")),
    ("POST", "/api/v1/recordings/{rid}/hold", {"hold": True, "reason": "court"}, ("supervisor",)),
    ("POST", "/api/v1/review/unlock", {"secret": SECRET}, ("supervisor",)),
    ("POST", "/api/v1/review/lock", {}, ("supervisor",)),
    ("GET", "/api/v1/recordings/{rid}/media", None, ("supervisor",)),
    ("GET", "/api/v1/cameras", None, ("supervisor", "admin")),
    ("POST", "/api/v1/cameras/pair", {}, ("admin",)),
    ("GET", "/api/v1/audit", None, ("supervisor", "admin")),
    ("POST", "/api/v1/audit/verify", {}, ("supervisor", "admin")),
    ("GET", "/api/v1/users", None, ("admin",)),
    (
        "POST",
        "/api/v1/users",
        {"username": "new-{role}", "role": "crew", "password": PASSWORD},
        ("admin",),
    ),
]


@pytest.mark.parametrize(
    "method, path, body, allowed", MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX]
)
def test_authorization_matrix(world, method, path, body, allowed):
    box, rid, _ = world
    url = box.url + path.format(rid=rid)
    anonymous = browser(box).request(method, url, json=body)
    assert anonymous.status_code == 401, f"anonymous {method} {path}: {anonymous.status_code}"
    for role in ROLES:
        client, token = login(box, f"{role}-1")
        if path.endswith("/media"):  # playback needs an unlocked review key first
            client.post(
                f"{box.url}/api/v1/review/unlock",
                json={"secret": SECRET},
                headers={"X-CSRF-Token": token},
            )
        payload = (
            {k: (v.format(role=role) if isinstance(v, str) else v) for k, v in (body or {}).items()}
            if body is not None
            else None
        )
        response = client.request(method, url, json=payload, headers={"X-CSRF-Token": token})
        permitted = allowed == "any" or role in allowed
        if permitted:
            assert response.status_code in (200, 201, 206), (
                f"{role} {method} {path}: {response.status_code} {response.text[:200]}"
            )
        else:
            assert response.status_code == 403, f"{role} {method} {path}: {response.status_code}"


def test_openapi_lists_every_api_route(world):
    box, _, _ = world
    client, _ = login(box, "admin-1")
    spec = client.get(f"{box.url}/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for method, path, _, _ in MATRIX:
        templated = path.replace("{rid}", "{recording_id}")
        assert method.lower() in spec["paths"][templated], path
    assert "patch" in spec["paths"]["/tus/{upload_id}"]


def test_filters_paging_and_injection(world, camera):
    box, rid, _ = world
    for _ in range(4):
        upload_all(camera, os.urandom(2000))
    client, _ = login(box, "crew-1")
    first = client.get(f"{box.url}/api/v1/recordings", params={"limit": 2}).json()
    second = client.get(
        f"{box.url}/api/v1/recordings", params={"limit": 2, "cursor": first["next"]}
    ).json()
    third = client.get(
        f"{box.url}/api/v1/recordings", params={"limit": 2, "cursor": second["next"]}
    ).json()
    ids = [r["id"] for page in (first, second, third) for r in page["items"]]
    assert len(ids) == 5 == len(set(ids)) and third["next"] is None
    gaps = client.get(f"{box.url}/api/v1/recordings", params={"gap": "warning"}).json()
    assert len(gaps["items"]) == 5  # no camera said whether the subject was warned
    evil = "x' OR '1'='1"
    none = client.get(f"{box.url}/api/v1/recordings", params={"camera": evil}).json()
    assert none["items"] == []
    for params, field in (
        ({"sync": evil}, "sync"),
        ({"from": evil}, "from"),
        ({"cursor": evil}, "cursor"),
        ({"limit": "9999"}, "limit"),
    ):
        bad = client.get(f"{box.url}/api/v1/recordings", params=params)
        assert bad.status_code == 400 and bad.json()["field"] == field


def test_tagging_and_holds_are_logged(world):
    box, rid, _ = world
    crew, token = login(box, "crew-1")
    tagged = crew.post(
        f"{box.url}/api/v1/recordings/{rid}/tags",
        headers={"X-CSRF-Token": token},
        json={
            "incident": "INC-2026-7",
            "exemption": "large group",
            "notes": "<script>alert(1)</script>",
        },
    )
    assert tagged.status_code == 200 and tagged.json()["incident"] == "INC-2026-7"
    both = crew.post(
        f"{box.url}/api/v1/recordings/{rid}/tags",
        headers={"X-CSRF-Token": token},
        json={"warned": True},
    )
    assert both.status_code == 400 and both.json()["field"] == "exemption"
    sup, sup_token = login(box, "supervisor-1")
    placed = sup.post(
        f"{box.url}/api/v1/recordings/{rid}/hold",
        headers={"X-CSRF-Token": sup_token},
        json={"hold": True, "reason": "court"},
    )
    assert placed.json()["legal_hold"] == 1
    again = sup.post(
        f"{box.url}/api/v1/recordings/{rid}/hold",
        headers={"X-CSRF-Token": sup_token},
        json={"hold": True, "reason": "court"},
    )
    assert again.status_code == 409
    trail = [e["event"] for e in sup.get(f"{box.url}/api/v1/recordings/{rid}").json()["custody"]]
    assert trail[-2:] == ["recording.tagged", "recording.hold_placed"]
    queued = box.store.query("SELECT ref FROM outbox WHERE kind = 'meta' ORDER BY id")
    assert [q["ref"] for q in queued] == ["recording.tagged", "recording.hold_placed"]


def test_playback_with_range_after_unlock(world):
    box, rid, data = world
    sup, token = login(box, "supervisor-1")
    media = f"{box.url}/api/v1/recordings/{rid}/media"
    assert sup.get(media).status_code == 403  # still locked
    wrong = sup.post(
        f"{box.url}/api/v1/review/unlock",
        headers={"X-CSRF-Token": token},
        json={"secret": "not the secret"},
    )
    assert wrong.status_code == 403
    sup.post(
        f"{box.url}/api/v1/review/unlock", headers={"X-CSRF-Token": token}, json={"secret": SECRET}
    )
    whole = sup.get(media)
    assert (
        whole.status_code == 200
        and hashlib.sha256(whole.content).digest() == hashlib.sha256(data).digest()
    )
    part = sup.get(media, headers={"Range": "bytes=1048570-1048600"})
    assert part.status_code == 206 and part.content == data[1048570:1048601]
    assert part.headers["Content-Range"] == f"bytes 1048570-1048600/{len(data)}"
    tail = sup.get(media, headers={"Range": "bytes=-10"})
    assert tail.content == data[-10:]
    outside = sup.get(media, headers={"Range": f"bytes={len(data)}-"})
    assert outside.status_code == 416
    views = box.store.query("SELECT actor FROM custody WHERE event = 'recording.viewed'")
    assert views == [{"actor": "supervisor-1"}]  # one entry per unlock, not per range request
    sup.post(f"{box.url}/api/v1/review/lock", headers={"X-CSRF-Token": token}, json={})
    assert sup.get(media).status_code == 403


def test_pairing_from_the_ui_gives_text_and_qr(world):
    box, _, _ = world
    admin, token = login(box, "admin-1")
    paired = admin.post(f"{box.url}/api/v1/cameras/pair", headers={"X-CSRF-Token": token}, json={})
    body = paired.json()
    assert paired.status_code == 201 and len(body["code"]) == 10
    assert body["qr_svg"].startswith("data:image/svg+xml")
    assert len(body["cert_sha256"]) == 64
