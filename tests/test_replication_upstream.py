"""The Litestream replica travels upstream: central keeps a restorable copy per box, and a box is
rebuilt from it. Real Litestream, real Mosquitto, real boxes and central workers."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from edgebox import custody
from edgebox.box import Box
from edgebox.central.index import Index
from edgebox.central.replicas import ReplicaStore
from edgebox.config import load_config
from edgebox.db import Store
from edgebox.errors import ConfigError
from edgebox.replication import config as lsconf
from edgebox.replication import fileset as replication_set
from edgebox.replication.config import MARKER_NAME
from edgebox.replication.litestream import claim_replica
from edgebox.sync import protocol
from edgebox.sync import state as sync_state
from tests.conftest import BoxProcess, enroll, make_box, run_cli
from tests.replica_fixtures import (
    CHURN,
    LAYERED,
    BoxVoice,
    central_rows,
    litestream,
    restore_rows,
)
from tests.sync_fixtures import central_holds, central_workers, upstream_env, wait_for
from tests.test_replication import check_restored, fresh_copy, ingest, pair

MIB = 1 << 20
SHIP = {"EDGEBOX_REPLICATION__SHIP_INTERVAL_SECONDS": "1"}
NO_SUPERVISOR = {"EDGEBOX_REPLICATION__ENABLED": "false"}


def recordings(config_path: Path) -> dict:
    """The box's recordings by id, read with the real CLI (works while the box runs)."""
    listed = run_cli("recordings", "list", "--json", config=config_path)
    return {row["id"]: row for row in json.loads(listed.stdout)}


def test_box_killed_mid_transfer_is_rebuilt_from_central_copy(tmp_path, broker, pki):
    store = tmp_path / "central"
    config_path = make_box(tmp_path / "box", box_id="van-5")
    config = load_config(config_path)
    env = {**upstream_env(broker, pki, "van-5", bandwidth_bytes_per_second=128 * 1024), **SHIP}
    workers = central_workers(store, broker, pki)
    box = BoxProcess(config_path, env=env).start()
    try:
        camera = pair(box)
        first, _ = ingest(camera, 200_000)
        wait_for(lambda: recordings(config_path)[first]["sealed"] == 1, what="first one sealed")
        wait_for(
            lambda: (
                (rows := central_rows(config, store, "van-5", tmp_path / "look"))
                and rows.get(first, {}).get("sealed") == 1
            ),
            what="central's copy to know the first recording is sealed",
        )
        # A second recording crawls upstream; replica rounds go in between its windows.
        second, data = ingest(camera, 4 * MIB)
        wait_for(
            lambda: (
                (rows := central_rows(config, store, "van-5", tmp_path / "look"))
                and rows.get(second, {}).get("sealed") == 0
            ),
            what="central's copy to hold the recording still in transfer",
        )
        for worker in workers:
            worker.stop()
        workers = []
        assert recordings(config_path)[second]["sync_state"] in ("pending", "sending")
        assert second not in central_holds(store)
        box.kill9()
    finally:
        box.stop()
        for worker in workers:
            worker.stop()

    shown = run_cli("central", "replica", "van-5", "--store", str(store), "--json")
    assert shown.returncode == 0, shown.stderr
    copy = json.loads(shown.stdout)
    assert copy["path"] == str(store / "replicas" / "van-5" / "current")
    fresh = fresh_copy(config_path, tmp_path / "replacement")
    restored = run_cli("restore", "--from", copy["path"], "--json", config=fresh)
    assert restored.returncode == 0, restored.stderr
    report = json.loads(restored.stdout)
    assert report["recordings"] == 2 and report["orphan_vault_files"] == []
    check_restored(fresh, {second: data}, tmp_path / "clip.mp4")
    rebuilt = recordings(fresh)
    assert rebuilt[first]["sealed"] == 1 and rebuilt[first]["sync_state"] == "synced"


def test_central_copy_follows_compaction_and_retention(tmp_path, broker, pki):
    """Litestream compacts, takes new snapshots and deletes old files while the box ships: every
    set central makes current restores, and files the box dropped leave central's copy."""
    store = tmp_path / "central"
    config_path = make_box(tmp_path / "box", box_id="van-6")
    env = {**upstream_env(broker, pki, "van-6"), **SHIP, **NO_SUPERVISOR}
    config = load_config(config_path, environ=env)
    claim_replica(config)  # what the box's own supervisor does before it replicates
    workers = central_workers(store, broker, pki)
    seen: list[dict] = []
    with litestream(config, CHURN):
        box = Box(config).start(("127.0.0.1", 0))
        try:
            camera = enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"])
            ingest(camera, 100_000)
            for _ in range(60):
                box.checkpoint()
                txid = int(seen[-1]["txid"], 16) if seen else 0
                seen.append(
                    wait_for(
                        lambda t=txid: (
                            (c := ReplicaStore(store, "van-6").current())
                            and int(c["txid"], 16) > t
                            and c
                        ),
                        what="central's copy to move on",
                    )
                )
                dropped = set(seen[0]["files"]) - set(seen[-1]["files"])
                snapshots = {p for s in seen for p in s["files"] if p.startswith("ltx/9/")}
                if any(p.startswith("ltx/0/") for p in dropped) and len(snapshots) >= 3:
                    break
            else:
                pytest.fail(f"no compaction or retention seen at central: {seen[-1]['files']}")
            wait_for(
                lambda: (
                    box.store.one("SELECT sync_state FROM recordings")["sync_state"] == "synced"
                ),
                what="the recording synced",
            )
            box.checkpoint()
            local = replication_set.plan(replication_set.scan(lsconf.replica_dir(config)))
            final = wait_for(
                lambda: (
                    (c := ReplicaStore(store, "van-6").current())
                    and int(c["txid"], 16) >= local["txid"]
                    and c
                ),
                what="central's copy to catch up with the replica",
            )
            shown = wait_for(
                lambda: (
                    (r := sync_state.report(box.store)["replica"])
                    and r["set"] >= final["seq"]
                    and r
                ),
                what="the box to note central's set",
            )
            assert shown["last_error"] is None and int(shown["txid"], 16) >= local["txid"]
        finally:
            box.stop()
            for worker in workers:
                worker.stop()
    assert [s["seq"] for s in seen] == sorted(s["seq"] for s in seen)
    assert all(replication_set.plan(s["files"])["restorable"] for s in seen)
    assert MARKER_NAME in final["files"]
    on_disk = {
        str(p.relative_to(final["path"])) for p in Path(final["path"]).rglob("*") if p.is_file()
    }
    assert on_disk == set(final["files"])
    sets = sorted(p.name for p in (store / "replicas" / "van-6" / "sets").iterdir() if p.is_dir())
    assert len(sets) <= 2  # older sets were dropped once a newer one was in place

    fresh = fresh_copy(config_path, tmp_path / "replacement")
    restored = run_cli(
        "restore", "--from", str(store / "replicas" / "van-6" / "current"), config=fresh
    )
    assert restored.returncode == 0, restored.stderr
    verified = run_cli("verify", "--json", config=fresh)
    assert verified.returncode == 0, verified.stdout
    assert len(recordings(fresh)) == 1


def test_ship_interval_is_a_checked_setting(tmp_path):
    config_path = make_box(tmp_path / "box")
    assert load_config(config_path).replication.ship_interval_seconds == 60
    off = {"EDGEBOX_REPLICATION__SHIP_INTERVAL_SECONDS": "0"}
    assert load_config(config_path, environ=off).replication.ship_interval_seconds == 0
    with pytest.raises(ConfigError) as refused:
        load_config(config_path, environ={"EDGEBOX_REPLICATION__SHIP_INTERVAL_SECONDS": "-5"})
    assert refused.value.field == "replication.ship_interval_seconds"


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    """A box and a real replica: one snapshot, then level 0, 1 and 2 files after it."""
    folder = tmp_path_factory.mktemp("layered")
    config = load_config(make_box(folder / "box", box_id="van-8"), environ=NO_SUPERVISOR)
    claim_replica(config)
    replica = lsconf.replica_dir(config)
    with litestream(config, LAYERED):
        wait_for(lambda: lsconf.position(replica), what="the first snapshot")
        store = Store(config.data_dir / "box.db")
        try:
            for n in range(40):
                custody.record(store, "operator.note", "test", None, {"n": n})
                before = int(lsconf.position(replica)["txid"], 16)
                wait_for(
                    lambda b=before: int(lsconf.position(replica)["txid"], 16) > b,
                    what="the write to reach the replica",
                )
                levels = {level for level, *_ in lsconf.ltx_files(replica)}
                if {0, 1, 2, 9} <= levels and n >= 8:
                    break
        finally:
            store.close()
    return config


def test_restorability_check_agrees_with_litestream(layered, tmp_path):
    replica = lsconf.replica_dir(layered)
    files = sorted(replication_set.scan(replica))
    levels = {p: replication_set.txids(p) for p in files if replication_set.txids(p)}
    snapshot_end = max(t[2] for t in levels.values() if t[0] == 9)
    newest = replication_set.plan(files)["txid"]
    assert newest > snapshot_end + 1  # transactions after the snapshot, in levels 0-2
    middle = (snapshot_end + newest) // 2 + 1
    gapped = [
        p
        for p in files
        if not (p in levels and levels[p][0] != 9 and levels[p][1] <= middle <= levels[p][2])
    ]
    rng = random.Random(11)
    subsets = [files, gapped] + [[p for p in files if rng.random() < 0.8] for _ in range(30)]
    outcomes = []
    for n, subset in enumerate(subsets):
        copy = tmp_path / f"subset{n}"
        for path in subset:
            (copy / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(replica / path, copy / path)
        ours = replication_set.plan(subset)
        theirs = restore_rows(layered, copy, tmp_path / "probe.db")
        assert ours["restorable"] == (theirs is not None), (subset, ours)
        outcomes.append(ours["restorable"])
    assert outcomes[:2] == [True, False]  # the whole replica restores; one with a gap does not


def replica_files(config) -> dict:
    """The box's replica as a set, and the bytes of each file."""
    folder = lsconf.replica_dir(config)
    files = replication_set.scan(folder)
    return files, {p: (folder / p).read_bytes() for p in files}


def stored_files(store: Path) -> dict:
    """Every file central stores, with its bytes (its index, which logs refusals, aside)."""
    return {
        p: p.read_bytes()
        for p in store.rglob("*")
        if p.is_file() and not p.name.startswith("central.db")
    }


def test_a_replica_path_that_escapes_is_refused_and_nothing_is_written(layered, tmp_path):
    store = tmp_path / "central"
    voice = BoxVoice(store, layered)
    files, data = replica_files(layered)
    txid = replication_set.plan(files)["txid"]
    try:
        for path in files:
            assert voice.send_file(path, data[path])["status"] == "complete"
        assert voice.commit(files, txid)["status"] == "ok"
        before = stored_files(store)
        snapshot = next(p for p in files if p.startswith("ltx/9/"))
        tid, answer = voice.init("../../../etc/cron.d/evil", data[snapshot])
        assert answer["status"] == "rejected"
        assert "escapes the replica folder" in answer["reason"]
        assert not (store / "transfers" / "van-8" / tid).exists()
        for bad in ("ltx/0/../../../../evil.ltx", "/tmp/evil.ltx", "ltx/0/x.ltx.tmp"):
            evil = {**files, bad: files[snapshot]}
            answer = voice.commit(evil, txid)
            assert answer["status"] == "rejected", answer
            assert bad[:20] in answer["reason"]
        assert stored_files(store) == before
        assert not list(tmp_path.glob("**/evil*")) and not Path("/tmp/evil.ltx").exists()
        index = Index(store)
        try:
            reasons = [r["reason"] for r in index.query("SELECT reason FROM rejections")]
            alarms = [r["message"] for r in index.query("SELECT message FROM alarms")]
        finally:
            index.close()
        assert len(reasons) == 4 and all("replica" in r for r in reasons)
        assert len(alarms) == 4
        assert ReplicaStore(store, "van-8").current()["seq"] == 1
        unknown = run_cli("central", "replica", "van-0", "--store", str(store))
        assert unknown.returncode == 2
        assert unknown.stderr.strip() == "error: central holds no replica of box van-0"
        occupied = tmp_path / "occupied"
        occupied.mkdir()
        (occupied / "notes.txt").write_text("keep me")
        refused = run_cli(
            "central", "replica", "van-8", "--store", str(store), "--export", str(occupied)
        )
        assert refused.returncode == 2 and "not an empty folder" in refused.stderr
        assert [p.name for p in occupied.iterdir()] == ["notes.txt"]
        exported = run_cli(
            "central", "replica", "van-8", "--store", str(store), "--export", str(tmp_path / "x")
        )
        assert exported.returncode == 0, exported.stderr
        assert restore_rows(layered, tmp_path / "x", tmp_path / "probe.db") is not None
    finally:
        voice.close()


def test_flipped_bytes_in_transit_and_at_central_are_sent_again(layered, tmp_path):
    store = tmp_path / "central"
    voice = BoxVoice(store, layered)
    files, data = replica_files(layered)
    txid = replication_set.plan(files)["txid"]
    snapshot = next(p for p in files if p.startswith("ltx/9/"))
    original = data[snapshot]
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    try:
        # In transit, caught by the segment's hash: central asks for that segment again.
        tid, answer = voice.init(snapshot, original)
        assert answer["status"] == "ok"
        wrong = voice.say(
            protocol.segment_topic("van-8", tid, 0, "0" * 64), original[: voice.chunk]
        )
        assert wrong["status"] == "resend"
        # Flipped before the segment was hashed: only the whole-file hash sees it.
        for offset in protocol.offsets(len(original), voice.chunk):
            part = bytes(flipped[offset : offset + voice.chunk])
            assert voice.segment(tid, offset, part)["status"] == "ok"
        assert voice.fin(tid, original)["status"] == "resend_all"
        assert voice.send_file(snapshot, original)["status"] == "complete"
        for path in files:
            assert voice.send_file(path, data[path])["status"] == "complete"

        # At rest at central, before the set: the set is refused until the file comes again.
        waiting = store / "replicas" / "van-8" / "incoming" / files[snapshot]["sha256"]
        damaged = bytearray(waiting.read_bytes())
        damaged[7] ^= 0x80
        waiting.write_bytes(bytes(damaged))
        answer = voice.commit(files, txid)
        assert answer == {**answer, "status": "missing", "paths": [snapshot]}
        assert ReplicaStore(store, "van-8").current() is None
        assert voice.send_file(snapshot, original)["status"] == "complete"
        assert voice.commit(files, txid)["status"] == "ok"
        current = store / "replicas" / "van-8" / "current"
        assert restore_rows(layered, current, tmp_path / "probe.db") is not None

        # At rest in the current set: `check` marks it; the next set brings it again.
        stored = current / snapshot
        damaged = bytearray(stored.read_bytes())
        damaged[11] ^= 0x04
        stored.write_bytes(bytes(damaged))
        shown = run_cli("central", "replica", "van-8", "--store", str(store), "--check", "--json")
        assert shown.returncode == 1, shown.stderr
        assert json.loads(shown.stdout)["damaged"] == [snapshot]
        compacted = next(  # as after Litestream's retention: one level-0 file fewer, same txid
            {q: e for q, e in files.items() if q != p}
            for p in sorted(files)
            if p.startswith("ltx/0/")
            and replication_set.plan([q for q in files if q != p])
            == {**replication_set.plan(files)}
        )
        answer = voice.commit(compacted, txid)
        assert answer == {**answer, "status": "missing", "paths": [snapshot]}
        assert voice.send_file(snapshot, original)["status"] == "complete"
        assert voice.commit(compacted, txid)["status"] == "ok"
        assert restore_rows(layered, current, tmp_path / "probe.db") is not None
        assert not (current / sorted(set(files) - set(compacted))[0]).exists()

        # A set that would take the same replica back to an older transaction is refused.
        older = {
            p: e for p, e in files.items() if (replication_set.txids(p) or (0, 0, 0))[2] < txid
        }
        assert replication_set.plan(older)["restorable"]
        answer = voice.commit(older, replication_set.plan(older)["txid"])
        assert answer["status"] == "rejected" and "goes back" in answer["reason"]
        assert ReplicaStore(store, "van-8").current()["files"] == compacted
    finally:
        voice.close()


def test_a_file_central_holds_under_another_path_is_not_missing(layered, tmp_path):
    """Found by the soak (bench/soak.py): Litestream's compaction leaves byte-identical files
    at two levels (ltx/1/A and ltx/2/A). Central answered `complete` to the new path's
    init, since it held those bytes, and then `missing` to the set naming that path, so the
    box sent the file again and again and its replica never reached central."""
    store = tmp_path / "central"
    voice = BoxVoice(store, layered)
    files, data = replica_files(layered)
    txid = replication_set.plan(files)["txid"]
    for path in files:
        assert voice.send_file(path, data[path])["status"] == "complete"
    assert voice.commit(files, txid)["status"] == "ok"
    # A compacted file copied one level up under the same name, where that name is free
    # (which files Litestream has compacted by now depends on its timing).
    source, twin, moved = next(
        (p, twin, moved)
        for p in sorted(files)
        if p.startswith(("ltx/1/", "ltx/2/"))
        for twin in [f"ltx/{int(p.split('/')[1]) + 1}/{p.rsplit('/', 1)[1]}"]
        if twin not in files
        for moved in [{**{q: e for q, e in files.items() if q != p}, twin: files[p]}]
        if replication_set.plan(moved)["restorable"]
    )
    _, answer = voice.init(twin, data[source])
    assert answer["status"] == "complete"  # central holds these bytes already
    answer = voice.commit(moved, txid)
    assert answer["status"] == "ok", answer
    copy = ReplicaStore(store, "van-8").current()
    assert (Path(copy["path"]) / twin).read_bytes() == data[source]
