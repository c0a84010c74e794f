"""tus-js-client 4.3 (the tus project's own client) under Node against a real box over HTTPS:
plain, resumed, parallel, with-upload and deferred-length uploads each become one recording
with the right evidence hash.

The client is installed by scripts/setup.sh (`npm ci` in tests/js); the box's self-signed
certificate is trusted through NODE_EXTRA_CA_CERTS, as a camera pins it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

MIB = 1 << 20
JS = Path(__file__).resolve().parent / "js"


def _client(box, camera, tmp_path: Path, mode: str, data: bytes, chunk: int | None = None):
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "tus-js-client").is_dir():
        pytest.fail("node and tests/js/node_modules are missing: run scripts/setup.sh")
    source = tmp_path / f"{mode}.bin"
    source.write_bytes(data)
    job = {
        "endpoint": f"{box.url}/tus/",
        "token": camera.token,
        "file": str(source),
        "mode": mode,
        "chunkSize": chunk,
        "metadata": {"serial": camera.serial, "filename": f"{mode}.mp4"},
    }
    done = subprocess.run(
        [node, str(JS / "upload.mjs"), json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=JS,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(box.keys.tls_cert)},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _one_recording(box, result: dict, data: bytes, mode: str, uploads: int = 1) -> dict:
    assert result["ok"], result
    evidence = hashlib.sha256(data).hexdigest()
    assert result["evidence"] == evidence
    rows = box.store.query("SELECT * FROM recordings")
    assert len(rows) == 1, "one recording, nothing else stored"
    row = rows[0]
    assert row["id"] == result["recordingId"]
    assert row["evidence_sha256"] == evidence and row["size"] == len(data)
    assert row["filename"] == f"{mode}.mp4"
    assert box.store.query("SELECT state FROM uploads") == [{"state": "finished"}] * uploads
    return row


@pytest.mark.parametrize(
    ("mode", "size", "chunk"),
    [
        ("plain", 3 * MIB + 123, None),
        ("with-upload", 3 * MIB + 5, MIB),
        ("with-upload", 200_000, None),  # the whole recording in the POST
        ("deferred", 2 * MIB, MIB),  # ends on a segment boundary: an empty last PATCH
        ("deferred", 2 * MIB + 999, MIB),
    ],
)
def test_tus_js_client_uploads(box, camera, tmp_path, mode, size, chunk):
    data = os.urandom(size)
    result = _client(box, camera, tmp_path, mode, data, chunk)
    _one_recording(box, result, data, mode)
    started = box.store.one("SELECT details FROM custody WHERE event = 'upload.started'")
    assert json.loads(started["details"]).get("length_deferred", False) == (mode == "deferred")


def test_tus_js_client_resumes_a_paused_upload(box, camera, tmp_path):
    data = os.urandom(3 * MIB + 77)
    result = _client(box, camera, tmp_path, "resumed", data, MIB)
    assert result["firstUrl"] == result["url"] and result["offsetAtPause"] == MIB
    _one_recording(box, result, data, "resumed")
    heads = box.store.query("SELECT COUNT(*) AS n FROM custody WHERE event = 'upload.started'")
    assert heads == [{"n": 1}], "the second run resumed the first upload, not a new one"


def test_tus_js_client_parallel_upload_is_one_recording(box, camera, tmp_path):
    """parallelUploads: 2 sends two parts (Upload-Concat: partial) and a final upload: the
    box keeps one recording, with the final's metadata and the hash of the whole file."""
    data = os.urandom(3 * MIB + 1)
    result = _client(box, camera, tmp_path, "parallel", data)
    row = _one_recording(box, result, data, "parallel", uploads=3)
    parts = box.store.query("SELECT concat, state FROM uploads WHERE concat != 'final'")
    assert parts == [{"concat": "partial-done", "state": "finished"}] * 2
    assert row["upload_id"] == box.store.one("SELECT id FROM uploads WHERE concat = 'final'")["id"]
    assert list((box.data_dir / "uploads").iterdir()) == []
