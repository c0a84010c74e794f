"""Sync under real faults: broker restarts and flapping, kill -9 of a central worker and of the box,
hostile messages, a long offline backlog, refused credentials. Nothing is lost or duplicated."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections import Counter

from edgebox.central.files import segments_present
from edgebox.central.index import Index
from edgebox.sync import protocol
from edgebox.sync.transfer import FIN_TRIES
from edgebox.verify import verify_box
from tests.brokers import cert_client
from tests.conftest import BoxProcess, enroll, make_box, run_cli
from tests.sync_fixtures import (
    alarms,
    box_and_central,
    central_holds,
    central_workers,
    offline_box,
    sealed,
    start_box,
    synced,
    upstream_env,
    wait_for,
)
from tests.test_sync import fill

MIB = 1 << 20
SLOW = {"bandwidth_bytes_per_second": 2 * MIB}


def states(box) -> list[str]:
    """sync_state of every recording, oldest first."""
    return [
        r["sync_state"]
        for r in box.store.query("SELECT sync_state FROM recordings ORDER BY received_at")
    ]


def check_central_matches(box, store) -> None:
    """Central holds exactly the box's recordings, once each, with the confirmed hashes."""
    held = central_holds(store)
    recs = box.store.query("SELECT id FROM recordings")
    assert set(held) == {r["id"] for r in recs}
    for rec in recs:
        confirmed = box.store.one(
            "SELECT details FROM custody WHERE subject = ? AND event = 'recording.synced'",
            (rec["id"],),
        )
        assert json.loads(confirmed["details"])["stored_sha256"] == held[rec["id"]]
    index = Index(store)
    try:
        dupes = index.query(
            "SELECT recording_id, COUNT(*) AS n FROM recordings "
            "GROUP BY box_id, recording_id HAVING n > 1"
        )
    finally:
        index.close()
    assert dupes == []


def test_broker_stopped_mid_transfer(tmp_path, broker, pki):
    store = tmp_path / "central"
    workers = central_workers(store, broker, pki)
    box = start_box(tmp_path / "box", broker, pki, "van-1", **SLOW)
    try:
        fill(box, 3, 3 * MIB)
        wait_for(
            lambda: (
                box.uplink
                and box.store.one("SELECT 1 FROM recordings WHERE sync_state = 'sending'")
            ),
            what="a transfer under way",
        )
        time.sleep(0.5)
        broker.stop()
        time.sleep(2)
        assert "synced" not in states(box)[1:]  # nothing confirmed while central is unreachable
        broker.start()
        wait_for(lambda: synced(box), timeout=90, what="all synced after the broker returned")
        check_central_matches(box, store)
    finally:
        box.stop()
        for w in workers:
            w.stop()


def test_central_answers_every_segment_at_qos_1(tmp_path, broker, pki):
    """A box back within a moment after a broker restart may not notice it was away and waits
    for the answers to the segments it had sent: only at QoS 1 does the broker keep them
    in the box's session (at QoS 0 they were lost, and the box waited its ack timeout)."""
    answers: queue.Queue = queue.Queue()
    watcher = cert_client(
        broker,
        pki,
        "ack-watcher",
        on_message=lambda c, u, m: answers.put((json.loads(m.payload), m.qos)),
    )
    watcher.subscribe(protocol.ack_topic("van-9"), qos=1)
    try:
        with box_and_central(tmp_path / "box", broker, pki, "van-9", tmp_path / "central") as box:
            fill(box, 2, 600_000)
            wait_for(lambda: synced(box), what="both synced")
        seen = []
        while not answers.empty():
            seen.append(answers.get())
        assert any(answer["re"] == "seg" and answer["status"] == "ok" for answer, _ in seen)
        assert {qos for _, qos in seen} == {1}
    finally:
        watcher.disconnect()
        watcher.loop_stop()


def test_broker_flapping_five_times(tmp_path, broker, pki):
    store = tmp_path / "central"
    workers = central_workers(store, broker, pki)
    box = start_box(tmp_path / "box", broker, pki, "van-1", **SLOW)
    try:
        fill(box, 4, 2 * MIB)
        for _ in range(5):
            time.sleep(1.2)
            broker.restart(kill=True)
        wait_for(lambda: synced(box), timeout=120, what="all synced after flapping")
        check_central_matches(box, store)
        wait_for(
            lambda: box.status()["upstream"]["link"]["state"] == "online",
            timeout=30,
            what=f"link online, is {box.status()['upstream']['link']}",
        )
    finally:
        box.stop()
        for w in workers:
            w.stop()


def _central_process(store, broker, pki, name):
    """`edgebox central run` with one worker as its own process; stderr kept in NAME.log."""
    cert, key = pki.client_cert(name)
    command = [
        sys.executable,
        "-m",
        "edgebox",
        "central",
        "run",
        "--broker",
        broker.url_tls_cert,
        "--store",
        str(store),
        "--workers",
        "1",
        "--ca",
        str(broker.ca_path),
        "--cert",
        str(cert),
        "--key",
        str(key),
    ]
    with open(store.parent / f"{name}.log", "wb") as log:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)


def test_central_worker_killed_mid_file(tmp_path, broker, pki):
    store = tmp_path / "central"
    first = _central_process(store, broker, pki, "central-a")
    second = _central_process(store, broker, pki, "central-b")
    box = start_box(tmp_path / "box", broker, pki, "van-1", **SLOW)
    try:
        fill(box, 2, 4 * MIB)
        wait_for(
            lambda: segments_present(store),
            what="segments stored at central",
        )
        assert second.poll() is None, (tmp_path / "central-b.log").read_text()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        wait_for(lambda: synced(box), timeout=120, what="all synced by the surviving worker")
        check_central_matches(box, store)
    finally:
        box.stop()
        for proc in (first, second):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)


def test_a_central_silent_on_a_fin_hears_an_init_and_completes(tmp_path, broker, pki):
    """Central up but silent on a transfer's fins (as a completion a crash cut short made it,
    before central settled those): after FIN_TRIES unanswered fins the box starts the transfer
    again with an init instead of waiting on it, and the whole backlog with it, forever.
    The silence is a stand-in (a wrapper on a real worker drops the fins until the next init):
    no fault of central's is known to cause it any more."""
    store = tmp_path / "central"
    workers = central_workers(store, broker, pki, count=1)
    files = workers[0].receiver.files
    real_init, real_fin = files.init, files.fin
    dropped, inits_after = Counter(), Counter()

    def init(box_id, tid, message, public):
        inits_after[tid] += bool(dropped[tid])
        return real_init(box_id, tid, message, public)

    def fin(box_id, tid, message):
        if not inits_after[tid]:
            dropped[tid] += 1
            return None
        return real_fin(box_id, tid, message)

    files.init, files.fin = init, fin
    box = start_box(tmp_path / "box", broker, pki, "van-1", ack_timeout_seconds=1)
    try:
        fill(box, 2, MIB)
        wait_for(lambda: synced(box), timeout=90, what="both synced after the silent fins")
        assert sorted(dropped.values()) == [FIN_TRIES, FIN_TRIES]  # each, then an init
        check_central_matches(box, store)
    finally:
        box.stop()
        for worker in workers:
            worker.stop()


def test_box_killed_mid_transfer(tmp_path, broker, pki):
    store = tmp_path / "central"
    workers = central_workers(store, broker, pki)
    config = make_box(tmp_path / "box", box_id="van-9")
    process = BoxProcess(config, env=upstream_env(broker, pki, "van-9", **SLOW)).start()
    try:
        code = json.loads(run_cli("cameras", "pair", "--json", config=config).stdout)["code"]
        camera = enroll(process.url, process.cert, code)
        from tests.test_ingest import upload_all

        payloads = [os.urandom(3 * MIB) for _ in range(2)]
        for data in payloads:
            upload_all(camera, data)
        wait_for(
            lambda: segments_present(store),
            what="a transfer under way",
        )
        process.kill9()
        listed = json.loads(run_cli("recordings", "list", "--json", config=config).stdout)
        assert all(r["sealed"] == 0 for r in listed if r["sync_state"] != "synced")
        process.start()
        wait_for(
            lambda: all(
                r["sync_state"] == "synced"
                for r in json.loads(run_cli("recordings", "list", "--json", config=config).stdout)
            ),
            timeout=120,
            interval=1,
            what="synced after the box came back",
        )
        listed = json.loads(run_cli("recordings", "list", "--json", config=config).stdout)
        assert {r["id"]: r["stored_sha256"] for r in listed}.keys() == central_holds(store).keys()
        assert run_cli("verify", config=config).returncode == 0
    finally:
        process.stop()
        for w in workers:
            w.stop()


def test_offline_backlog_drains_in_priority_order(tmp_path, broker, pki):
    store = tmp_path / "central"
    folder = tmp_path / "box"
    make_box(folder, box_id="van-3")
    from edgebox.box import Box
    from edgebox.config import load_config

    offline = Box(load_config(folder / "edgebox.toml", environ={})).start(("127.0.0.1", 0))
    try:
        fill(offline, 6, 300_000)
        recs = offline.store.query("SELECT id FROM recordings ORDER BY received_at")
        with offline.store.write() as db:  # what a supervisor and a crew would set meanwhile
            db.execute("UPDATE recordings SET legal_hold = 1 WHERE id = ?", [recs[4]["id"]])
            db.execute("UPDATE recordings SET incident = 'INC-77' WHERE id = ?", [recs[2]["id"]])
    finally:
        offline.stop()
    workers = central_workers(store, broker, pki, count=1)
    box = start_box(folder, broker, pki, "van-3")
    try:
        wait_for(lambda: synced(box), what="backlog drained")
        order = [
            r["subject"]
            for r in box.store.query(
                "SELECT subject FROM custody WHERE event = 'recording.synced' ORDER BY seq"
            )
        ]
        expected = [recs[4]["id"], recs[2]["id"]] + [recs[i]["id"] for i in (0, 1, 3, 5)]
        assert order == expected
        index = Index(store)
        try:
            head = index.one("SELECT custody_seq FROM boxes WHERE box_id = 'van-3'")["custody_seq"]
        finally:
            index.close()
        # custody went first: central had the ingest entries before the first file completed
        assert (
            head
            >= box.store.one(
                "SELECT MAX(seq) AS s FROM custody WHERE event = 'recording.ingested'"
            )["s"]
        )
    finally:
        box.stop()
        for w in workers:
            w.stop()


def test_username_password_and_refused_credentials(tmp_path, broker, pki):
    broker.add_user("van-5", "right-password")
    broker.reload()
    store = tmp_path / "central"
    workers = central_workers(store, broker, pki, count=1)
    folder = tmp_path / "box"
    make_box(folder, box_id="van-5")
    (folder / "password").write_text("wrong-password")
    from edgebox.box import Box
    from edgebox.config import load_config

    env = {
        "EDGEBOX_UPSTREAM__BROKER": broker.url_tls_password,
        "EDGEBOX_UPSTREAM__CA": str(broker.ca_path),
        "EDGEBOX_UPSTREAM__USERNAME": "van-5",
        "EDGEBOX_UPSTREAM__PASSWORD_FILE": "password",
    }
    box = Box(load_config(folder / "edgebox.toml", environ=env)).start(("127.0.0.1", 0))
    try:
        fill(box, 1, 200_000)
        wait_for(
            lambda: box.status()["upstream"]["link"]["state"] == "refused", what="refused status"
        )
        assert "broker refused the connection" in box.status()["upstream"]["link"]["detail"]
        time.sleep(3)
        attempts = broker.log_tail(200).count("van-5")
        time.sleep(3)
        assert broker.log_tail(200).count("van-5") == attempts  # no hammering
        assert states(box) == ["pending"]
    finally:
        box.stop()
    (folder / "password").write_text("right-password")
    box = Box(load_config(folder / "edgebox.toml", environ=env)).start(("127.0.0.1", 0))
    try:
        wait_for(lambda: synced(box), what="synced with the right password")
    finally:
        box.stop()
        for w in workers:
            w.stop()


def test_hostile_messages(tmp_path, broker, pki):
    store = tmp_path / "central"
    workers = central_workers(store, broker, pki, count=1)
    box = start_box(tmp_path / "box", broker, pki, "van-1")
    evil = cert_client(broker, pki, "intruder")
    try:
        fill(box, 1, 300_000)
        wait_for(lambda: synced(box), what="first recording synced")
        rec = box.store.one("SELECT * FROM recordings")
        tid = protocol.transfer_id(rec["id"], "a" * 64)
        before = central_holds(store)
        sends = [
            (protocol.meta_topic("van-1"), b"{not json"),
            (protocol.meta_topic("van-1"), json.dumps({"id": "x", "box": "van-2"}).encode()),
            (
                protocol.meta_topic("van-1"),
                json.dumps(
                    {"id": "y", "box": "van-1", "identity": "AAAA", "type": "note"}
                ).encode(),
            ),
            (protocol.init_topic("van-1", tid), json.dumps({"tid": tid, "box": "van-1"}).encode()),
            (protocol.segment_topic("van-1", tid, 0, "b" * 64), b"junk"),
            (
                protocol.fin_topic("van-1", tid),
                json.dumps({"size": 1, "sha256": "c" * 64}).encode(),
            ),
            ("edgebox/v1/-bad/meta", b"{}"),
        ]
        for topic, payload in sends:
            evil.publish(topic, payload, qos=1).wait_for_publish(5)
        # Forged answers on the box's own ack topic: unknown transfer, other box, bad JSON.
        for payload in (
            json.dumps(
                {
                    "box": "van-1",
                    "re": "fin",
                    "tid": tid,
                    "status": "complete",
                    "sha256": "a" * 64,
                    "size": 1,
                }
            ).encode(),
            json.dumps({"box": "van-2", "re": "fin", "tid": tid, "status": "complete"}).encode(),
            b"\xff\xfe",
        ):
            evil.publish(protocol.ack_topic("van-1"), payload, qos=1).wait_for_publish(5)
        index = Index(store)
        try:
            wait_for(
                lambda: len(index.query("SELECT * FROM rejections")) >= 7,
                what="central logged the rejections",
            )
            reasons = [r["reason"] for r in index.query("SELECT reason FROM rejections")]
        finally:
            index.close()
        assert reasons == [
            "payload is not JSON",
            "message for box 'van-2' on box van-1's topic",
            "identity of box van-1 differs from the one pinned",
            "init without size",
            "segment for an unknown transfer",
            "fin for an unknown transfer",
            "not a sync topic: 'edgebox/v1/-bad/meta'",
        ]
        assert central_holds(store) == before
        assert any("identity" in a for a in alarms(store))
        fill(box, 1, 200_000)  # the box still works and syncs the next one
        wait_for(lambda: sealed(box), what="second recording synced, both sealed")
        assert len(central_holds(store)) == 2
    finally:
        evil.disconnect()
        evil.loop_stop()
        box.stop()
        for w in workers:
            w.stop()


def test_offline_box_still_works(tmp_path):
    """No upstream configured: ingest and verify work, nothing is sealed or marked synced."""
    with offline_box(tmp_path / "box", "van-0") as box:
        fill(box, 2, 100_000)
        assert states(box) == ["pending", "pending"]
        assert box.status()["upstream"]["backlog"]["recordings"] == 2


def test_damaged_file_is_refused_flagged_and_does_not_block(tmp_path, broker, pki):
    """Bit rot in a stored file: central's whole-file check at the fin refuses its copy, the box
    then finds its own file changed, flags it damaged and goes on with the rest."""
    folder = tmp_path / "box"
    with offline_box(folder, "van-4") as offline:
        fill(offline, 3, 300_000)
        first = offline.store.query("SELECT id FROM recordings ORDER BY received_at")[0]["id"]
        path = offline.uploads.vault_path(first)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x40  # bit rot in the oldest recording
    path.write_bytes(bytes(raw))
    store = tmp_path / "central"
    with box_and_central(folder, broker, pki, "van-4", store) as box:
        wait_for(lambda: states(box).count("synced") == 2, what="the two healthy ones synced")
        assert states(box)[0] == "damaged"
        assert first not in central_holds(store)
        rows = box.store.query(
            "SELECT event, details FROM custody WHERE subject = ? ORDER BY seq", (first,)
        )
        assert rows[-1]["event"] == "recording.damaged"
        assert "stored bytes changed" in rows[-1]["details"]
        assert box.store.one("SELECT sealed FROM recordings WHERE id = ?", (first,))["sealed"] == 0


def test_a_truncated_file_is_flagged_before_any_byte_is_sent(tmp_path, broker, pki):
    """A stored file shorter than its header says never leaves the box."""
    folder = tmp_path / "box"
    with offline_box(folder, "van-5") as offline:
        fill(offline, 2, 300_000)
        first = offline.store.query("SELECT id FROM recordings ORDER BY received_at")[0]["id"]
        path = offline.uploads.vault_path(first)
    os.truncate(path, path.stat().st_size - 4096)
    store = tmp_path / "central"
    with box_and_central(folder, broker, pki, "van-5", store) as box:
        wait_for(lambda: states(box) == ["damaged", "synced"], what="the healthy one synced")
        assert not any(p.name.startswith(first) for p in (store / "transfers").glob("*/*"))


def sync_and_seal_events(box) -> list[str]:
    """The box's recording.synced and recording.sealed custody events, in order."""
    rows = box.store.query(
        "SELECT event FROM custody WHERE event IN ('recording.synced', 'recording.sealed') "
        "ORDER BY seq"
    )
    return [r["event"] for r in rows]


def test_confirmed_recordings_are_sealed_once_the_backlog_is_drained(tmp_path, broker, pki):
    """Sealing re-hashes the whole file, so it waits until nothing is left to send: every
    confirmation of an offline backlog comes before the first seal, and all are sealed."""
    folder = tmp_path / "box"
    with offline_box(folder, "van-6") as offline:
        fill(offline, 3, 300_000)
    with box_and_central(folder, broker, pki, "van-6", tmp_path / "central") as box:
        wait_for(lambda: sealed(box), what="all synced and sealed")
        events = sync_and_seal_events(box)
        assert events == ["recording.synced"] * 3 + ["recording.sealed"] * 3
        assert box.status()["upstream"]["backlog"]["awaiting_seal"] == 0
        assert verify_box(box).ok


def test_a_busy_link_still_seals_within_the_wait_limit(tmp_path, broker, pki):
    """While there is always more to send, a recording confirmed longer ago than the limit (0 s
    here, 600 s by default) is sealed between two recordings instead of after the drain."""
    folder = tmp_path / "box"
    with offline_box(folder, "van-8") as offline:
        fill(offline, 4, MIB)
    with box_and_central(folder, broker, pki, "van-8", tmp_path / "central") as box:
        box.uplink.seal_wait_limit = 0
        wait_for(lambda: sealed(box), what="all synced and sealed")
        events = sync_and_seal_events(box)
        last_synced = len(events) - 1 - events[::-1].index("recording.synced")
        assert "recording.sealed" in events[:last_synced], events


def test_seals_left_by_a_crash_are_finished_even_offline(tmp_path, broker, pki):
    """A crash after central's confirmation was committed but before the seal leaves the row
    synced and unsealed (made here by hand, as only a kill at that instant would): the box
    seals it on its next start, with the broker down."""
    folder = tmp_path / "box"
    with offline_box(folder, "van-7") as offline:
        fill(offline, 2, 300_000)
        with offline.store.write() as db:
            db.execute("UPDATE recordings SET sync_state = 'synced'")
        assert offline.status()["upstream"]["backlog"]["awaiting_seal"] == 2
    broker.stop()
    box = start_box(folder, broker, pki, "van-7")
    try:
        wait_for(lambda: sealed(box), what="both sealed while offline")
        assert box.uplink.link.state != "online"
        assert verify_box(box).ok
    finally:
        box.stop()
