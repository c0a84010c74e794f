"""A small slice of the fleet bench (bench/fleet.py) with its real parts: simulated boxes with
their own identities, client certificates and vault files, a real Mosquitto under the ACL that
deploy/mosquitto ships, and two `edgebox central run` processes with worker certificates.
Every recording is held once with its hash, and a box's certificate cannot speak for another
box: the forged custody message is refused by the broker and never reaches central (had it
landed, central would have pinned the forger's key for the other box and refused it)."""

from __future__ import annotations

import random
import threading
from types import SimpleNamespace

import pytest

from bench.common import clean_env
from bench.fleet import fleet_acl, held_once, make_fleet, run_fleet, start_central
from bench.fleet_box import SimBox
from bench.fleet_link import BoxUplink
from tests.brokers import Mosquitto, TestPKI

NOT_AUTHORIZED = 0x87


@pytest.fixture
def world(tmp_path):
    """Three boxes with certificates, the broker under the fleet's ACL, two central workers."""
    pki = TestPKI(tmp_path / "pki")
    fleet = make_fleet(tmp_path / "boxes", 3, 2, 150_000, pki)
    work = tmp_path / "central"
    work.mkdir()
    with Mosquitto(tmp_path / "broker", pki, acl_lines=fleet_acl(2)) as broker:
        procs = start_central(work, str(work), 2, broker, clean_env(), tls=True)
        try:
            yield SimpleNamespace(fleet=fleet, broker=broker, work=work, tmp=tmp_path)
        finally:
            for proc in procs:
                proc.stop()


def test_the_fleet_acl_names_each_worker_like_the_shipped_one():
    acl = fleet_acl(4)
    assert "pattern write edgebox/v1/%u/file/#" in acl  # the boxes' rules, as shipped
    for n in (1, 2, 3, 4):
        assert acl.count(f"user central:worker-{n}") == 1
    block = acl[acl.index("user central:worker-4") :]
    assert block[1:5] == acl[acl.index("user central:worker-1") + 1 :][:4]


def test_a_box_cannot_speak_for_another_and_every_file_is_held_once(world):
    forger, victim = world.fleet[0], world.fleet[1]
    impostor = SimBox(victim.box_id, world.tmp / "impostor", identity=forger.identity)
    impostor.record("box.enrolled")
    uplink = BoxUplink(forger, "127.0.0.1", world.broker.port_tls_cert, 15, ca=world.broker.ca_path)
    acked, codes = threading.Event(), []

    def on_publish(client, userdata, mid, reason_code, properties):
        codes.append(reason_code.value)
        acked.set()

    uplink.client.on_publish = on_publish
    uplink.connect()
    try:
        uplink.publish(impostor.custody_message())  # on the victim's meta topic
        assert acked.wait(10)
    finally:
        uplink.drop()
    assert codes == [NOT_AUTHORIZED]

    args = SimpleNamespace(deadline=120, ack_timeout=15, chunk=64 << 10, offline=0.3, plain=False)
    stats, _, _ = run_fleet(world.fleet, world.broker, args, random.Random(5))
    check = held_once(world.work, str(world.work), world.fleet, clean_env())
    assert len(stats.completed) == check["expected"] == check["indexed"] == 6
    assert check["lost"] == check["wrong_hash"] == check["stored_twice"] == 0
    assert check["in_store"] == 6 and check["left_staged"] == 0


def test_the_section_reads_the_figures_it_is_given():
    from bench.fleet import summarise
    from bench.fleet_report import COLUMNS, section

    run = {key: 2.0 for _, key in COLUMNS}
    run |= {"confirmed": 4, "expected": 4, "lost": 0, "wrong_hash": 0, "stored_twice": 0}
    run |= {"left_staged": 0, "offline_spells": 1}
    results = [{**run, "store": "s3", "workers": w, "mb_per_s": mb} for w, mb in ((1, 10), (4, 17))]
    args = SimpleNamespace(boxes=2, recordings=2, size=3 << 20, chunk=1 << 20, ack_timeout=15,
                           offline=0.05, plain=False)  # fmt: skip
    text = section(summarise(results, {"s3": {1: 20.0, 4: 22.0}}, args))  # int keys, as run
    assert "**1.7** (17 / 10); it meets the aim of 1.6" in text
    assert "20.0 → 22.0 MB/s, **1.1**" in text
    assert "8 confirmations over 2 runs, 0 files lost" in text
