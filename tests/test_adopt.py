"""Re-adopting the vault files of a lost tail, with real processes: a box ingests while
Litestream replicates, replication stops, more recordings arrive (one upload began before the
stop and ended after it, one from a camera paired after it), the box dies; a replacement box
is restored from the replica and adopts what the restore could not bring back."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from edgebox import vault
from edgebox.config import load_config
from edgebox.replication import config as lsconf
from tests.conftest import SECRET, BoxProcess, Camera, enroll, make_box, run_cli
from tests.test_replication import (
    MIB,
    NO_SUPERVISOR,
    fresh_copy,
    ingest,
    listing,
    pair,
    replicated_ids,
    replicating,
    wait_for,
)

WITH_SECRET = {"EDGEBOX_REVIEW_SECRET": SECRET}
LATE_META = {
    "filename": "late.mp4",
    "started_at": "2026-01-02T03:04:05Z",
    "category": "traffic",
    "user_id": "officer-7",
}


def upload_row_replicated(config_path: Path, probe: Path, upload_id: str) -> bool:
    """Whether a restore from the replica right now would bring back this upload's row."""
    if not replicated_ids(config_path, probe):  # restores the replica into `probe`
        return False
    conn = sqlite3.connect(probe)
    try:
        row = conn.execute("SELECT 1 FROM uploads WHERE id = ?", [upload_id]).fetchone()
        return row is not None
    finally:
        conn.close()


@pytest.fixture(scope="module")
def lost_tail(tmp_path_factory):
    """A dead box's config, its replica, and the clips: `kept` reached the replica, the
    others (`late`: one started before the replica's last position) did not."""
    root = tmp_path_factory.mktemp("lost-tail")
    config_path = make_box(root / "box")
    box = BoxProcess(config_path, env=NO_SUPERVISOR).start()
    try:
        camera = pair(box)
        with replicating(config_path):
            kept = dict([ingest(camera, MIB)])
            straddling = os.urandom(2 * MIB + 7)
            created = camera.create(
                len(straddling),
                {**LATE_META, "sha256": hashlib.sha256(straddling).hexdigest()},
            )
            location = created.headers["Location"]
            upload_id = location.rsplit("/", 1)[1]
            wait_for(
                lambda: upload_row_replicated(config_path, root / "probe.db", upload_id),
                message="the upload's row to reach the replica",
            )
        # Replication is down from here on: everything below is the lost tail.
        finished = camera.patch(location, 0, straddling)
        assert finished.status_code == 204, finished.text
        late = {finished.headers["EdgeBox-Recording-Id"]: straddling}
        late.update([ingest(camera, MIB + 3), ingest(camera, 3)])
        code = json.loads(run_cli("cameras", "pair", "--json", config=config_path).stdout)["code"]
        newcomer = enroll(box.url, box.cert, code, serial="CAM-0002")
        empty = newcomer.create(0, {"sha256": hashlib.sha256(b"").hexdigest()})
        assert empty.status_code == 201, empty.text
        late[empty.headers["EdgeBox-Recording-Id"]] = b""
        box.kill9()
    finally:
        box.stop()
    return {
        "config": config_path,
        "replica": lsconf.replica_dir(load_config(config_path)),
        "kept": kept,
        "late": late,
        "straddling": (finished.headers["EdgeBox-Recording-Id"], upload_id),
        "newcomer": newcomer,
        "camera": camera,
    }


def restored(lost_tail, tmp_path: Path) -> Path:
    """A replacement box (config, keys, surviving vault) restored from the replica."""
    fresh = fresh_copy(lost_tail["config"], tmp_path / "replacement")
    done = run_cli("restore", "--from", str(lost_tail["replica"]), "--json", config=fresh)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["orphan_vault_files"] == sorted(
        f"{rid}.ebv" for rid in lost_tail["late"]
    )
    return fresh


def problems(config: Path) -> list[str]:
    """What `edgebox verify` finds (its exit status must agree)."""
    done = run_cli("verify", "--json", config=config)
    report = json.loads(done.stdout)
    assert done.returncode == (0 if report["ok"] else 1)
    return report["problems"]


def orphan_problem(recording_id: str) -> str:
    """verify's line for a vault file without a recording."""
    return f"vault file {recording_id}.ebv has no recording in the database"


def database_dump(config: Path) -> str:
    """Every row of the box database, as SQL text (to show that nothing changed)."""
    conn = sqlite3.connect(config.parent / "data" / "box.db")
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def query(config: Path, sql: str, params=()) -> list[dict]:
    """Rows of the box database as dicts."""
    conn = sqlite3.connect(config.parent / "data" / "box.db")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()


def adopt(config: Path, *args: str, env: dict | None = None):
    """Run `edgebox recordings adopt --json`; returns (exit status, report or error object)."""
    done = run_cli("recordings", "adopt", *args, "--json", config=config, env=env or WITH_SECRET)
    return done.returncode, json.loads(done.stdout) if done.stdout else done.stderr


def exported(config: Path, recording_id: str, out: Path) -> bytes:
    """The clip as `edgebox export` decrypts it with the review secret."""
    done = run_cli(
        "export", recording_id, "--out", str(out), "--json", config=config, env=WITH_SECRET
    )
    assert done.returncode == 0, done.stderr
    return (out / json.loads(done.stdout)["clip"]).read_bytes()


def test_adoption_makes_verify_pass_and_every_surviving_clip_listed_and_playable(
    lost_tail, tmp_path
):
    fresh = restored(lost_tail, tmp_path)
    late = lost_tail["late"]
    assert sorted(problems(fresh)) == sorted(orphan_problem(rid) for rid in late)

    status, report = adopt(fresh)
    assert status == 0, report
    assert report["supervisor"] == "supervisor" and report["skipped"] == []
    assert {a["recording_id"] for a in report["adopted"]} == set(late)
    assert report["orphans_left"] == []
    for item in report["adopted"]:
        assert item["evidence_sha256"] == hashlib.sha256(late[item["recording_id"]]).hexdigest()
        path = fresh.parent / "data" / "vault" / item["file"]
        assert item["stored_sha256"] == vault.file_sha256(path)

    assert problems(fresh) == []
    deep = run_cli("verify", "--deep", "--json", config=fresh, env=WITH_SECRET)
    assert deep.returncode == 0 and json.loads(deep.stdout)["decrypted"] == 1 + len(late)
    listed = json.loads(run_cli("recordings", "list", "--json", config=fresh).stdout)
    assert {row["id"] for row in listed} == set(lost_tail["kept"]) | set(late)
    for n, (recording_id, data) in enumerate(late.items()):
        assert exported(fresh, recording_id, tmp_path / f"clip{n}.mp4") == data

    rows = {r["id"]: r for r in query(fresh, "SELECT * FROM recordings")}
    straddling, upload_id = lost_tail["straddling"]
    # The upload began before the replica's last position: the camera's metadata came back.
    assert rows[straddling]["upload_id"] == upload_id
    assert (rows[straddling]["filename"], rows[straddling]["category"]) == ("late.mp4", "traffic")
    assert rows[straddling]["started_at"] == "2026-01-02T03:04:05.000000Z"
    [upload] = query(fresh, "SELECT state FROM uploads WHERE id = ?", (upload_id,))
    assert upload["state"] == "finished"
    # The others: only what the header holds; the rest is NULL and said to be unknown.
    others = [rows[rid] for rid in late if rid != straddling]
    assert all(r["filename"] is None and r["started_at"] is None for r in others)
    assert all(r["upload_id"] == f"adopted-{r['id']}" for r in others)
    assert all(r["camera_sha256"] == r["evidence_sha256"] for r in rows.values())
    assert {r["sync_state"] for r in others} == {"pending"}
    note = json.loads(others[0]["metadata"])["edgebox:adopted"]
    assert note["vault_file"] == f"{others[0]['id']}.ebv"
    assert {"filename", "started_at", "legal_hold"} <= set(note["unknown"])

    entries = query(
        fresh,
        "SELECT subject, actor, details FROM custody WHERE event = 'recording.ingested' "
        "AND actor = 'user:supervisor'",
    )
    assert {e["subject"] for e in entries} == set(late)
    assert all(json.loads(e["details"])["adopted"]["rebuilt"] for e in entries)

    # The camera paired after the replica's last position comes back revoked, token refused;
    # the box starts on the adopted rows and the known camera still uploads.
    newcomer = lost_tail["newcomer"]
    [device] = query(fresh, "SELECT * FROM devices WHERE id = ?", (newcomer.device_id,))
    assert device["revoked_at"] and device["serial"] == "CAM-0002"
    assert "re-created" in device["model"]
    box = BoxProcess(fresh, env=NO_SUPERVISOR).start()
    try:
        again = Camera(box.url, box.cert, newcomer.device_id, newcomer.token, newcomer.serial)
        assert again.create(10).status_code == 401
        known = lost_tail["camera"]
        known = Camera(box.url, box.cert, known.device_id, known.token, known.serial)
        assert known.create(10).status_code == 201
    finally:
        box.stop()
    assert problems(fresh) == []


def test_restore_with_adopt_does_both_in_one_command(lost_tail, tmp_path):
    fresh = fresh_copy(lost_tail["config"], tmp_path / "replacement")
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    done = run_cli(
        "restore",
        "--from",
        str(lost_tail["replica"]),
        "--adopt",
        "--secret-file",
        str(secret_file),
        config=fresh,
        env={"EDGEBOX_REVIEW_SECRET": ""},
    )
    assert done.returncode == 0, done.stderr
    assert f"{len(lost_tail['late'])} adopted, 0 skipped" in done.stdout
    assert problems(fresh) == []
    custody = query(fresh, "SELECT event FROM custody ORDER BY seq DESC")
    assert [e["event"] for e in custody[: len(lost_tail["late"]) + 1]] == [
        "recording.ingested"
    ] * len(lost_tail["late"]) + ["database.restored"]


def test_a_wrong_secret_changes_nothing(lost_tail, tmp_path):
    wrong = {"EDGEBOX_REVIEW_SECRET": "not-the-secret"}
    fresh = fresh_copy(lost_tail["config"], tmp_path / "replacement")
    data = fresh.parent / "data"
    before = listing(data)
    done = run_cli(
        "restore", "--from", str(lost_tail["replica"]), "--adopt", config=fresh, env=wrong
    )
    assert done.returncode == 2 and "wrong review secret" in done.stderr
    assert listing(data) == before and not (data / "box.db").exists()

    (tmp_path / "second").mkdir()
    fresh = restored(lost_tail, tmp_path / "second")
    dump = database_dump(fresh)
    status, error = adopt(fresh, env=wrong)
    assert status == 2 and error["message"] == "wrong review secret; nothing was adopted"
    assert database_dump(fresh) == dump


def test_bad_files_are_skipped_and_reported_and_the_rest_adopted(lost_tail, tmp_path):
    fresh = restored(lost_tail, tmp_path)
    folder = fresh.parent / "data" / "vault"
    straddling, _ = lost_tail["straddling"]
    empty = next(rid for rid, data in lost_tail["late"].items() if not data)
    damaged, renamed = (rid for rid in lost_tail["late"] if rid not in (straddling, empty))
    with open(folder / f"{damaged}.ebv", "r+b") as handle:  # one byte of segment 1
        handle.seek(4096 + MIB + 16 + 1)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    damaged_sha = vault.file_sha256(folder / f"{damaged}.ebv")
    foreign = "f" * 32
    shutil.copy2(folder / f"{renamed}.ebv", folder / f"{foreign}.ebv")
    header = vault.read_header(folder / f"{empty}.ebv")  # sealed as after central's confirmation
    vault.rewrite_header(
        folder / f"{empty}.ebv",
        [s for s in header.stanzas if not s["recipient"].startswith("review:")],
    )

    status, report = adopt(fresh)
    assert status == 1
    assert sorted(a["recording_id"] for a in report["adopted"]) == sorted([straddling, renamed])
    why = {s["file"]: s["problem"] for s in report["skipped"]}
    assert set(why) == {f"{damaged}.ebv", f"{foreign}.ebv", f"{empty}.ebv"}
    assert "segment 1 fails authentication" in why[f"{damaged}.ebv"]
    assert f"its header names recording '{renamed}'" in why[f"{foreign}.ebv"]
    assert why[f"{empty}.ebv"].startswith("sealed:")
    assert vault.file_sha256(folder / f"{damaged}.ebv") == damaged_sha  # kept as it was
    assert sorted(problems(fresh)) == sorted(orphan_problem(r) for r in (damaged, foreign, empty))

    # Again: nothing new; naming a file that has a recording, or none, changes nothing either.
    dump = database_dump(fresh)
    status, report = adopt(fresh)
    assert status == 1 and report["adopted"] == [] and len(report["skipped"]) == 3
    [kept] = lost_tail["kept"]
    status, report = adopt(fresh, f"{kept}.ebv", "nothing.ebv", "../box.db")
    assert status == 1 and report["adopted"] == []
    why = {s["file"]: s["problem"] for s in report["skipped"]}
    assert why[f"{kept}.ebv"] == f"recording {kept} already exists in the database"
    assert why["nothing.ebv"].startswith("not a vault file") and "../box.db" in why
    assert database_dump(fresh) == dump


def test_adoption_refuses_while_the_box_runs(lost_tail, tmp_path):
    fresh = restored(lost_tail, tmp_path)
    box = BoxProcess(fresh).start()  # with its Litestream supervisor, as in production
    try:
        status, error = adopt(fresh)
        assert status == 2
        assert "the box is running" in error["message"] and "stop it first" in error["message"]
    finally:
        box.stop()
    assert sorted(problems(fresh)) == sorted(orphan_problem(rid) for rid in lost_tail["late"])
