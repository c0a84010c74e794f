"""A full disk, for real: a small ext4 (or tmpfs) filesystem mounted by the test, filled with
real uploads; watermarks free synced and expired recordings first, then old synced copies,
never anything unsynced or on hold; past that, uploads get 507 and the alarm is raised, and
ingest resumes by itself when space returns."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import shutil
import subprocess

import pytest

from bench.soak_world import LoopDisk, unmount
from edgebox import catalog, retention, storage
from edgebox.box import Box
from edgebox.clock import iso, utcnow
from edgebox.config import load_config
from edgebox.errors import VaultError
from edgebox.keys import x25519_private_from_file
from edgebox.recordings import data_key_for
from edgebox.scheduler import jobs_of, jobs_report
from edgebox.verify import verify_box
from tests.conftest import enroll, make_box
from tests.sync_fixtures import central_workers, upstream_env, wait_for
from tests.test_ingest import upload_all

MIB = 1 << 20
DISK_MIB = 96
CLIP = 3 * MIB
DAY = dt.timedelta(days=1)


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture
def small_disk(tmp_path):
    """A freshly made 96 MiB filesystem mounted under tmp_path (ext4 on a loop device, else
    tmpfs); always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    disk = LoopDisk(tmp_path / "medium", DISK_MIB)
    if not disk.mounted:
        tmpfs = _run("mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(disk.mount))
        if tmpfs.returncode != 0:
            pytest.skip(f"cannot mount a small filesystem here: {disk.problem}; {tmpfs.stderr}")
    try:
        yield disk.mount
    finally:
        if disk.mounted:
            disk.close()
        else:
            unmount(disk.mount)


def fill_up(path, leave: int = 0) -> None:
    """Fill the filesystem of `path` with a file there until about `leave` bytes are free
    (0: every last block)."""
    free = shutil.disk_usage(path.parent).free - leave
    with open(path, "wb") as handle:
        for block in (MIB, 4096):
            try:
                while not leave or free >= block:  # without `leave`: until ENOSPC
                    handle.write(b"\0" * block)
                    handle.flush()
                    free -= block
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


def try_upload(camera, data: bytes, **metadata):
    """Upload like a camera that keeps its copy on refusal: the first non-success response."""
    created = camera.create(len(data), metadata)
    if created.status_code != 201:
        return created
    offset, response = 0, created
    while offset < len(data):
        response = camera.patch(created.headers["Location"], offset, data[offset : offset + MIB])
        if response.status_code != 204:
            return response
        offset = int(response.headers["Upload-Offset"])
    return response


def states(box) -> dict[str, dict]:
    """Every recording row by id (live or deleted)."""
    return {r["id"]: r for r in box.store.query("SELECT * FROM recordings")}


def deletions(box) -> list[tuple[str, str]]:
    """(recording id, reason) of every recording.deleted entry, in custody order."""
    rows = box.store.query(
        "SELECT subject, details FROM custody WHERE event = 'recording.deleted' ORDER BY seq"
    )
    return [(r["subject"], json.loads(r["details"])["reason"]) for r in rows]


def used(box) -> float:
    return storage.usage(box.data_dir).used_fraction


def all_synced(box) -> bool:
    """Whether central confirmed every recording still on the box."""
    rows = retention.live_recordings(box.store)
    return bool(rows) and all(r["sync_state"] == "synced" for r in rows)


def assert_never_lost(box, protected: set[str]) -> None:
    """Every deleted recording had central's confirmation and no hold; every protected one
    is still there."""
    rows = states(box)
    for rid, rec in rows.items():
        if retention.is_deleted(rec):
            trail = [
                e["event"]
                for e in box.store.query(
                    "SELECT event FROM custody WHERE subject = ? ORDER BY seq", (rid,)
                )
            ]
            assert "recording.synced" in trail, rid
            assert trail.index("recording.synced") < trail.index("recording.deleted"), rid
            assert not rec["legal_hold"], rid
            assert not box.uploads.vault_path(rid).exists()
    for rid in protected:
        assert not retention.is_deleted(rows[rid]), f"{rid} was deleted"
        assert box.uploads.vault_path(rid).exists()


def test_full_disk_end_to_end(tmp_path, small_disk, broker, pki):
    store = tmp_path / "central"
    workers = central_workers(store, broker, pki, count=1)
    config = make_box(small_disk / "box", box_id="van-full")
    env = {
        **upstream_env(broker, pki, "van-full"),
        "EDGEBOX_INGEST__RESERVE_FREE_BYTES": str(8 * MIB),
        "EDGEBOX_STORAGE__LOW_WATERMARK": "0.5",
        "EDGEBOX_STORAGE__HIGH_WATERMARK": "0.7",
        "EDGEBOX_RETENTION__KEEP_SYNCED_DAYS": "7",
        "EDGEBOX_REPLICATION__ENABLED": "false",
    }
    box = Box(load_config(config, environ=env)).start(("127.0.0.1", 0))
    jobs = jobs_of(box)
    jobs.pause()  # the test runs the watermark job itself, at the moments it checks
    try:
        camera = enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"], "CAM-F")
        now = utcnow()

        def clip(days_ago: float, **metadata) -> str:
            started = iso(now - dt.timedelta(days=days_ago))
            response, _ = upload_all(
                camera, os.urandom(CLIP), metadata=dict(metadata, started_at=started)
            )
            return response.headers["EdgeBox-Recording-Id"]

        # 1. With the link up: expired, old and recent recordings, all confirmed by central.
        expired = [clip(40 + i / 24) for i in range(3)]
        held = clip(41)
        old = [clip(days) for days in (14, 13, 12, 11, 10)]  # oldest first
        recent = [clip(1), clip(1.5)]
        wait_for(lambda: all_synced(box), timeout=120, what="first recordings synced")
        catalog.set_hold(box.store, held, True, "investigation 2026-042", "user:supervisor")

        # 2. Central unreachable: new recordings stay unsynced while the disk fills.
        broker.stop()
        wait_for(lambda: not box.uplink.link.connected.is_set(), what="link down")
        unsynced_old = [clip(40), clip(39)]  # past their date, but central has no copy
        fill = []
        while used(box) < box.config.storage.high_watermark:
            fill.append(clip(0))
        protected = {held, *recent, *unsynced_old, *fill}

        relief = jobs.run_now("storage_watermarks")
        assert relief["used_before"] >= 0.7 and relief["used_after"] < 0.5
        gone = deletions(box)
        assert [rid for rid, why in gone if why == "retention"] == expired
        pressured = [rid for rid, why in gone if why == "storage_pressure"]
        assert pressured and pressured == old[: len(pressured)]  # oldest first
        assert len(pressured) < len(old)  # stopped once below the low watermark
        assert_never_lost(box, protected)
        assert storage.report(box)["alarm"] is None and storage.alarms(box) == []

        # 3. Fill until the box refuses; the watermark job frees what it may (the recent
        #    synced copies too: they give way to new footage), then alarms.
        while True:
            response = try_upload(camera, os.urandom(CLIP), started_at=iso(utcnow()))
            if response.status_code != 204:
                break
            fill.append(response.headers["EdgeBox-Recording-Id"])
        assert response.status_code == 507, response.text
        assert int(response.headers["Retry-After"]) > 0
        protected |= set(fill)
        relief = jobs.run_now("storage_watermarks")
        assert relief["alarm"] is True and relief["used_after"] >= 0.7
        assert {rid for rid, why in deletions(box) if why == "storage_pressure"} == set(old)
        assert not [rid for rid, why in deletions(box) if why == "room_for_new_footage"]

        def fill_until_refused() -> None:
            while (response := try_upload(camera, os.urandom(CLIP))).status_code == 204:
                fill.append(response.headers["EdgeBox-Recording-Id"])
                protected.add(fill[-1])
            assert response.status_code == 507 and response.headers["Retry-After"]

        fill_until_refused()  # the old copies' room is used up: refused again
        jobs.run_now("storage_watermarks")
        made_room = [rid for rid, why in deletions(box) if why == "room_for_new_footage"]
        assert made_room == [recent[1], recent[0]]  # oldest first; central holds both
        protected -= set(recent)
        assert_never_lost(box, protected)
        fill_until_refused()  # and only synced copies gave way: now nothing more may go
        assert jobs.run_now("storage_watermarks")["freed"] == 0
        assert camera.create(CLIP).status_code == 507  # and stays refused: nothing changed

        report = storage.report(box)
        assert report["level"] == "above_high" and report["ingest"] == "refusing"
        assert report["alarm"]["since"] and "uploads are refused" in report["alarm"]["message"]
        assert report["kept"]["not_synced"]["n"] == len(unsynced_old) + len(fill)
        assert report["kept"]["legal_hold"]["n"] == 1
        alarms = storage.alarms(box)
        status = box.status()
        assert status["alarms"][0]["message"] == alarms[0]["message"]
        assert status["storage"]["alarm"]["message"] == report["alarm"]["message"]
        assert alarms[0]["source"] == "storage" and alarms[0]["severity"] == "critical"
        assert box.store.one("SELECT 1 FROM custody WHERE event = 'storage.alarm_raised'")
        assert_never_lost(box, protected)
        assert (
            box.store.one("SELECT COUNT(*) AS n FROM uploads WHERE state = 'receiving'")["n"] == 0
        )  # refused uploads left nothing behind

        # 4. Central returns: everything syncs; expired copies go, and a week later the
        #    kept-for-review copies, oldest first, until below the low watermark.
        broker.start()
        wait_for(lambda: all_synced(box), timeout=240, what="backlog synced")
        jobs.run_now("storage_watermarks")
        assert {rid for rid, why in deletions(box) if why == "retention"} == {
            *expired,
            *unsynced_old,
        }
        jobs.clock.advance(days=8)
        relief = jobs.run_now("storage_watermarks")
        assert relief["used_after"] < 0.5 and relief["alarm"] is False
        report = storage.report(box)
        assert report["alarm"] is None and report["ingest"] == "accepting"
        assert storage.alarms(box) == []
        assert box.store.one("SELECT 1 FROM custody WHERE event = 'storage.alarm_cleared'")
        late = [rid for rid, why in deletions(box) if why == "storage_pressure"][len(old) :]
        assert late and set(late) <= set(fill)  # 8 days old now: past keep_synced_days
        assert_never_lost(box, {held})

        response, _ = upload_all(camera, os.urandom(CLIP))  # ingest resumed by itself
        assert response.headers["EdgeBox-Recording-Id"]
        assert box.status()["alarms"] == []
        assert verify_box(box).ok, verify_box(box).problems
    finally:
        box.stop()
        for worker in workers:
            worker.stop()


@contextlib.contextmanager
def only_refusals_run_the_watermark_check(box):
    """Within the block the box's watermark check is an hour apart, so only a refusal brings
    it forward; yields how many times it has run. Its own interval again afterwards."""
    jobs = jobs_of(box)
    jobs.scheduler.reschedule_job("storage_watermarks", trigger="interval", seconds=3600)
    try:
        yield jobs_report(box)["storage_watermarks"]["runs"]
    finally:
        seconds = jobs.specs["storage_watermarks"].seconds
        jobs.scheduler.reschedule_job("storage_watermarks", trigger="interval", seconds=seconds)


def wait_for_watermark_check(box, runs_before: int) -> None:
    """Wait until the watermark check has run once more than `runs_before` (and finished)."""
    wait_for(
        lambda: jobs_report(box)["storage_watermarks"]["runs"] > runs_before,
        timeout=60,
        what="the watermark check brought forward by the refusal",
    )


def test_a_refused_camera_finds_room_made_when_it_comes_back(tmp_path, small_disk, broker, pki):
    """The refusal (507, Retry-After 30) brings the watermark check forward (10 s on): synced
    copies give way to new footage before the camera comes back, not at the check's next run
    (an hour off here)."""
    workers = central_workers(tmp_path / "central", broker, pki, count=1)
    config = make_box(small_disk / "box", box_id="van-room")
    env = {
        **upstream_env(broker, pki, "van-room"),
        "EDGEBOX_INGEST__RESERVE_FREE_BYTES": str(8 * MIB),
        "EDGEBOX_RETENTION__KEEP_SYNCED_DAYS": "7",
        "EDGEBOX_REPLICATION__ENABLED": "false",
    }
    box = Box(load_config(config, environ=env)).start(("127.0.0.1", 0))
    filler = small_disk / "filler"
    try:
        with only_refusals_run_the_watermark_check(box) as runs:
            camera = enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"], "CAM-R")
            synced = []
            for _ in range(4):
                response, _ = upload_all(camera, os.urandom(CLIP), metadata={"started_at": iso()})
                synced.append(response.headers["EdgeBox-Recording-Id"])
            wait_for(lambda: all_synced(box), timeout=120, what="recordings synced")
            fill_up(filler, leave=8 * MIB + MIB)  # room for less than one clip past the reserve
            assert jobs_report(box)["storage_watermarks"]["runs"] == runs

            refused = try_upload(camera, os.urandom(CLIP), started_at=iso())
            assert refused.status_code == 507 and refused.headers["Retry-After"] == "30"
            wait_for_watermark_check(box, runs)
            made_room = [rid for rid, why in deletions(box) if why == "room_for_new_footage"]
            assert made_room == synced  # oldest first, every one confirmed by central
            assert_never_lost(box, set())

            response, _ = upload_all(camera, os.urandom(CLIP))  # the camera comes back: taken
            assert_never_lost(box, {response.headers["EdgeBox-Recording-Id"]})
    finally:
        filler.unlink(missing_ok=True)
        box.stop()
        for worker in workers:
            worker.stop()


def _quiet_box(small_disk, box_id: str):
    """A running box on the small disk with its jobs paused (the test acts alone), and an
    enrolled camera."""
    config = make_box(small_disk / "box", box_id=box_id)
    env = {"EDGEBOX_INGEST__RESERVE_FREE_BYTES": str(MIB), "EDGEBOX_REPLICATION__ENABLED": "false"}
    box = Box(load_config(config, environ=env)).start(("127.0.0.1", 0))
    jobs_of(box).pause()
    try:
        return box, enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"])
    except BaseException:
        box.stop()
        raise


def test_shredding_works_on_a_completely_full_disk(tmp_path, small_disk):
    box, camera = _quiet_box(small_disk, "van-brim")
    filler = small_disk / "filler"
    try:
        started = iso(utcnow() - 40 * DAY)
        response, _ = upload_all(camera, os.urandom(CLIP), metadata={"started_at": started})
        rid = response.headers["EdgeBox-Recording-Id"]
        with box.store.write() as db:  # fixture shortcut: central's confirmation
            db.execute("UPDATE recordings SET sync_state = 'synced' WHERE id = ?", [rid])
        path = box.uploads.vault_path(rid)
        central = x25519_private_from_file(small_disk / "box" / "central-demo" / "central.key")
        data_key_for(path, central, role="central")

        fill_up(filler)  # take every last block
        assert storage.usage(box.data_dir).free_bytes < 64 * 1024

        # The header journal cannot be written: the keys are destroyed in place instead.
        retention.destroy_keys(path)
        with pytest.raises(VaultError):
            data_key_for(path, central, role="central")

        report = retention.sweep(box)
        tomb = path.with_name(path.name + retention.TOMB_SUFFIX)
        if report.deleted:
            assert not path.exists() and not tomb.exists()
        else:  # the database had no room to commit: the file waits, keyless, for space
            assert report.failed and report.failed[0]["recording_id"] == rid
            with pytest.raises(VaultError):
                data_key_for(tomb if tomb.exists() else path, central, role="central")
        filler.unlink()
        retention.sweep(box)
        row = box.store.one("SELECT * FROM recordings WHERE id = ?", (rid,))
        assert retention.is_deleted(row) and list(box.uploads.vault_dir.iterdir()) == []
        assert retention.deletion_problems(box, row) == []
    finally:
        filler.unlink(missing_ok=True)
        box.stop()


def test_a_last_segment_that_finds_the_disk_full_is_finished_by_a_later_head(small_disk):
    """Every byte arrived, but sealing the last segment fails: 507, nothing lost, and once
    there is space again the camera's next HEAD finishes the upload."""
    box, camera = _quiet_box(small_disk, "van-last")
    filler = small_disk / "filler"
    try:
        data = os.urandom(3 * MIB - 1)  # the last segment needs fresh blocks
        location = camera.create(len(data)).headers["Location"]
        assert camera.patch(location, 0, data[: 2 * MIB]).status_code == 204
        fill_up(filler)
        response = camera.patch(location, 2 * MIB, data[2 * MIB :])
        assert response.status_code == 507
        assert camera.head(location).status_code == 507  # still full: still not finished
        assert states(box) == {}
        filler.unlink()
        response = camera.head(location)
        assert response.status_code == 200
        assert response.headers["Upload-Offset"] == str(len(data))
        assert response.headers["EdgeBox-Evidence-Sha256"] == hashlib.sha256(data).hexdigest()
        assert verify_box(box).ok, verify_box(box).problems
    finally:
        filler.unlink(missing_ok=True)
        box.stop()
