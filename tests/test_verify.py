"""`edgebox verify` against an attacker with the disk: rows, files and the log changed behind
the box's back (plain sqlite3 and file writes, no key), each found and named."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading

import pytest

from edgebox import custody, vault
from edgebox.errors import CustodyError
from edgebox.verify import verify_box
from tests.conftest import SECRET
from tests.test_ingest import upload_all

MIB = 1 << 20


@pytest.fixture
def two(box, camera):
    """Two recordings of the same size on the box, then a checkpoint: their rows."""
    ids = []
    for _ in range(2):
        response, _ = upload_all(camera, os.urandom(2 * MIB + 100))
        ids.append(response.headers["EdgeBox-Recording-Id"])
    box.checkpoint()
    assert verify_box(box).ok
    return [box.store.one("SELECT * FROM recordings WHERE id = ?", (i,)) for i in ids]


def tamper(box, sql, params=()):
    """Change the database behind the box's back."""
    conn = sqlite3.connect(box.store.path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def forge_entry(box, event, subject, details):
    """Append a well-formed entry with no key at all, as anyone with the disk could."""
    with box.store.write() as db:
        custody.append(db, event, "device:forged", subject, details)


def test_healthy_box_reports_its_head_for_comparison_with_central(box, two):
    report = verify_box(box)
    head = box.store.one("SELECT seq, hash FROM custody ORDER BY seq DESC LIMIT 1")
    assert report.ok
    assert (report.head_seq, report.head_hash) == (head["seq"], head["hash"])
    assert report.signed_seq == head["seq"]
    assert report.key_id == box.store.one("SELECT key_id FROM checkpoints LIMIT 1")["key_id"]


def test_a_recording_swapped_for_another_with_a_forged_second_ingest_is_found(box, two):
    a, b = two
    shutil.copyfile(box.uploads.vault_path(a["id"]), box.uploads.vault_path(b["id"]))
    tamper(
        box,
        "UPDATE recordings SET evidence_sha256 = ?, stored_sha256 = ? WHERE id = ?",
        (a["evidence_sha256"], a["stored_sha256"], b["id"]),
    )
    forge_entry(
        box,
        "recording.ingested",
        b["id"],
        {"evidence_sha256": a["evidence_sha256"], "stored_sha256": a["stored_sha256"]},
    )
    problems = verify_box(box).problems
    assert any(f"recording {b['id']}: ingested 2 times in the custody log" in p for p in problems)
    assert f"recording {b['id']}: evidence hash in the database differs from the custody log" in (
        problems
    )
    assert any(f"holds the file of recording {a['id']}" in p for p in problems)


def test_a_recording_deleted_with_its_file_is_found(box, two):
    gone = two[1]
    tamper(box, "DELETE FROM recordings WHERE id = ?", (gone["id"],))
    box.uploads.vault_path(gone["id"]).unlink()
    problems = verify_box(box).problems
    assert len(problems) == 1
    assert problems[0].startswith(f"recording {gone['id']}: ingested in custody entry ")
    assert problems[0].endswith("but missing from the database")


def test_a_size_edited_in_the_database_is_found(box, two):
    rec = two[0]
    tamper(box, "UPDATE recordings SET size = size - 1000 WHERE id = ?", (rec["id"],))
    problems = verify_box(box).problems
    expected = (
        f"recording {rec['id']}: size in the database ({rec['size'] - 1000}) differs from the "
        f"custody log ({rec['size']})"
    )
    assert expected in problems
    assert any("its header declares" in p for p in problems)


def test_entries_cut_from_the_end_past_a_checkpoint_are_found(box, two):
    head = verify_box(box).head_seq
    tamper(box, "DELETE FROM custody WHERE seq >= ?", (head - 1,))
    problems = verify_box(box).problems
    assert (
        f"checkpoint at entry {head}: the chain ends at entry {head - 2} (entries were cut "
        "from its end)"
    ) in problems


def test_deleted_checkpoints_are_found(box, two):
    tamper(box, "DELETE FROM checkpoints")
    problems = verify_box(box).problems
    assert any("but no signed checkpoint" in p for p in problems)


def test_a_checkpoint_that_names_another_key_is_found(box, two):
    tamper(box, "UPDATE checkpoints SET key_id = 'feedfeedfeedfeed'")
    assert any("names key feedfeedfeedfeed" in p for p in verify_box(box).problems)


def test_an_altered_entry_is_never_signed(box, two):
    custody.record(box.store, "test.event", "tester", None, {"n": 1})
    custody.record(box.store, "test.event", "tester", None, {"n": 2})
    head = verify_box(box).head_seq
    tamper(box, "UPDATE custody SET actor = 'someone else' WHERE seq = ?", (head - 1,))
    with pytest.raises(CustodyError, match=f"custody entry {head - 1} .*content altered"):
        box.checkpoint()
    assert verify_box(box).signed_seq == head - 2  # still the fixture's checkpoint


def test_a_chain_cut_below_its_last_checkpoint_is_never_signed(box, two):
    signed = verify_box(box).signed_seq
    tamper(box, "DELETE FROM custody WHERE seq >= ?", (signed - 1,))
    with pytest.raises(CustodyError, match="entries were cut, not signing"):
        box.checkpoint()
    assert verify_box(box).signed_seq == signed


def test_malformed_details_and_a_dropped_table_are_reported_not_raised(box, two):
    seq = box.store.one("SELECT seq FROM custody WHERE event = 'recording.ingested'")["seq"]
    tamper(box, "UPDATE custody SET details = '{not json' WHERE seq = ?", (seq,))
    problems = verify_box(box).problems
    assert f"custody entry {seq}: details are not JSON" in problems
    tamper(box, "DROP TABLE checkpoints")
    report = verify_box(box)
    assert not report.ok
    assert any(p.startswith("database: no such table: checkpoints") for p in report.problems)
    json.dumps(report.to_dict())  # still a report for --json


def test_deep_names_the_damaged_segment(box, two):
    rec = two[0]
    path = box.uploads.vault_path(rec["id"])
    data = bytearray(path.read_bytes())
    data[vault.HEADER_AREA + MIB + 100] ^= 0x01  # in segment 1
    path.write_bytes(data)
    report = verify_box(box, box.keys.unlock_review(SECRET))
    mine = [p for p in report.problems if rec["id"] in p]
    assert any("stored bytes changed" in p for p in mine)
    assert any("segment 1" in p for p in mine), mine
    assert report.decrypted == 1  # the intact one


def test_verify_waits_for_a_seal_under_way_instead_of_calling_it_damage(box, two):
    """Found by the soak: a seal rewrites the header, then records the new stored hash; a
    verify that read between the two reported a healthy recording as damaged."""
    a, _ = two
    path = box.uploads.vault_path(a["id"])
    result = {}
    with vault.header_change(box.uploads.vault_dir):  # as seal_recording holds it
        header = vault.read_header(path)
        kept = [s for s in header.stanzas if not s["recipient"].startswith("review:")]
        stored = vault.rewrite_header(path, kept)  # the file is sealed, its row not yet
        worker = threading.Thread(target=lambda: result.update(report=verify_box(box)))
        worker.start()
        worker.join(4.0)  # longer than any retrying would take
        assert worker.is_alive()  # verify waits for the seal to finish...
        with box.store.write() as db:  # ...which then records the new hash, as _rewrite does
            db.execute(
                "UPDATE recordings SET stored_sha256 = ?, sealed = 1 WHERE id = ?",
                [stored, a["id"]],
            )
            custody.append(
                db,
                "recording.sealed",
                "box",
                a["id"],
                {
                    "dropped": "review",
                    "stored_sha256": stored,
                    "previous_stored_sha256": a["stored_sha256"],
                },
            )
    worker.join(60)
    assert result["report"].ok, result["report"].problems
