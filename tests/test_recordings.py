"""Header-only key changes on stored recordings: sealing and re-wrapping to a new central key."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgebox import vault
from edgebox.errors import KeyAccessError, VaultError
from edgebox.keys import x25519_private_from_file
from edgebox.recordings import data_key_for, rewrap_recording, seal_recording
from edgebox.verify import verify_box
from tests.conftest import SECRET
from tests.test_ingest import upload_all

MIB = 1 << 20


@pytest.fixture
def stored(box, camera):
    """One recording on the box: (recording row, plaintext)."""
    data = os.urandom(3 * MIB + 9)
    response, _ = upload_all(camera, data)
    rec = box.store.one(
        "SELECT * FROM recordings WHERE id = ?", (response.headers["EdgeBox-Recording-Id"],)
    )
    return rec, data


def segments_region(path):
    """The bytes after the header area."""
    return path.read_bytes()[vault.HEADER_AREA :]


def central_private(box):
    return x25519_private_from_file(box.config.base_dir / "central-demo" / "central.key")


def test_seal_drops_review_access_and_keeps_central(box, stored):
    rec, data = stored
    path = box.uploads.vault_path(rec["id"])
    body_before = segments_region(path)
    sealed = seal_recording(box, rec["id"])
    assert sealed["sealed"] == 1 and sealed["stored_sha256"] == vault.file_sha256(path)
    assert sealed["stored_sha256"] != rec["stored_sha256"]
    assert segments_region(path) == body_before  # only the header changed
    with pytest.raises(VaultError, match="no key stanza for review:"):
        data_key_for(path, box.keys.unlock_review(SECRET))
    key = data_key_for(path, central_private(box), role="central")
    assert vault.Reader(path, key).verify() == hashlib.sha256(data).hexdigest()
    with pytest.raises(VaultError, match="already sealed"):
        seal_recording(box, rec["id"])
    report = verify_box(box)
    assert report.ok, report.problems


def test_rewrap_to_a_rotated_central_key(box, stored):
    rec, data = stored
    path = box.uploads.vault_path(rec["id"])
    old = central_private(box)
    new = X25519PrivateKey.generate()
    box.keys.import_central(new.public_key())
    rewrap_recording(box, rec["id"], box.keys.unlock_review(SECRET), "user:supervisor")
    key = data_key_for(path, new, role="central")
    assert vault.Reader(path, key).verify() == hashlib.sha256(data).hexdigest()
    with pytest.raises(VaultError, match="no key stanza for central:"):
        data_key_for(path, old, role="central")
    events = [
        r["event"]
        for r in box.store.query(
            "SELECT event FROM custody WHERE subject = ? ORDER BY seq", (rec["id"],)
        )
    ]
    assert events[-1] == "recording.rewrapped"
    assert verify_box(box).ok


def test_rewrap_needs_the_right_secret(box, stored):
    rec, _ = stored
    before = vault.file_sha256(box.uploads.vault_path(rec["id"]))
    with pytest.raises(KeyAccessError):
        rewrap_recording(box, rec["id"], box.keys.unlock_review("wrong secret!"), "x")
    assert vault.file_sha256(box.uploads.vault_path(rec["id"])) == before


def test_verify_notices_a_stored_hash_that_disagrees_with_custody(box, stored):
    rec, _ = stored
    with box.store.write() as db:
        db.execute("UPDATE recordings SET stored_sha256 = ? WHERE id = ?", ["0" * 64, rec["id"]])
    problems = verify_box(box).problems
    assert (
        f"recording {rec['id']}: stored hash in the database differs from the custody log"
        in problems
    )


def test_config_changes_are_logged(box_config):
    from edgebox.box import Box
    from edgebox.config import load_config

    for environ in ({}, {}, {"EDGEBOX_INGEST__EXPIRE_HOURS": "6"}):
        running = Box(load_config(box_config, environ=environ)).start(("127.0.0.1", 0))
        running.stop()
    running = Box(load_config(box_config))
    events = running.store.query("SELECT event, details FROM custody WHERE event LIKE 'config.%'")
    running.store.close()
    assert [e["event"] for e in events] == ["config.applied", "config.changed"]
    assert '"changed":["ingest.expire_hours"]' in events[1]["details"]
