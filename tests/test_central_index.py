"""Central's index, the same checks on SQLite and on a real PostgreSQL: the receiver applies a
simulated box's custody, recordings and events, refuses what it must, and every answer is the
same on both."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bench.fleet_box import SimBox
from edgebox.central.index import Index, migrations, open_index
from edgebox.central.index_pg import PgIndex, check_url, dml
from edgebox.central.receiver import Receiver
from edgebox.errors import ConfigError
from edgebox.sync import protocol

CHUNK = 64 * 1024


@pytest.fixture(params=["sqlite", "postgresql"])
def index_spec(request, tmp_path):
    """`--index` for each kind: sqlite, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return "sqlite"
    return request.getfixturevalue("postgres").new_database()


class Central:
    """A receiver on a folder and the given index; answers collected per box."""

    def __init__(self, folder, spec):
        self.index = open_index(spec, folder)
        self.answers: list[dict] = []
        self.receiver = Receiver(folder, self._publish, index=self.index)

    def _publish(self, topic: str, payload: bytes) -> None:
        self.answers.append(json.loads(payload))

    def send(self, message: tuple[str, bytes]) -> dict | None:
        before = len(self.answers)
        self.receiver.handle(*message)
        return self.answers[-1] if len(self.answers) > before else None

    def transfer(self, box: SimBox, rec) -> dict:
        assert self.send(box.init(rec, CHUNK))["status"] == "ok"
        for offset in protocol.offsets(rec.size, CHUNK):
            assert self.send(box.segment(rec, offset, CHUNK))["status"] == "ok"
        return self.send(box.fin(rec))


@pytest.fixture
def central(tmp_path, index_spec):
    running = Central(tmp_path / "central", index_spec)
    yield running
    running.index.close()


@pytest.fixture
def box(tmp_path):
    return SimBox("van-3", tmp_path / "box")


def test_custody_is_applied_once_and_gaps_and_forks_are_refused(central, box):
    for n in range(3):
        box.record("recording.viewed", f"r{n}")
    assert central.send(box.custody_message())["status"] == "ok"
    assert central.send(box.custody_message())["status"] == "ok"  # again: harmless
    held = central.index.query(
        "SELECT seq, hash FROM custody WHERE box_id = ? ORDER BY seq", ("van-3",)
    )
    assert [(r["seq"], r["hash"]) for r in held] == [(e["seq"], e["hash"]) for e in box.entries]
    assert central.index.one("SELECT seq FROM checkpoints")["seq"] == 3
    box.record("a"), box.record("b")
    gap = central.send(box.custody_message(after=4))  # entry 4 never sent
    assert (gap["status"], gap["next_seq"]) == ("gap", 4)
    forged = SimBox("van-3", box.folder, identity=box.identity)
    forged.record("rewritten")
    answer = central.send(forged.custody_message())
    assert answer["status"] == "rejected" and "history rewritten" in answer["reason"]
    assert central.index.one("SELECT custody_seq FROM boxes")["custody_seq"] == 3
    alarms = [r["message"] for r in central.index.query("SELECT message FROM alarms")]
    assert any("gap" in a for a in alarms) and any("history rewritten" in a for a in alarms)


def test_a_recording_is_indexed_once(central, box):
    rec = box.make_recording(200_000, X25519PrivateKey.generate().public_key())
    assert central.transfer(box, rec)["status"] == "complete"
    assert central.send(box.fin(rec))["status"] == "complete"
    again = central.send(box.init(rec, CHUNK))
    assert (again["status"], again["sha256"]) == ("complete", rec.sha256)
    rows = central.index.query("SELECT * FROM recordings")
    assert len(rows) == 1 and rows[0]["stored_sha256"] == rec.sha256
    assert rows[0]["size"] == rec.size and rows[0]["file"].endswith(f"{rec.id}.ebv")


def test_other_bytes_for_a_held_recording_are_refused(central, box):
    central_key = X25519PrivateKey.generate().public_key()
    rec = box.make_recording(50_000, central_key)
    central.transfer(box, rec)
    other = box.make_recording(50_000, central_key)
    other.id = rec.id  # the same recording id with other bytes, signed by the box
    other.manifest["recording"]["id"] = rec.id
    from edgebox.sync.protocol import sign

    other.signature = sign(other.manifest, box.identity)
    answer = central.send(box.init(other, CHUNK))
    assert answer["status"] == "rejected" and "other bytes" in answer["reason"]
    assert len(central.index.query("SELECT * FROM recordings")) == 1


def test_malformed_messages_are_logged_and_change_nothing(central, box):
    box.record("x")
    central.send(box.custody_message())
    central.send((protocol.meta_topic("van-3"), b"not json"))
    central.send((protocol.meta_topic("van-3"), protocol.encode({"type": "x", "box": "van-3"})))
    reasons = [r["reason"] for r in central.index.query("SELECT reason FROM rejections")]
    assert reasons == ["payload is not JSON", "metadata event without an id"]
    event = {"id": "e1", "type": "heartbeat", "box": "van-3", "identity": box.identity_b64}
    for _ in range(2):
        assert (
            central.send((protocol.meta_topic("van-3"), protocol.encode(event)))["status"] == "ok"
        )
    assert len(central.index.query("SELECT * FROM events WHERE box_id = 'van-3'")) == 1


def test_migrations_run_once(tmp_path, index_spec):
    first = open_index(index_spec, tmp_path)
    first.close()
    again = open_index(index_spec, tmp_path)
    try:
        names = [m.name for m in migrations._migrations]
        if isinstance(again, PgIndex):
            done = [r["name"] for r in again.query("SELECT name FROM _migrations ORDER BY name")]
        else:
            assert isinstance(again, Index)
            done = [r["name"] for r in again.query("SELECT name FROM _sqlite_migrations")]
        assert sorted(done) == sorted(names)
    finally:
        again.close()


def test_index_urls_with_a_password_are_refused():
    with pytest.raises(ConfigError, match="PGPASSWORD"):
        check_url("postgresql://central:secret@db:5432/central")
    with pytest.raises(ConfigError):
        check_url("mysql://central@db/central")
    assert dml("INSERT OR IGNORE INTO t (a) VALUES (?)") == (
        "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING"
    )


def test_central_run_refuses_clear_passwords_and_an_s3_store_without_work(tmp_path):
    from tests.conftest import run_cli

    clear = run_cli(
        "central", "run", "--broker", "mqtt://127.0.0.1:1", "--store", str(tmp_path / "s"),
        "--index", "postgresql://central:secret@127.0.0.1:1/central",
    )  # fmt: skip
    assert clear.returncode == 2 and "PGPASSWORD" in clear.stderr
    assert "secret" not in clear.stderr
    no_work = run_cli(
        "central", "run", "--broker", "mqtt://127.0.0.1:1", "--store", "s3://bucket/prefix"
    )
    assert no_work.returncode == 2 and "--work" in no_work.stderr
    assert not (tmp_path / "s").exists()


def test_a_stale_index_row_raises_an_alarm_and_the_file_is_taken_again(central, box, tmp_path):
    rec = box.make_recording(100_000, X25519PrivateKey.generate().public_key())
    assert central.transfer(box, rec)["status"] == "complete"
    stored = tmp_path / "central" / "boxes" / "van-3" / "recordings" / f"{rec.id}.ebv"
    stored.unlink()  # lost from the store behind the index's back
    assert central.send(box.fin(rec))["status"] == "unknown"  # not "complete": nothing held
    assert central.transfer(box, rec)["status"] == "complete"
    assert stored.read_bytes() == rec.path.read_bytes()
    assert len(central.index.query("SELECT * FROM recordings")) == 1
    alarms = [r["message"] for r in central.index.query("SELECT message FROM alarms")]
    assert any(a.startswith(f"stale index row: recording {rec.id}") for a in alarms)
