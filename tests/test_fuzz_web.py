"""Fuzzing the box's HTTP surface for real: schemathesis cases built from the box's own
`/api/openapi.json`, sent over HTTPS to a running box as every role (anonymous, camera,
crew, supervisor with the review key unlocked, admin); tus headers and metadata from
hypothesis. No answer may be a 5xx, and every answer conforms to the description."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import example, given
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    status_code_conformance,
)

from edgebox.box import Box
from edgebox.config import load_config
from edgebox.errors import IngestError
from edgebox.ingest.metadata import decode_header, parse_recording_metadata
from tests.conftest import SECRET, enroll, make_box
from tests.fuzz import deep_json, tus_pairs
from tests.test_ingest import upload_all
from tests.test_web_auth import PASSWORD, browser, login

ROLES = ("crew", "supervisor", "admin")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A running box with a recording, a camera and a logged-in session per role."""
    config = make_box(tmp_path_factory.mktemp("fuzzed") / "box")
    box = Box(load_config(config)).start(("127.0.0.1", 0))
    try:
        camera = enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"])
        upload_all(camera, os.urandom(300_000))
        sessions = {"anonymous": (browser(box), "")}
        for role in ROLES:
            box.users.add(f"{role}-1", role, PASSWORD)
            sessions[role] = login(box, f"{role}-1")
        client, token = sessions["supervisor"]
        unlocked = client.post(
            f"{box.url}/api/v1/review/unlock",
            json={"secret": SECRET},
            headers={"X-CSRF-Token": token},
        )
        assert unlocked.status_code == 200, unlocked.text
        camera_session = browser(box)
        camera_session.headers.update(camera.headers())
        sessions["camera"] = (camera_session, "")
        spec = sessions["admin"][0].get(f"{box.url}/api/openapi.json").json()
        yield box, sessions, schemathesis.openapi.from_dict(spec)
    finally:
        box.stop()


def _operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


@given(data=st.data())
def test_every_endpoint_as_every_role_answers_without_5xx_and_as_described(world, data):
    box, sessions, schema = world
    operation = data.draw(st.sampled_from(_operations(schema)), label="operation")
    role = data.draw(st.sampled_from(sorted(sessions)), label="role")
    case = data.draw(operation.as_strategy(), label="case")
    session, token = sessions[role]
    headers = {"X-CSRF-Token": token} if token else {}
    verify = str(box.keys.tls_cert)
    response = case.call(
        base_url=box.url, session=session, headers=headers, timeout=30, verify=verify
    )
    case.validate_response(
        response, checks=CHECKS, headers=headers, transport_kwargs={"verify": verify}
    )


@given(
    path=st.sampled_from(["/api/v1/cameras/enroll", "/api/v1/recordings/x/tags", "/login"]),
    depth=st.integers(1, 200_000),
)
@example(path="/api/v1/cameras/enroll", depth=100_000)  # found: RecursionError, a 500
@example(path="/login", depth=1)  # found: a JSON array as the login body, a 500
def test_deeply_nested_json_bodies_get_a_4xx(world, path, depth):
    box, sessions, _ = world
    session, token = sessions["crew"]
    response = session.post(
        box.url + path,
        data=deep_json(depth),
        headers={"Content-Type": "application/json", "X-CSRF-Token": token},
    )
    assert 400 <= response.status_code < 500, response.text[:200]


header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(
    str.strip
)


@given(
    length=st.one_of(header_values, st.integers(-5, 2**70).map(str)),
    metadata=st.one_of(
        header_values,
        st.dictionaries(
            st.sampled_from(["serial", "sha256", "started_at", "gps", "warned", "filename", "x"]),
            st.text(max_size=30),
            max_size=4,
        ).map(tus_pairs),
    ),
    offset=st.one_of(header_values, st.integers(-5, 2**70).map(str)),
    checksum=st.one_of(header_values, st.just("sha256 !!!"), st.just("md5 AAAA")),
    body=st.binary(max_size=2000),
)
def test_tus_headers_from_a_paired_camera_never_get_a_5xx(
    world, length, metadata, offset, checksum, body
):
    box, sessions, _ = world
    camera, _ = sessions["camera"]
    created = camera.post(
        f"{box.url}/tus/", headers={"Upload-Length": length, "Upload-Metadata": metadata}
    )
    assert created.status_code < 500, created.text[:200]
    location = created.headers.get("Location") or "/tus/nonexistent"
    for answer in (
        camera.patch(
            box.url + location,
            data=body,
            headers={
                "Upload-Offset": offset,
                "Upload-Checksum": checksum,
                "Content-Type": "application/offset+octet-stream",
            },
        ),
        camera.head(box.url + location),
        camera.delete(box.url + location),
    ):
        assert answer.status_code < 500, answer.text[:200]


@given(st.text(max_size=300))
@example("serial \x80")  # found: a non-ASCII "base64" value raised ValueError (a 500)
def test_metadata_header_decodes_or_names_the_problem(header):
    try:
        values = decode_header(header)
    except IngestError as exc:
        assert exc.status == 400 and exc.message
    else:
        assert all(isinstance(v, str) for v in values.values())


@given(
    st.dictionaries(
        st.text(
            st.characters(exclude_categories=["Z", "C"], exclude_characters=","),
            min_size=1,
            max_size=12,
        ),
        st.text(max_size=40),
        max_size=6,
    )
)
def test_metadata_round_trips_and_columns_are_checked_or_refused(values):
    assert decode_header(tus_pairs(values)) == values
    try:
        columns, kept = parse_recording_metadata(tus_pairs(values), "CAM-1")
    except IngestError as exc:
        assert exc.status in (400, 403) and exc.message
    else:
        assert kept == values and columns["serial"] == "CAM-1"


def test_a_latin1_byte_in_upload_metadata_is_a_400(world):
    """The HTTP face of the finding above: the header arrives as latin-1 text."""
    box, sessions, _ = world
    camera, _ = sessions["camera"]
    created = camera.post(
        f"{box.url}/tus/",
        headers={"Upload-Length": "10", "Upload-Metadata": "serial \xe9\xe9\xe9\xe9"},
    )
    assert created.status_code == 400, created.text[:200]
    assert "base64" in created.json()["message"]
