"""The custody hash chain and signed checkpoints: append, verify, and every kind of tampering."""

from __future__ import annotations

import sqlite3

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgebox import custody
from edgebox.db import Store


@pytest.fixture
def chain(tmp_path):
    store = Store(tmp_path / "box.db")
    key = Ed25519PrivateKey.generate()
    for number in range(10):
        custody.record(store, "test.event", "tester", f"subject-{number % 3}", {"n": number})
        if number in (3, 7):
            custody.make_checkpoint(store, "box-a", key)
    yield store, key, tmp_path / "box.db"
    store.close()


def tamper(path, sql, params=()):
    """Change the database behind the store's back, as an attacker with the disk would."""
    conn = sqlite3.connect(path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def test_intact_chain_verifies(chain):
    store, key, _ = chain
    report = custody.verify_chain(store, "box-a", key.public_key())
    assert report.ok and report.entries == 10 and report.checkpoints == 2


def test_checkpoint_only_when_something_happened(chain):
    store, key, _ = chain
    assert custody.make_checkpoint(store, "box-a", key) is not None
    assert custody.make_checkpoint(store, "box-a", key) is None


def test_altered_entry_is_found(chain):
    store, key, path = chain
    tamper(path, "UPDATE custody SET details = ? WHERE seq = 5", ['{"n":500}'])
    report = custody.verify_chain(store, "box-a", key.public_key())
    assert report.problems == ["custody entry 5 (test.event): content altered"]


def test_removed_entry_is_found(chain):
    store, key, path = chain
    tamper(path, "DELETE FROM custody WHERE seq = 9")
    problems = custody.verify_chain(store, "box-a", key.public_key()).problems
    assert "custody: entries 9..9 are missing" in problems
    assert "custody entry 10: prev_hash does not match entry before it" in problems


def test_rewritten_history_after_checkpoint(chain):
    store, key, path = chain
    # Rewrite entry 2 and recompute every later hash: the chain is consistent again,
    # but the signed checkpoints still name the old heads.
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM custody ORDER BY seq")]
    rows[1]["details"] = '{"n":"forged"}'
    prev = rows[0]["hash"]
    for row in rows[1:]:
        row["prev_hash"] = prev
        row["hash"] = custody.entry_hash(row)
        prev = row["hash"]
        conn.execute(
            "UPDATE custody SET details=?, prev_hash=?, hash=? WHERE seq=?",
            [row["details"], row["prev_hash"], row["hash"], row["seq"]],
        )
    conn.commit()
    conn.close()
    problems = custody.verify_chain(store, "box-a", key.public_key()).problems
    assert problems == [
        "checkpoint at entry 4: chain head differs from the signed one (history rewritten)",
        "checkpoint at entry 8: chain head differs from the signed one (history rewritten)",
    ]


def test_forged_checkpoint_signature(chain):
    store, key, path = chain
    other = Ed25519PrivateKey.generate()
    import base64

    message = custody.checkpoint_message("box-a", 4, "0" * 64, "2026-01-01T00:00:00.000000Z")
    tamper(
        path,
        "UPDATE checkpoints SET signature = ? WHERE seq = 4",
        [base64.b64encode(other.sign(message)).decode()],
    )
    problems = custody.verify_chain(store, "box-a", key.public_key()).problems
    assert problems == ["checkpoint at entry 4: signature invalid"]


def test_checkpoint_of_another_box_does_not_verify(chain):
    store, key, _ = chain
    assert not custody.verify_chain(store, "box-b", key.public_key()).ok
