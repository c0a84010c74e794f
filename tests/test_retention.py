"""Retention with the clock moved: the 30-day boundary, holds, unsynced recordings, category rules,
and crypto-shredding (keys destroyed, file removed, custody entry, deletion sent upstream)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from edgebox import catalog, custody, retention, vault
from edgebox.box import Box
from edgebox.central.index import Index
from edgebox.clock import iso, parse_rfc3339, utcnow
from edgebox.config import load_config
from edgebox.errors import NotFound, VaultError
from edgebox.keys import x25519_private_from_file
from edgebox.recordings import data_key_for, seal_recording
from edgebox.scheduler import jobs_of
from edgebox.verify import verify_box
from tests.conftest import SECRET, enroll, make_box
from tests.sync_fixtures import central_workers, synced, upstream_env, wait_for
from tests.test_ingest import upload_all

KIB = 1 << 10
DAY = dt.timedelta(days=1)
RULES = {
    "EDGEBOX_RETENTION__FLOOR_DAYS": "30",
    "EDGEBOX_RETENTION__DEFAULT_DAYS": "30",
    "EDGEBOX_RETENTION__CATEGORY_DAYS": "incident=90,Traffic=45",
}


@pytest.fixture
def rbox(tmp_path):
    """A running box with 30 days by default, incident 90, traffic 45; jobs driven by hand."""
    config = make_box(tmp_path / "box")
    box = Box(load_config(config, environ=RULES)).start(("127.0.0.1", 0))
    jobs_of(box).pause()
    yield box
    box.stop()


@pytest.fixture
def rcam(rbox):
    """A camera paired with `rbox`."""
    return enroll(rbox.url, rbox.keys.tls_cert, rbox.pairing.new_code()["code"])


def record(camera, size: int = 64 * KIB, **metadata) -> tuple[str, bytes]:
    """Upload one recording of random bytes; returns (recording id, plaintext)."""
    data = os.urandom(size)
    response, _ = upload_all(camera, data, metadata={k: v for k, v in metadata.items() if v})
    return response.headers["EdgeBox-Recording-Id"], data


def set_state(box, recording_id: str, sync_state: str = "synced") -> None:
    """Fixture shortcut, not a mock: these tests are about the retention rules, so central's
    confirmation is written straight into the row. test_deletion_reaches_central and
    test_full_disk run the real sync instead."""
    with box.store.write() as db:
        db.execute("UPDATE recordings SET sync_state = ? WHERE id = ?", [sync_state, recording_id])


def hold(box, recording_id: str, on: bool = True) -> None:
    """Place or lift a legal hold the way a supervisor does (logged, queued for central)."""
    catalog.set_hold(box.store, recording_id, on, "investigation 2026-042", "user:supervisor")


def live(box) -> set[str]:
    """Ids of recordings whose vault file is still on the box."""
    return {r["id"] for r in retention.live_recordings(box.store)}


def deleted_ids(report) -> set[str]:
    return {item["recording_id"] for item in report.deleted}


def test_thirty_day_boundary(rbox, rcam):
    t0 = parse_rfc3339(iso(utcnow() - dt.timedelta(minutes=5)))
    started, _ = record(rcam, started_at=iso(t0))
    received, _ = record(rcam)  # no started_at: age counts from received_at
    for rid in (started, received):
        set_state(rbox, rid)
    received_at = parse_rfc3339(
        rbox.store.one("SELECT received_at FROM recordings WHERE id = ?", (received,))[
            "received_at"
        ]
    )

    for moment in (t0 + 29 * DAY + dt.timedelta(hours=23), t0 + 30 * DAY - dt.timedelta(seconds=1)):
        report = retention.sweep(rbox, moment)
        assert report.deleted == [] and report.kept == {retention.KEEP_YOUNG: 2}

    report = retention.sweep(rbox, t0 + 30 * DAY)
    assert deleted_ids(report) == {started}
    assert report.deleted[0]["rule"]["days"] == 30
    assert report.kept == {retention.KEEP_YOUNG: 1}

    assert retention.sweep(rbox, received_at + 30 * DAY - dt.timedelta(seconds=1)).deleted == []
    assert deleted_ids(retention.sweep(rbox, received_at + 30 * DAY)) == {received}
    assert live(rbox) == set()
    entry = rbox.store.one(
        "SELECT details FROM custody WHERE subject = ? AND event = 'recording.deleted'",
        (received,),
    )
    assert json.loads(entry["details"])["age_from"] == "received_at"


def test_holds_and_unsynced_recordings_are_kept_past_their_date(rbox, rcam):
    t0 = utcnow()
    ids = {name: record(rcam, started_at=iso(t0))[0] for name in ("held", "pending", "rejected")}
    ids["sending"] = record(rcam, started_at=iso(t0))[0]
    set_state(rbox, ids["held"], "synced")
    hold(rbox, ids["held"])
    set_state(rbox, ids["rejected"], "rejected")
    set_state(rbox, ids["sending"], "sending")

    report = retention.sweep(rbox, t0 + 400 * DAY)
    assert report.deleted == []
    assert report.kept == {retention.KEEP_HOLD: 1, retention.KEEP_UNSYNCED: 3}
    past = {item["recording_id"]: item["reason"] for item in report.kept_past_rule}
    assert past == {
        ids["held"]: retention.KEEP_HOLD,
        ids["pending"]: retention.KEEP_UNSYNCED,
        ids["rejected"]: retention.KEEP_UNSYNCED,
        ids["sending"]: retention.KEEP_UNSYNCED,
    }
    assert live(rbox) == set(ids.values())
    assert all(rbox.uploads.vault_path(rid).exists() for rid in ids.values())

    # A hold on an unsynced recording: released, it still waits for central.
    hold(rbox, ids["pending"])
    hold(rbox, ids["held"], on=False)  # the supervisor lifts the hold
    assert deleted_ids(retention.sweep(rbox, t0 + 400 * DAY)) == {ids["held"]}
    set_state(rbox, ids["pending"], "synced")  # central confirmed it at last...
    assert retention.sweep(rbox, t0 + 400 * DAY).kept == {
        retention.KEEP_HOLD: 1,
        retention.KEEP_UNSYNCED: 2,
    }
    hold(rbox, ids["pending"], on=False)  # ...and the hold is lifted
    assert deleted_ids(retention.sweep(rbox, t0 + 400 * DAY)) == {ids["pending"]}
    assert live(rbox) == {ids["rejected"], ids["sending"]}


def test_category_rules(rbox, rcam):
    t0 = utcnow()
    ids = {
        "incident": record(rcam, started_at=iso(t0), category="incident")[0],
        "traffic": record(rcam, started_at=iso(t0), category="traffic")[0],
        "TRAFFIC ": record(rcam, started_at=iso(t0), category="TRAFFIC ")[0],
        "other": record(rcam, started_at=iso(t0), category="patrol")[0],
        "none": record(rcam, started_at=iso(t0))[0],
    }
    for rid in ids.values():
        set_state(rbox, rid)

    assert retention.sweep(rbox, t0 + 30 * DAY - dt.timedelta(seconds=1)).deleted == []
    assert deleted_ids(retention.sweep(rbox, t0 + 30 * DAY)) == {ids["other"], ids["none"]}
    assert retention.sweep(rbox, t0 + 45 * DAY - dt.timedelta(seconds=1)).deleted == []
    report = retention.sweep(rbox, t0 + 45 * DAY)
    assert deleted_ids(report) == {ids["traffic"], ids["TRAFFIC "]}
    assert {item["rule"]["days"] for item in report.deleted} == {45}
    assert retention.sweep(rbox, t0 + 90 * DAY - dt.timedelta(seconds=1)).deleted == []
    assert deleted_ids(retention.sweep(rbox, t0 + 90 * DAY)) == {ids["incident"]}


def test_no_rule_goes_below_the_floor():
    # The config refuses such values; the sweep applies the floor again behind it.
    policy = retention.Policy(floor_days=30, default_days=7, category_days={"quick": 2})
    assert policy.days_for("quick") == 30
    assert policy.days_for(None) == 30
    assert retention.Policy(floor_days=30, default_days=31).days_for("x") == 31


def test_shred_destroys_every_key_then_the_file(rbox, rcam, tmp_path):
    t0 = utcnow()
    rid, data = record(rcam, size=2 * (1 << 20) + 5, started_at=iso(t0))
    set_state(rbox, rid)
    path = rbox.uploads.vault_path(rid)
    central = x25519_private_from_file(rbox.config.base_dir / "central-demo" / "central.key")
    key = data_key_for(path, central, role="central")
    assert vault.Reader(path, key).verify() == hashlib.sha256(data).hexdigest()

    # The shred step alone, on a copy: afterwards no stanza is left and central's key fails.
    copy = tmp_path / "copy.ebv"
    shutil.copyfile(path, copy)
    shredded_hash = retention.destroy_keys(copy)
    assert vault.read_header(copy).stanzas == []
    with pytest.raises(VaultError, match="no key stanza for central:"):
        data_key_for(copy, central, role="central")

    row = rbox.store.one("SELECT * FROM recordings WHERE id = ?", (rid,))
    report = retention.sweep(rbox, t0 + 31 * DAY)
    assert deleted_ids(report) == {rid}
    assert not path.exists()
    assert list(rbox.uploads.vault_dir.iterdir()) == []  # no tomb, no header journal left
    after = rbox.store.one("SELECT * FROM recordings WHERE id = ?", (rid,))
    assert retention.is_deleted(after) and after["stored_sha256"] == row["stored_sha256"]
    assert retention.deletion_problems(rbox, after) == []

    entry = rbox.store.one(
        "SELECT * FROM custody WHERE subject = ? ORDER BY seq DESC LIMIT 1", (rid,)
    )
    details = json.loads(entry["details"])
    assert entry["event"] == "recording.deleted" and entry["actor"] == "box"
    assert details["reason"] == retention.REASON_RETENTION
    assert details["evidence_sha256"] == hashlib.sha256(data).hexdigest()
    assert details["stored_sha256"] == row["stored_sha256"]
    # The file's last state before removal was the stanza-less header: same bytes as the copy.
    assert details["shredded_sha256"] == shredded_hash
    chain = custody.verify_chain(rbox.store, rbox.config.box.box_id, rbox.keys.identity_public())
    assert chain.ok, chain.problems
    report = verify_box(rbox)
    assert report.ok, report.problems
    assert rbox.status()["recordings"]["deleted"] == 1

    queued = rbox.store.one(
        "SELECT payload FROM outbox WHERE kind = 'meta' AND ref = 'recording.deleted'"
    )
    body = json.loads(queued["payload"])
    assert body["recording"] == rid and body["custody_seq"] == entry["seq"]
    assert body["evidence_sha256"] == details["evidence_sha256"]

    # Nothing left to delete: a second sweep changes nothing.
    assert retention.sweep(rbox, t0 + 31 * DAY).deleted == []


def test_a_seal_and_a_shred_of_one_recording_never_interleave(rbox, rcam):
    """The uplink seals a confirmed recording when the link runs dry; the retention or
    watermark job may shred the same recording at that moment. Both rewrite its header (with
    a journal beside it): one must finish before the other starts. Either the seal comes
    first, or it finds the recording deleted; the shred always succeeds, and the custody log
    never records a seal after the deletion."""
    t0 = utcnow()
    rids = []
    for _ in range(12):
        rid, _ = record(rcam, size=1 << 20, started_at=iso(t0))
        set_state(rbox, rid)
        rids.append(rid)
    outcomes = []
    for rid in rids:
        start = threading.Barrier(2)
        seal_outcome, shred_outcome = [], []

        def seal(rid=rid, start=start, out=seal_outcome):
            start.wait()
            try:
                out.append(seal_recording(rbox, rid)["sealed"])
            except NotFound as exc:
                out.append(exc.message)

        def shred(rid=rid, start=start, out=shred_outcome):
            start.wait()
            try:
                out.append(retention.shred(rbox, rid, retention.REASON_RETENTION, t0 + 31 * DAY))
            except OSError as exc:
                out.append(exc)

        threads = [threading.Thread(target=seal), threading.Thread(target=shred)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert isinstance(shred_outcome[0], dict), shred_outcome
        assert shred_outcome[0]["recording_id"] == rid
        assert seal_outcome[0] in (1, f"recording {rid} was deleted"), seal_outcome
        outcomes.append(seal_outcome[0])
        events = [
            r["event"]
            for r in rbox.store.query(
                "SELECT event FROM custody WHERE subject = ? ORDER BY seq", (rid,)
            )
        ]
        assert events[-1] == "recording.deleted", events
    assert list(rbox.uploads.vault_dir.iterdir()) == []  # no file, tomb or journal left
    chain = custody.verify_chain(rbox.store, rbox.config.box.box_id, rbox.keys.identity_public())
    assert chain.ok, chain.problems
    report = verify_box(rbox)
    assert report.ok, report.problems


@pytest.mark.parametrize("keys_destroyed", [False, True])
def test_a_shred_cut_short_is_completed(rbox, rcam, keys_destroyed):
    t0 = utcnow()
    rid, _ = record(rcam, started_at=iso(t0))
    set_state(rbox, rid)
    path = rbox.uploads.vault_path(rid)
    row = rbox.store.one("SELECT * FROM recordings WHERE id = ?", (rid,))
    # As if the box died after moving the file aside (and, in the second case, destroying
    # its keys), before the deletion committed: the next sweep destroys the keys if they are
    # still there, records the deletion and removes the leftover. The live path never holds
    # a keyless file: the file is moved aside before its keys go.
    tomb = path.with_name(path.name + retention.TOMB_SUFFIX)
    os.replace(path, tomb)
    keyless = retention.destroy_keys(tomb) if keys_destroyed else None
    retention.sweep(rbox, t0 + DAY)
    assert not tomb.exists()
    assert retention.is_deleted(rbox.store.one("SELECT * FROM recordings WHERE id = ?", (rid,)))
    entry = rbox.store.one(
        "SELECT details FROM custody WHERE subject = ? AND event = 'recording.deleted'", (rid,)
    )
    details = json.loads(entry["details"])
    assert details["reason"] == "interrupted_shred"
    assert details["shredded_sha256"] != row["stored_sha256"]  # the keys went before the file
    assert keyless is None or details["shredded_sha256"] == keyless
    assert verify_box(rbox).ok


# A shred in a process of its own that kills itself (SIGKILL) right after the file left its
# place, inside the open write transaction: what a kill -9 of the box mid-shred leaves.
SHRED_KILLED = """
import os, signal, sys
from pathlib import Path
from edgebox import retention
from edgebox.box import Box
from edgebox.clock import utcnow
from edgebox.config import load_config

box = Box(load_config(Path(sys.argv[1])))
retention.destroy_keys = lambda path: os.kill(os.getpid(), signal.SIGKILL)
retention.shred(box, sys.argv[2], "test", utcnow(), check=lambda row, policy, now: {})
"""


def test_a_shred_cut_short_by_a_kill_is_completed_as_the_box_starts(tmp_path):
    """The soak found it: a kill -9 mid-shred left the row live and its file aside, and
    `edgebox verify` said "file missing" for every cycle until a sweep ran (hourly, or under
    disk pressure). Now the box completes the shred as it starts."""
    config = make_box(tmp_path / "box")
    box = Box(load_config(config)).start(("127.0.0.1", 0))
    try:
        camera = enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"])
        rid, _ = record(camera, started_at=iso())
        set_state(box, rid)
        path = box.uploads.vault_path(rid)
    finally:
        box.stop()
    killed = subprocess.run(
        [sys.executable, "-c", SHRED_KILLED, str(config), rid], capture_output=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    tomb = path.with_name(path.name + retention.TOMB_SUFFIX)
    assert tomb.exists() and not path.exists()

    restarted = Box(load_config(config)).start(("127.0.0.1", 0))
    try:
        assert not tomb.exists()
        row = restarted.store.one("SELECT * FROM recordings WHERE id = ?", (rid,))
        assert retention.is_deleted(row)
        entry = restarted.store.one(
            "SELECT details FROM custody WHERE subject = ? AND event = 'recording.deleted'", (rid,)
        )
        assert json.loads(entry["details"])["reason"] == "interrupted_shred"
        report = verify_box(restarted)
        assert report.ok, report.problems
    finally:
        restarted.stop()


def test_a_hold_placed_during_a_cut_short_shred_keeps_the_recording(rbox, rcam):
    t0 = utcnow()
    rid, data = record(rcam, started_at=iso(t0))
    set_state(rbox, rid)
    path = rbox.uploads.vault_path(rid)
    before = path.read_bytes()
    # The box died after moving the file aside, before destroying its keys; a supervisor
    # placed a hold before the next sweep. The hold wins: the file goes back, whole.
    os.replace(path, path.with_name(path.name + retention.TOMB_SUFFIX))
    catalog.set_hold(rbox.store, rid, True, "court order", "user:supervisor")
    retention.sweep(rbox, t0 + 31 * DAY)
    assert path.read_bytes() == before and live(rbox) == {rid}
    assert rbox.store.one("SELECT 1 FROM custody WHERE event = 'recording.deleted'") is None
    key = data_key_for(path, rbox.keys.unlock_review(SECRET))
    assert vault.Reader(path, key).verify() == hashlib.sha256(data).hexdigest()
    assert verify_box(rbox).ok


def test_a_missing_file_is_reported_not_recorded_as_deleted(rbox, rcam):
    t0 = utcnow()
    rid, _ = record(rcam, started_at=iso(t0))
    set_state(rbox, rid)
    rbox.uploads.vault_path(rid).unlink()  # lost by damage, not by retention
    report = retention.sweep(rbox, t0 + 31 * DAY)
    assert report.deleted == [] and report.failed[0]["recording_id"] == rid
    assert live(rbox) == {rid}
    assert rbox.store.one("SELECT 1 FROM custody WHERE event = 'recording.deleted'") is None


def test_deletion_reaches_central(tmp_path, broker, pki):
    store = tmp_path / "central"
    workers = central_workers(store, broker, pki, count=1)
    config = make_box(tmp_path / "box", box_id="van-ret")
    env = {**upstream_env(broker, pki, "van-ret"), **RULES}
    box = Box(load_config(config, environ=env)).start(("127.0.0.1", 0))
    jobs_of(box).pause()
    index = Index(store)
    try:
        camera = enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"], "CAM-R")
        ids = {record(camera, size=300 * KIB)[0] for _ in range(2)}
        wait_for(lambda: synced(box), what="recordings synced")
        kept = record(camera, size=10 * KIB, category="incident")[0]  # 90 days
        wait_for(lambda: synced(box), what="third recording synced")

        report = retention.sweep(box, utcnow() + 31 * DAY)
        assert deleted_ids(report) == ids and live(box) == {kept}
        for rid in ids:
            entry = box.store.one(
                "SELECT details FROM custody WHERE subject = ? AND event = 'recording.deleted'",
                (rid,),
            )
            synced_seq = box.store.one(
                "SELECT seq FROM custody WHERE subject = ? AND event = 'recording.synced'",
                (rid,),
            )["seq"]
            assert json.loads(entry["details"])["central_confirmed_seq"] == synced_seq

        def central_knows() -> bool:
            events = index.query(
                "SELECT body FROM events WHERE box_id = 'van-ret' AND type = 'recording.deleted'"
            )
            trail = index.query(
                "SELECT subject FROM custody WHERE box_id = 'van-ret' "
                "AND event = 'recording.deleted'"
            )
            return {json.loads(e["body"])["recording"] for e in events} == ids and {
                t["subject"] for t in trail
            } == ids

        wait_for(central_knows, what="central holds the deletions and their custody entries")
        held = index.query("SELECT recording_id FROM recordings WHERE box_id = 'van-ret'")
        assert {r["recording_id"] for r in held} == ids | {kept}  # central still has them all
    finally:
        index.close()
        box.stop()
        for w in workers:
            w.stop()
