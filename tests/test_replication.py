"""Litestream replication with the real binary and real processes: supervise, kill -9, restore."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgebox.config import load_config
from edgebox.replication import config as lsconf
from edgebox.replication.litestream import Replicator, replication_status
from tests.conftest import SECRET, BoxProcess, enroll, make_box, run_cli
from tests.test_ingest import _send_partial, upload_all

MIB = 1 << 20
NO_SUPERVISOR = {"EDGEBOX_REPLICATION__ENABLED": "false"}  # the test drives replication itself


def wait_for(predicate, timeout: float = 30, message: str = "condition"):
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message}")


@contextlib.contextmanager
def replicating(config_path: Path):
    """Replication beside a box: the box's own supervisor when it runs one, else one of ours."""
    config = load_config(config_path)
    status = replication_status(config)
    if status["supervisor_running"] and status["state"] in ("running", "restarting"):
        yield None
        return
    replicator = Replicator(config, backoff=(0.2, 2.0)).start()
    try:
        yield replicator
    finally:
        replicator.stop()


def replicated_rows(config_path: Path, probe: Path, sql: str, params=()) -> list[tuple]:
    """What `sql` finds in the database a restore from the replica would bring back right now."""
    config = load_config(config_path)
    done = subprocess.run(
        [
            str(lsconf.litestream_binary(config)),
            "restore",
            "-force",
            "-o",
            str(probe),
            lsconf.replica_url(config),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return []
    conn = sqlite3.connect(probe)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def replicated_ids(config_path: Path, probe: Path) -> set[str]:
    """Recording ids that a restore from the replica would bring back right now."""
    return {row[0] for row in replicated_rows(config_path, probe, "SELECT id FROM recordings")}


def pair(box: BoxProcess):
    """A camera enrolled with a box running as a subprocess."""
    code = json.loads(run_cli("cameras", "pair", "--json", config=box.config).stdout)["code"]
    return enroll(box.url, box.cert, code)


def ingest(camera, size: int) -> tuple[str, bytes]:
    """Upload one random clip; returns its recording id and bytes."""
    data = os.urandom(size)
    response, _ = upload_all(camera, data, metadata={"sha256": hashlib.sha256(data).hexdigest()})
    return response.headers["EdgeBox-Recording-Id"], data


def fresh_copy(config_path: Path, target: Path) -> Path:
    """What a replacement box starts with: config, keys and the surviving vault, no database."""
    target.mkdir()
    shutil.copy2(config_path, target / config_path.name)
    for part in ("keys", "vault"):
        shutil.copytree(config_path.parent / "data" / part, target / "data" / part)
    return target / config_path.name


def check_restored(config_path: Path, clips: dict[str, bytes], out: Path) -> None:
    """verify passes, every clip is listed, and one exports to exactly the uploaded bytes."""
    verified = run_cli("verify", "--json", config=config_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    listed = json.loads(run_cli("recordings", "list", "--json", config=config_path).stdout)
    assert set(clips) <= {row["id"] for row in listed}
    recording_id = sorted(clips)[0]
    exported = run_cli(
        "export",
        recording_id,
        "--out",
        str(out),
        "--json",
        config=config_path,
        env={"EDGEBOX_REVIEW_SECRET": SECRET},
    )
    assert exported.returncode == 0, exported.stderr
    assert (out / json.loads(exported.stdout)["clip"]).read_bytes() == clips[recording_id]
    assert run_cli("verify-package", str(out)).returncode == 0


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie that nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def sha256(path: Path) -> str:
    """SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    """Every path below `folder` (to show that nothing changed)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_generated_config_is_what_litestream_reads(tmp_path):
    config = load_config(make_box(tmp_path / "box"))
    path = lsconf.write(config)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    binary = str(lsconf.litestream_binary(config))
    listed = subprocess.run(
        [binary, "databases", "-config", str(path), "-no-expand-env", "-json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(listed.stdout) == [
        {"path": str(config.data_dir / "box.db"), "replica": "file"}
    ]
    s3 = dataclasses.replace(
        config,
        replication=dataclasses.replace(config.replication, s3_url="s3://depot-bucket/van-17"),
    )
    assert 'url: "s3://depot-bucket/van-17"' in lsconf.render(s3)
    path = lsconf.write(s3)
    listed = subprocess.run(
        [binary, "databases", "-config", str(path), "-no-expand-env", "-json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(listed.stdout)[0]["replica"] == "s3"


def test_supervisor_restarts_a_killed_litestream(tmp_path):
    config_path = make_box(tmp_path / "box")
    config = load_config(config_path)
    replicator = Replicator(config, backoff=(0.2, 2.0)).start()
    try:
        first = wait_for(
            lambda: (h := replicator.health())["replica_txid"] and h, message="first snapshot"
        )
        assert first["state"] == "running" and first["restarts"] == 0
        os.kill(first["pid"], signal.SIGKILL)
        again = wait_for(
            lambda: (h := replicator.health())["restarts"] == 1 and h["pid"] and h,
            message="litestream to come back",
        )
        assert again["state"] == "running" and again["pid"] != first["pid"]
        assert again["last_exit"] == "killed by signal 9"
        seen = json.loads(run_cli("replication", "status", "--json", config=config_path).stdout)
        assert (seen["state"], seen["restarts"], seen["pid"]) == ("running", 1, again["pid"])
        assert seen["supervisor_running"]
        wait_for(lambda: replication_status(config)["lag_seconds"] == 0, message="no lag")
    finally:
        replicator.stop()
    assert replication_status(config)["state"] == "stopped"
    with pytest.raises(ProcessLookupError):
        os.kill(again["pid"], 0)


def test_a_missing_binary_is_reported_and_retried(tmp_path):
    config = load_config(
        make_box(tmp_path / "box"),
        environ={"EDGEBOX_REPLICATION__LITESTREAM_BIN": str(tmp_path / "nope")},
    )
    replicator = Replicator(config, backoff=(0.05, 0.1), interval=0.05).start()
    try:
        failed = wait_for(
            lambda: (h := replicator.health())["state"] == "failed" and h,
            message="state failed",
        )
        assert "is not an executable file" in failed["last_error"]
        assert failed["pid"] is None
    finally:
        replicator.stop()


def test_killing_the_supervising_process_takes_litestream_with_it(tmp_path):
    config_path = make_box(tmp_path / "box")
    script = (
        "import sys, time\n"
        "from edgebox.config import load_config\n"
        "from edgebox.replication.litestream import Replicator\n"
        "Replicator(load_config(sys.argv[1])).start()\n"
        "print('started', flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(config_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout.readline().strip() == "started"
        config = load_config(config_path)
        child = replication_status(config)["pid"]
        assert child and replication_status(config)["supervisor_running"]
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        wait_for(lambda: not alive(child), message="litestream to exit")
        status = replication_status(config)
        assert status["state"] == "stopped" and status["pid"] is None
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()
    with replicating(config_path) as replicator:  # a restarted box takes over cleanly
        assert replicator.health()["state"] == "running"


def test_kill9_mid_write_then_restore_into_a_fresh_box(tmp_path):
    config_path = make_box(tmp_path / "box", box_id="van-17")
    box = BoxProcess(config_path).start()
    try:
        with replicating(config_path):
            camera = pair(box)
            clips = dict(ingest(camera, MIB + n * 4099) for n in range(3))
            wait_for(
                lambda: set(clips) <= replicated_ids(config_path, tmp_path / "probe.db"),
                message="the clips to reach the replica",
            )
            status = json.loads(
                run_cli("replication", "status", "--json", config=config_path).stdout
            )
            assert status["state"] == "running" and status["replica_txid"]
            # A fourth clip is being written when the power goes.
            data = os.urandom(6 * MIB)
            location = camera.create(len(data)).headers["Location"]
            conn = _send_partial(box.url, box.cert, camera.token, location, 0, len(data), 0, None)
            conn.send(data[: 4 * MIB])
            partial = (
                config_path.parent / "data" / "uploads" / f"{location.rsplit('/', 1)[1]}.partial"
            )
            wait_for(lambda: partial.stat().st_size > 2 * MIB, message="the box to be writing")
            os.kill(status["pid"], signal.SIGKILL)
            box.kill9()
            conn.close()
    finally:
        box.stop()

    fresh = fresh_copy(config_path, tmp_path / "replacement")
    replica = lsconf.replica_dir(load_config(config_path))
    restored = run_cli("restore", "--from", str(replica), "--json", config=fresh)
    assert restored.returncode == 0, restored.stderr
    report = json.loads(restored.stdout)
    assert report["orphan_vault_files"] == [] and report["missing_vault_files"] == []
    assert report["replaced"] is None and report["recordings"] == 3
    check_restored(fresh, clips, tmp_path / "clip.mp4")

    # The rebuilt box runs and replicates to its own (new) replica.
    box = BoxProcess(fresh).start()
    try:
        with replicating(fresh):
            assert set(clips) <= wait_for(
                lambda: replicated_ids(fresh, tmp_path / "probe2.db"),
                message="the rebuilt box's first replica",
            )
    finally:
        box.stop()


def test_delete_the_database_restore_verify_list_play(tmp_path):
    config_path = make_box(tmp_path / "box")
    data_dir = config_path.parent / "data"
    box = BoxProcess(config_path).start()
    try:
        with replicating(config_path):
            camera = pair(box)
            clips = dict(ingest(camera, 2 * MIB + n) for n in range(2))
            wait_for(
                lambda: set(clips) <= replicated_ids(config_path, tmp_path / "probe.db"),
                message="the clips to reach the replica",
            )
            box.stop()
    finally:
        box.stop()
    for name in ("box.db", "box.db-wal", "box.db-shm"):
        (data_dir / name).unlink(missing_ok=True)

    restored = run_cli("restore", "--json", config=config_path)
    assert restored.returncode == 0, restored.stderr
    report = json.loads(restored.stdout)
    assert report["source"] == (data_dir / "replica").as_uri()
    aside = Path(report["replaced"])  # Litestream's stale local state, moved, not deleted
    assert (aside / ".box.db-litestream").is_dir()
    check_restored(config_path, clips, tmp_path / "clip.mp4")
    events = sqlite3.connect(data_dir / "box.db").execute(
        "SELECT details FROM custody WHERE event = 'database.restored'"
    )
    assert json.loads(events.fetchone()[0])["orphan_vault_files"] == []

    # The restored box carries on, and its replica keeps the same history.
    box = BoxProcess(config_path).start()
    try:
        with replicating(config_path):
            camera = pair(box)
            clips.update([ingest(camera, MIB)])
            wait_for(
                lambda: set(clips) <= replicated_ids(config_path, tmp_path / "probe.db"),
                message="the new clip to reach the replica",
            )
    finally:
        box.stop()
    probe = sqlite3.connect(tmp_path / "probe.db")
    assert probe.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    probe.close()
    check_restored(config_path, clips, tmp_path / "clip2.mp4")


def test_writes_after_the_last_replicated_position_leave_reported_orphans(tmp_path):
    config_path = make_box(tmp_path / "box")
    box = BoxProcess(config_path, env=NO_SUPERVISOR).start()
    try:
        camera = pair(box)
        with replicating(config_path):
            kept = dict([ingest(camera, MIB)])
            wait_for(
                lambda: set(kept) <= replicated_ids(config_path, tmp_path / "probe.db"),
                message="the first clip to reach the replica",
            )
        late_id, _ = ingest(camera, MIB)  # replication is down: this one never reaches it
        box.kill9()
    finally:
        box.stop()

    fresh = fresh_copy(config_path, tmp_path / "replacement")
    replica = lsconf.replica_dir(load_config(config_path))
    restored = run_cli("restore", "--from", str(replica), config=fresh)
    assert restored.returncode == 0, restored.stderr
    assert f"WARNING vault file {late_id}.ebv has no recording" in restored.stdout
    verified = json.loads(run_cli("verify", "--json", config=fresh).stdout)
    assert verified["problems"] == [f"vault file {late_id}.ebv has no recording in the database"]
    assert (fresh.parent / "data" / "vault" / f"{late_id}.ebv").exists()  # kept, never deleted
    listed = json.loads(run_cli("recordings", "list", "--json", config=fresh).stdout)
    assert {row["id"] for row in listed} == set(kept)


def test_restore_refuses_to_overwrite_without_force(tmp_path):
    config_path = make_box(tmp_path / "box")
    config = load_config(config_path)
    data_dir = config.data_dir
    with replicating(config_path):
        wait_for(lambda: replication_status(config)["replica_txid"], message="a snapshot")
        running = run_cli("restore", "--force", config=config_path)
        assert running.returncode == 2 and "stop it first" in running.stderr
    before, files = sha256(data_dir / "box.db"), listing(data_dir)

    refused = run_cli("restore", config=config_path)
    assert refused.returncode == 2
    assert "a database already exists" in refused.stderr and "--force" in refused.stderr
    assert (sha256(data_dir / "box.db"), listing(data_dir)) == (before, files)

    forced = run_cli("restore", "--force", "--json", config=config_path)
    assert forced.returncode == 0, forced.stderr
    aside = Path(json.loads(forced.stdout)["replaced"])
    assert aside.parent == data_dir and sha256(aside / "box.db") == before
    verified = run_cli("verify", config=config_path)
    assert verified.returncode == 0, verified.stdout


def test_a_bad_from_path_is_refused_and_changes_nothing(tmp_path):
    config_path = make_box(tmp_path / "box")
    data_dir = config_path.parent / "data"
    (data_dir / "box.db").unlink()  # even with no database to protect, nothing may change
    files = listing(data_dir)
    not_a_file = tmp_path / "notes.txt"
    not_a_file.write_text("hello")
    for source, why in (
        (tmp_path / "nowhere", "that path does not exist"),
        (not_a_file, "that is a file, not a folder"),
        (data_dir / "vault", "is not a Litestream replica"),
    ):
        result = run_cli("restore", "--from", str(source), config=config_path)
        assert result.returncode == 2, result.stdout
        assert result.stderr.startswith("error: ") and why in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert listing(data_dir) == files


def test_a_fresh_box_never_replicates_over_another_box_history(tmp_path):
    first = load_config(make_box(tmp_path / "first"))
    with replicating(first.base_dir / "edgebox.toml"):
        wait_for(lambda: replication_status(first)["replica_txid"], message="a snapshot")
    replica = lsconf.replica_dir(first)
    before = listing(replica)
    second = load_config(make_box(tmp_path / "second"))
    second = dataclasses.replace(
        second,
        replication=dataclasses.replace(second.replication, replica_dir=str(replica)),
    )
    replicator = Replicator(second, backoff=(5.0, 5.0)).start()
    try:
        health = replicator.health()
        assert health["state"] == "restarting" and health["pid"] is None
        assert "holds the history of another database" in health["last_error"]
    finally:
        replicator.stop()
    assert listing(replica) == before


def test_disabled_replication_starts_nothing_and_says_so(tmp_path):
    config_path = make_box(tmp_path / "box")
    config = load_config(config_path, environ=NO_SUPERVISOR)
    replicator = Replicator(config).start()
    health = replicator.health()
    replicator.stop()
    assert (health["state"], health["pid"]) == ("disabled", None)
    assert not (config.data_dir / "litestream.yml").exists()
    shown = run_cli("replication", "status", "--json", config=config_path, env=NO_SUPERVISOR)
    assert json.loads(shown.stdout)["state"] == "disabled"
