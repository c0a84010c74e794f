"""kill -9 of a process sealing a recording, at each step of the header rewrite.

A seal rewrites the vault file's header, so the file's hash changes, and the database must
follow. The soak's power cuts found the gap: a cut after the new header reached the file but
before the database recorded the new hash left a sealed file under the old hash, and
`edgebox verify` called it damaged. The database now records the change as pending first; the
next start settles it by the file's own hash. Each case here kills a real process at one step
and starts the box again: verify passes, the recording is sealed exactly when its file is, and
custody logs the seal once (or never, when the file did not change).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgebox import vault
from edgebox.box import Box
from edgebox.config import load_config
from edgebox.errors import VaultError
from edgebox.recordings import seal_recording
from edgebox.verify import verify_box
from tests.conftest import enroll
from tests.test_ingest import upload_all

# The sealing process: kill -9 of itself at the step named by argv[3].
SEALER = """
import os, signal, sys
from edgebox import vault
from edgebox.box import Box
from edgebox.config import load_config
from edgebox.errors import VaultError
from edgebox.recordings import seal_recording

config, recording, step = sys.argv[1:]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
journal_header, apply_header = vault.journal_header, vault._apply_header

def journal_then(path, raw):
    if step == "before the file":
        die()
    journal_header(path, raw)
    if step == "after the file":
        die()

def apply_then(path, raw):
    if step == "journaled":
        die()
    apply_header(path, raw)

vault.journal_header, vault._apply_header = journal_then, apply_then
seal_recording(Box(load_config(config)), recording)
"""


def _seals(box, recording: str) -> list[dict]:
    rows = box.store.query(
        "SELECT details FROM custody WHERE event = 'recording.sealed' AND subject = ?",
        (recording,),
    )
    return [json.loads(r["details"]) for r in rows]


def _one_recording(box_config, size: int = 1 << 20) -> tuple[str, dict]:
    """Upload one recording through a started box, then stop it; (its id, its row)."""
    box = Box(load_config(box_config)).start(("127.0.0.1", 0))
    try:
        camera = enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"])
        response, _ = upload_all(camera, os.urandom(size))
        recording = response.headers["EdgeBox-Recording-Id"]
        return recording, box.store.one("SELECT * FROM recordings WHERE id = ?", (recording,))
    finally:
        box.stop()


def _seal_killed(box_config, recording: str, step: str) -> subprocess.CompletedProcess:
    """Seal `recording` in a process that kills itself (-9) at `step`."""
    return subprocess.run(
        [sys.executable, "-c", SEALER, str(box_config), recording, step],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _flip_a_byte_of_the_last_segment(path) -> None:
    with open(path, "r+b") as handle:
        handle.seek(-5, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-5, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 1]))


@pytest.mark.parametrize(
    ("step", "sealed"),
    [("before the file", False), ("journaled", True), ("after the file", True)],
)
def test_a_seal_cut_short_is_settled_at_the_next_start(box_config, step, sealed):
    recording, before = _one_recording(box_config, 2 << 20)
    killed = _seal_killed(box_config, recording, step)
    assert killed.returncode == -9, killed.stderr
    box = Box(load_config(box_config))
    path = box.uploads.vault_path(recording)
    box.store.close()
    changed = vault.file_sha256(path) != before["stored_sha256"]
    assert changed == (step == "after the file")  # a journaled header is applied at start

    box = Box(load_config(box_config)).start(("127.0.0.1", 0))
    try:
        report = verify_box(box)
        assert report.ok, report.problems
        row = box.store.one("SELECT * FROM recordings WHERE id = ?", (recording,))
        assert bool(row["sealed"]) == sealed
        assert row["stored_sha256"] == vault.file_sha256(path)
        assert box.store.query("SELECT * FROM header_changes") == []
        seals = _seals(box, recording)
        assert len(seals) == int(sealed)
        started = box.store.query(
            "SELECT details FROM custody WHERE event = 'box.started' ORDER BY seq DESC LIMIT 1"
        )
        settled = json.loads(started[0]["details"])["header_changes"]
        assert settled == {
            "completed": [recording] if sealed else [],
            "dropped": [] if sealed else [recording],
            "left": [],
        }
        if sealed:
            assert seals[0]["completed_late"] is True and seals[0]["requested_at"]
            assert seals[0]["previous_stored_sha256"] == before["stored_sha256"]
        else:  # the seal that never reached the file is simply done again
            seal_recording(box, recording)
            assert len(_seals(box, recording)) == 1
            assert verify_box(box).ok
    finally:
        box.stop()


def test_a_file_that_matches_neither_hash_stays_pending_and_verify_names_it(box_config):
    recording, _ = _one_recording(box_config)
    assert _seal_killed(box_config, recording, "after the file").returncode == -9
    box = Box(load_config(box_config))
    path = box.uploads.vault_path(recording)
    box.store.close()
    _flip_a_byte_of_the_last_segment(path)
    box = Box(load_config(box_config)).start(("127.0.0.1", 0))
    try:
        pending = box.store.query("SELECT recording_id FROM header_changes")
        assert pending == [{"recording_id": recording}]
        row = box.store.one("SELECT sealed FROM recordings WHERE id = ?", (recording,))
        assert row["sealed"] == 0 and _seals(box, recording) == []
        report = verify_box(box)
        assert any(recording in p and "stored bytes changed" in p for p in report.problems)
        assert any(
            recording in p and "recording.sealed" in p and "neither the recorded" in p
            for p in report.problems
        ), report.problems
    finally:
        box.stop()


def test_a_seal_the_process_could_not_commit_is_completed_by_the_next_seal(box_config):
    recording, _ = _one_recording(box_config)
    assert _seal_killed(box_config, recording, "after the file").returncode == -9
    box = Box(load_config(box_config))  # not started: nothing settled it yet
    try:
        assert "the box completes it" in " ".join(verify_box(box).problems)
        with pytest.raises(VaultError, match="already sealed"):
            seal_recording(box, recording)  # settles the pending seal first, then has none to do
        assert len(_seals(box, recording)) == 1
        assert verify_box(box).ok
    finally:
        box.store.close()


def test_a_file_that_changed_since_its_hash_was_recorded_is_not_sealed(box_config):
    recording, _ = _one_recording(box_config)
    box = Box(load_config(box_config))
    try:
        path = box.uploads.vault_path(recording)
        _flip_a_byte_of_the_last_segment(path)  # rot, before the seal
        damaged = path.read_bytes()
        with pytest.raises(
            VaultError, match="stored bytes changed since they were recorded"
        ) as err:
            seal_recording(box, recording)
        assert err.value.status == 409
        assert path.read_bytes() == damaged  # the header is left as it is
        assert box.store.query("SELECT * FROM header_changes") == []
        assert _seals(box, recording) == []
        row = box.store.one("SELECT sealed FROM recordings WHERE id = ?", (recording,))
        assert row["sealed"] == 0  # and verify still names the damage under the old hash
        assert any("stored bytes changed" in p for p in verify_box(box).problems)
    finally:
        box.store.close()
