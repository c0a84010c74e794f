"""The uplink's pipeline parts on real vault files: the look-ahead check is used only for the
very file and hash it checked, and central's answers reach the thread waiting for them."""

from __future__ import annotations

import queue

import pytest

from edgebox.sync.pipeline import Acks, LookAhead
from tests.sync_fixtures import offline_box
from tests.test_sync import fill


@pytest.fixture
def vault_file(tmp_path):
    """(path, stored sha256) of a real recording's vault file on an offline box."""
    with offline_box(tmp_path / "box", "van-9") as box:
        fill(box, 1, 300_000)
        rec = box.store.one("SELECT id, stored_sha256 FROM recordings")
        return box.uploads.vault_path(rec["id"]), rec["stored_sha256"]


def test_look_ahead_result_is_used_only_for_the_same_file_and_hash(vault_file):
    path, sha = vault_file
    ahead = LookAhead()
    ahead.start(path, sha)
    assert ahead.problems(path, sha) == []

    ahead.start(path, sha)
    ahead.wait()  # checked healthy; then the file rots before it is sent
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x40
    path.write_bytes(bytes(raw))
    problems = ahead.problems(path, sha)
    assert problems and "stored bytes changed" in problems[0]

    ahead.start(path, sha)  # a result for another hash is not reused either
    assert ahead.problems(path, "0" * 64) != []


def test_answers_reach_the_transfer_waiting_for_them():
    acks = Acks()
    acks.open("rec-1.aaaa")
    acks.put({"re": "seg", "tid": "rec-2.bbbb", "offset": 0})  # nobody sends rec-2
    acks.put({"re": "seg", "tid": "rec-1.aaaa", "offset": 0})
    acks.put({"re": "meta", "id": "custody:1-2"})
    assert acks.get("rec-1.aaaa", timeout=1)["offset"] == 0
    with pytest.raises(queue.Empty):
        acks.get("rec-1.aaaa", timeout=0.05)
    assert [acks.get(None, timeout=1).get("re") for _ in range(2)] == ["seg", "meta"]
    acks.close("rec-1.aaaa")
    acks.put({"re": "fin", "tid": "rec-1.aaaa"})  # stale once the transfer ended
    assert acks.get(None, timeout=1)["re"] == "fin"
