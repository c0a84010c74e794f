"""Pairing codes and device tokens: single use, expiry, throttling, hashed storage."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import requests

from tests.conftest import enroll


def post_enroll(box, **body):
    return requests.post(
        f"{box.url}/api/v1/cameras/enroll", json=body, verify=str(box.keys.tls_cert)
    )


def test_code_is_single_use(box):
    code = box.pairing.new_code()["code"]
    enroll(box.url, box.keys.tls_cert, code)
    again = post_enroll(box, code=code, serial="CAM-2", model="m")
    assert again.status_code == 403 and again.json()["message"] == "pairing code is used"


def test_code_is_case_and_dash_tolerant(box):
    code = box.pairing.new_code()["code"]
    typed = f"{code[:5].lower()}-{code[5:]}"
    assert post_enroll(box, code=typed, serial="CAM-3", model="m").status_code == 201


def test_expired_code_is_refused(box):
    code = box.pairing.new_code()["code"]
    with box.store.write() as db:
        past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        db.execute("UPDATE pairing_codes SET expires_at = ?", [past])
    response = post_enroll(box, code=code, serial="CAM-4", model="m")
    assert response.status_code == 403 and response.json()["message"] == "pairing code is expired"
    assert box.pairing.devices() == []


@pytest.mark.parametrize(
    "body, field",
    [
        ({"serial": "CAM", "model": "m"}, "code"),
        ({"code": "X", "serial": "bad serial!", "model": "m"}, "serial"),
        ({"code": "X", "serial": "CAM", "model": ""}, "model"),
    ],
)
def test_malformed_enrollment(box, body, field):
    response = post_enroll(box, **body)
    assert response.status_code == 400 and response.json()["field"] == field
    assert box.pairing.devices() == []


def test_not_json(box):
    response = requests.post(
        f"{box.url}/api/v1/cameras/enroll", data="code=1", verify=str(box.keys.tls_cert)
    )
    assert response.status_code == 400


def test_guessing_is_throttled(box):
    statuses = [
        post_enroll(box, code=f"WRONG{i}", serial="CAM", model="m").status_code for i in range(25)
    ]
    assert statuses[:20] == [403] * 20 and statuses[-1] == 429
    good = box.pairing.new_code()["code"]
    assert post_enroll(box, code=good, serial="CAM", model="m").status_code == 429


def test_tokens_are_stored_hashed(box):
    camera = enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"])
    raw = (box.data_dir / "box.db").read_bytes() + (box.data_dir / "box.db-wal").read_bytes()
    assert camera.token.encode() not in raw


def test_revoke_unknown_device(box):
    from edgebox.errors import NotFound

    with pytest.raises(NotFound):
        box.pairing.revoke("nope")


def test_one_guessing_client_does_not_block_another(box):
    """Failed attempts are counted per client address: a guesser on 127.0.0.1 is throttled,
    a camera pairing from 127.0.0.2 (another loopback address) is not."""
    import http.client
    import ssl

    statuses = [
        post_enroll(box, code=f"WRONG{i}", serial="CAM", model="m").status_code for i in range(21)
    ]
    assert statuses[-1] == 429
    context = ssl.create_default_context(cafile=str(box.keys.tls_cert))
    context.check_hostname = False
    port = int(box.url.rsplit(":", 1)[1])
    conn = http.client.HTTPSConnection(
        "127.0.0.1", port, context=context, source_address=("127.0.0.2", 0)
    )
    body = json.dumps({"code": box.pairing.new_code()["code"], "serial": "CAM-2", "model": "m"})
    try:
        conn.request("POST", "/api/v1/cameras/enroll", body, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        assert answer.status == 201, answer.read()
    finally:
        conn.close()
