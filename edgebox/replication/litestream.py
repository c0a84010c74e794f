"""Litestream replication of the box database: a supervised child process, its health, restore.

`Replicator` runs `litestream replicate` as a child of the box, restarts it
with back-off when it dies, and writes its state to
`<data_dir>/replication-state.json` so that `edgebox status` in another
process can report it. `restore_database` rebuilds `box.db` from the replica
(or from central's copy of it), checks it, and never deletes the database it
replaces. See docs/replication.md.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from edgebox.clock import iso
from edgebox.config import Config
from edgebox.lowlevel.durable import atomic_write, fsync_dir
from edgebox.replication import config as lsconf
from edgebox.replication.config import MARKER_NAME, ReplicationError

log = logging.getLogger(__name__)

STATE_NAME = "replication-state.json"
LOG_NAME = "litestream.log"
LOG_LIMIT = 1 << 20
FAILED_AFTER = 5  # consecutive quick deaths before the state reads "failed" (it keeps retrying)

__all__ = [
    "ReplicationError",
    "Replicator",
    "claim_replica",
    "health_job",
    "orphan_vault_files",
    "refuse_if_running",
    "replication_status",
    "restore_database",
]


# -- processes ------------------------------------------------------------------------------


def _process_identity(pid: int | None) -> str | None:
    """boot id + start time of a live, non-zombie process: survives pid reuse checks."""
    if not pid:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return f"{boot}:{fields[19]}"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # PR_SET_PDEATHSIG: if the box is killed (even -9), Litestream gets SIGTERM and syncs out,
    # so a restarted box never finds two replicators on one database.
    _LIBC.prctl(1, signal.SIGTERM)


def _end_process(pid: int, timeout: float) -> None:
    """SIGTERM a process that is not our child, then SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _process_identity(pid) is None:
                return
            time.sleep(0.05)


# -- state shared across processes -----------------------------------------------------------


def _state_path(config: Config) -> Path:
    return config.data_dir / STATE_NAME


def _read_state(config: Config) -> dict:
    try:
        return json.loads(_state_path(config).read_text())
    except (OSError, ValueError):
        return {}


def _log_tail(path: Path, start: int = 0, code: int | None = None, lines: int = 5) -> str | None:
    """The child's last warning and error lines since `start`; its last lines if it failed."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(start, handle.seek(0, os.SEEK_END) - 16384))
            text = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    picked = [
        line
        for line in text
        if "level=ERROR" in line or "level=WARN" in line or line.startswith("Error")
    ]
    if not picked and code is not None and code > 0:
        picked = text
    return "\n".join(picked[-lines:]) or None


def _report(config: Config, state: dict, alive: bool) -> dict:
    """Health as plain data: supervisor state plus the replica's position and lag."""
    rep = config.replication
    report = {
        "enabled": rep.enabled,
        "state": state.get("state", "not started"),
        "pid": state.get("pid") if alive else None,
        "owner_pid": state.get("owner_pid"),
        "restarts": state.get("restarts", 0),
        "started_at": state.get("started_at"),
        "last_exit": state.get("last_exit"),
        "last_error": state.get("last_error"),
        "replica": None,
        "replica_txid": None,
        "replica_updated_at": None,
        "local_txid": None,
        "lag_txids": None,
        "lag_seconds": None,
        "log": str(config.data_dir / LOG_NAME),
    }
    if not rep.enabled:
        # Litestream may run as its own systemd unit (deploy/): still show how far it has got.
        report["state"] = "disabled"
    try:
        report["replica"] = lsconf.replica_url(config)
    except ReplicationError as exc:
        report["last_error"] = exc.message
        return report
    local = lsconf.position(lsconf.meta_dir(config))
    report["local_txid"] = local and local["txid"]
    if rep.s3_url:
        return report  # reading a remote replica could block; Litestream logs its errors
    remote = lsconf.position(lsconf.replica_dir(config))
    if remote is None:
        return report
    report["replica_txid"] = remote["txid"]
    report["replica_updated_at"] = iso(_utc(remote["updated"]))
    if local:
        report["lag_txids"] = max(0, int(local["txid"], 16) - int(remote["txid"], 16))
    report["lag_seconds"] = _lag_seconds(config, remote["updated"])
    return report


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)


def _lag_seconds(config: Config, replica_updated: float) -> float:
    """0 when the replica is newer than the database's last write, else how long it has waited."""
    db = lsconf.database_path(config)
    wal = db.with_name(db.name + "-wal")
    try:
        last_write = (wal if wal.exists() else db).stat().st_mtime
    except FileNotFoundError:
        return 0.0
    if last_write <= replica_updated:
        return 0.0
    return round(max(0.0, time.time() - replica_updated), 1)


def replication_status(config: Config) -> dict:
    """Replication health read from disk, for a process other than the box (`edgebox status`)."""
    state = _read_state(config)
    owner_alive = bool(state) and _process_identity(state.get("owner_pid")) == state.get(
        "owner_identity"
    )
    child_alive = bool(state) and _process_identity(state.get("pid")) == state.get("pid_identity")
    if state and not owner_alive and state.get("state") not in ("stopped", "disabled"):
        state = {**state, "state": "stopped", "last_exit": state.get("last_exit")}
    report = _report(config, state, child_alive)
    report["supervised_here"] = False
    report["supervisor_running"] = owner_alive
    return report


# -- the replica's identity ------------------------------------------------------------------


def _lineage(db_path: Path) -> str | None:
    """The hash of the database's first custody entry: which box history this file carries."""
    try:
        conn = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT hash FROM custody WHERE seq = 1").fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def claim_replica(config: Config) -> None:
    """Mark an empty replica folder as this box's, or refuse one that holds another history.

    Refuses to replicate a different database over a replica that holds a box's history.

    Litestream 0.5 accepts any database into a replica whose position is ahead and makes it
    the newest restorable state, so a freshly initialised box would hide the old history.
    """
    if config.replication.s3_url:
        return
    folder = lsconf.replica_dir(config)
    marker = folder / MARKER_NAME
    ours = _lineage(lsconf.database_path(config))
    if ours is None:
        raise ReplicationError(
            f"cannot read the custody log of {lsconf.database_path(config)} to tell which "
            "history it carries"
        )
    try:
        theirs = json.loads(marker.read_text())
    except FileNotFoundError:
        theirs = None
    except (OSError, ValueError) as exc:
        raise ReplicationError(f"cannot read the replica marker {marker}: {exc}") from None
    if theirs is None:
        if lsconf.ltx_files(folder):
            raise ReplicationError(
                f"the replica folder {folder} already holds a Litestream backup that edgebox "
                "did not mark as this box's; restore from it (`edgebox restore`) or move it "
                "aside before replicating there"
            )
        atomic_write(
            marker,
            json.dumps(
                {"box_id": config.box.box_id, "custody_genesis": ours, "created_at": iso()},
                indent=2,
            ).encode(),
        )
        return
    if theirs.get("custody_genesis") != ours:
        raise ReplicationError(
            f"the replica at {folder} holds the history of another database (box "
            f"{theirs.get('box_id')!r}, first custody entry {theirs.get('custody_genesis')}), "
            "and this database would hide it: restore from it with `edgebox restore`, or move "
            "that folder aside to start a new replica"
        )


# -- the supervisor --------------------------------------------------------------------------


class Replicator:
    """`litestream replicate` as a supervised child: restarted with back-off, stopped with the box.

    Give it its own stop event (the default) rather than the box's: the box writes its last
    custody checkpoint after setting its event, and Litestream should still ship that.
    """

    def __init__(
        self,
        config: Config,
        stop: threading.Event | None = None,
        *,
        interval: float = 0.5,
        backoff: tuple[float, float] = (1.0, 60.0),
        stable_after: float = 60.0,
        stop_timeout: float = 10.0,
    ):
        self.config = config
        self.stop_event = stop or threading.Event()
        self.interval = interval
        self.backoff = backoff
        self.stable_after = stable_after
        self.stop_timeout = stop_timeout
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._state = "disabled" if not config.replication.enabled else "starting"
        self._failures = 0
        self._spawned = 0.0
        self._log_start = 0
        self._next_start = 0.0
        self._started_at: str | None = None
        self._last_exit: str | None = None
        self._last_error: str | None = None
        self._thread: threading.Thread | None = None
        self._first_attempt = threading.Event()
        self._lock = threading.Lock()

    @property
    def log_path(self) -> Path:
        """Litestream's own log (stdout and stderr of the child)."""
        return self.config.data_dir / LOG_NAME

    def start(self) -> Replicator:
        """Start supervising; returns once the first launch has been tried."""
        if not self.config.replication.enabled:
            self._save()
            return self
        self._thread = threading.Thread(target=self._run, name="litestream-supervisor", daemon=True)
        self._thread.start()
        self._first_attempt.wait(15)
        return self

    def stop(self) -> None:
        """Stop Litestream (SIGTERM lets it ship what it has) and the supervisor."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(self.stop_timeout + 10)
            self._thread = None

    def health(self) -> dict:
        """State (running/restarting/failed/stopped/disabled), pid, restarts, errors, lag."""
        with self._lock:
            state = self._state_dict()
            alive = self._proc is not None and self._proc.poll() is None
        report = _report(self.config, state, alive)
        report["supervised_here"] = True
        report["supervisor_running"] = self._thread is not None
        return report

    # -- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._launch(restart=False)
            self._first_attempt.set()
            while not self.stop_event.wait(self.interval):
                self._tick()
        except Exception:  # a supervisor that dies silently is worse than a logged one
            log.exception("litestream supervisor failed")
            raise
        finally:
            self._first_attempt.set()
            self._terminate()
            with self._lock:
                self._state = "stopped"
            self._save()

    def _tick(self) -> None:
        proc = self._proc
        if proc is None:
            if time.monotonic() >= self._next_start:
                self._launch(restart=True)
            return
        code = proc.poll()
        if code is None:
            if self._failures and time.monotonic() - self._spawned > self.stable_after:
                self._failures = 0
            return
        with self._lock:
            self._proc = None
            self._last_exit = (
                f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            )
            self._last_error = _log_tail(self.log_path, self._log_start, code)
        quick = time.monotonic() - self._spawned < self.stable_after
        self._failures = self._failures + 1 if quick else 1
        self._schedule_retry()
        log.warning("litestream %s; restarting", self._last_exit)

    def _schedule_retry(self) -> None:
        base, ceiling = self.backoff
        delay = min(ceiling, base * 2 ** max(0, self._failures - 1))
        self._next_start = time.monotonic() + delay
        with self._lock:
            self._state = "failed" if self._failures >= FAILED_AFTER else "restarting"
        self._save()

    def _launch(self, restart: bool) -> None:
        try:
            proc = self._spawn()
        except (ReplicationError, OSError) as exc:
            message = exc.message if isinstance(exc, ReplicationError) else str(exc)
            with self._lock:
                self._last_error = message
                self._last_exit = "could not start"
            self._failures += 1
            self._spawned = time.monotonic()
            log.error("cannot start litestream: %s", message)
            self._schedule_retry()
            return
        with self._lock:
            self._proc = proc
            self._spawned = time.monotonic()
            self._started_at = iso()
            self._state = "running"
            if restart:
                self.restarts += 1
        self._save()

    def _spawn(self) -> subprocess.Popen:
        binary = lsconf.litestream_binary(self.config)
        if not self.config.replication.s3_url:
            folder = lsconf.replica_dir(self.config)
            try:
                folder.mkdir(exist_ok=True)
            except FileNotFoundError:
                raise ReplicationError(
                    f"the replica's parent folder {folder.parent} does not exist "
                    "(is the second medium mounted?)"
                ) from None
        if not lsconf.database_path(self.config).exists():
            raise ReplicationError(f"no database at {lsconf.database_path(self.config)}")
        claim_replica(self.config)
        self._evict_stray()
        path = lsconf.write(self.config)
        if self.log_path.exists() and self.log_path.stat().st_size > LOG_LIMIT:
            self.log_path.replace(self.log_path.with_name(LOG_NAME + ".1"))
        with open(self.log_path, "ab") as out:
            self._log_start = out.tell()
            return subprocess.Popen(
                [str(binary), "replicate", "-config", str(path), "-no-expand-env"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                close_fds=True,
                preexec_fn=_die_with_parent if _LIBC is not None else None,
            )

    def _evict_stray(self) -> None:
        """End a Litestream left over by a killed box; refuse if another box supervises one."""
        state = _read_state(self.config)
        pid = state.get("pid")
        if not pid or _process_identity(pid) != state.get("pid_identity"):
            return
        if str(lsconf.config_path(self.config)) not in _cmdline(pid):
            return
        owner = state.get("owner_pid")
        if owner != os.getpid() and _process_identity(owner) == state.get("owner_identity"):
            raise ReplicationError(
                f"another edgebox process (pid {owner}) already runs Litestream (pid {pid}) "
                "for this database"
            )
        log.warning("ending a Litestream (pid %s) left over by a box that was killed", pid)
        _end_process(pid, self.stop_timeout)

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with self._lock:
            self._proc = None

    def _state_dict(self) -> dict:
        proc = self._proc
        pid = proc.pid if proc is not None else None
        return {
            "state": self._state,
            "pid": pid,
            "pid_identity": _process_identity(pid),
            "owner_pid": os.getpid(),
            "owner_identity": _process_identity(os.getpid()),
            "restarts": self.restarts,
            "started_at": self._started_at,
            "last_exit": self._last_exit,
            "last_error": self._last_error,
            "updated_at": iso(),
        }

    def _save(self) -> None:
        """Write the state for other processes (only on changes: the data disk is flash)."""
        with self._lock:
            state = self._state_dict()
        try:
            atomic_write(_state_path(self.config), json.dumps(state, indent=2).encode())
        except OSError as exc:  # a full disk must not stop replication
            log.warning("cannot write %s: %s", _state_path(self.config), exc)


def health_job(box, max_lag_seconds: float = 60.0) -> dict:
    """Scheduled check: log a warning when replication is not running or falls behind."""
    replicator = getattr(box, "replicator", None)
    report = replicator.health() if replicator is not None else replication_status(box.config)
    if report["state"] not in ("running", "disabled"):
        log.warning("replication is %s: %s", report["state"], report["last_error"])
    elif (report["lag_seconds"] or 0) > max_lag_seconds:
        log.warning("replication lags %.0f s behind the database", report["lag_seconds"])
    return report


# -- restore ---------------------------------------------------------------------------------


def _source(config: Config, from_path: str | None) -> str:
    """The replica URL to restore from, checked before anything on disk changes."""
    if from_path and "://" in from_path and not from_path.startswith("file://"):
        return from_path  # a remote replica (s3://...): Litestream reports what it finds
    if from_path:
        folder = Path(from_path.removeprefix("file://")).expanduser().resolve()
    elif config.replication.s3_url:
        return config.replication.s3_url
    else:
        folder = lsconf.replica_dir(config)
    if not folder.exists():
        raise ReplicationError(f"no replica at {folder}: that path does not exist", status=400)
    if not folder.is_dir():
        raise ReplicationError(f"no replica at {folder}: that is a file, not a folder", status=400)
    if not lsconf.ltx_files(folder):
        raise ReplicationError(
            f"{folder} is not a Litestream replica (no ltx/ folder with backup files); give "
            "the folder that holds ltx/, e.g. the box's replica_dir or central's copy of it",
            status=400,
        )
    return folder.as_uri()


def refuse_if_running(config: Config) -> None:
    """Raise ReplicationError while the box runs: its replication supervisor is alive, or
    something answers on its listen address. Offline work (restore, adoption) checks this."""
    state = _read_state(config)
    owner = state.get("owner_pid")
    supervising = state.get("state") not in (None, "stopped", "disabled")
    if supervising and _process_identity(owner) == state.get("owner_identity"):
        raise ReplicationError(
            f"the box is running (pid {owner} supervises its replication): stop it first"
        )
    host, port = config.listen_address
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    try:
        with socket.create_connection((host, port), timeout=0.5):
            pass
    except OSError:
        return
    raise ReplicationError(
        f"something answers on {host}:{port}, the box's listen address: stop the box first"
    )


def orphan_vault_files(db_path: Path, vault_dir: Path) -> dict:
    """Vault files with no recording in the database, and recordings whose vault file is gone."""
    conn = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        known = {
            row[0]
            for row in conn.execute(
                "SELECT vault_file FROM recordings WHERE sync_state != 'deleted'"
            )
        }
    finally:
        conn.close()
    present = {p.name for p in vault_dir.glob("*.ebv")} if vault_dir.is_dir() else set()
    return {"orphans": sorted(present - known), "missing": sorted(known - present)}


def _checked(config: Config, restored: Path) -> dict:
    """Integrity, schema and custody chain of a restored file, or ReplicationError."""
    from edgebox import custody
    from edgebox.db import Store
    from edgebox.keys import Keyring

    conn = sqlite3.connect(restored, timeout=10)
    try:
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise ReplicationError(f"the restored database does not open: {exc}") from None
    finally:
        conn.close()
    if result != ["ok"]:
        raise ReplicationError(f"the restored database fails integrity_check: {result[:5]}")
    if not {"recordings", "custody", "checkpoints"} <= tables:
        raise ReplicationError("the replica does not hold an edgebox database")
    store = Store(restored)
    try:
        chain = custody.verify_chain(
            store, config.box.box_id, Keyring(config.data_dir / "keys").identity_public()
        )
        counts = store.one("SELECT COUNT(*) AS n FROM recordings")
    finally:
        store.close()
    if chain.problems:
        raise ReplicationError(
            "the restored custody chain does not verify with this box's identity (a replica of "
            f"another box, or other keys?): {'; '.join(chain.problems[:3])}"
        )
    return {"recordings": counts["n"], "custody_entries": chain.entries, "head": chain.head_hash}


def _record_restore(config: Config, restored: Path, details: dict) -> None:
    """Log the restore in the restored chain and sign a checkpoint over it (central accepts the
    restored history only with the box's signature on it), then fold the WAL in."""
    from edgebox import custody
    from edgebox.db import Store
    from edgebox.keys import Keyring
    from edgebox.replication import restored_seals

    store = Store(restored)
    try:
        found = restored_seals.find(store, config.data_dir / "vault")
        details["found_sealed"] = [rec["id"] for rec in found]
        custody.record(store, "database.restored", "operator", None, details)
        restored_seals.record(store, found)
        identity = Keyring(config.data_dir / "keys").identity()
        custody.make_checkpoint(store, config.box.box_id, identity)
    finally:
        store.close()
    conn = sqlite3.connect(restored, timeout=10)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    wal = restored.with_name(restored.name + "-wal")
    if busy or (wal.exists() and wal.stat().st_size):
        raise ReplicationError(f"could not fold {wal} into the restored database")


def restore_database(
    config: Config, from_path: str | None = None, *, force: bool = False, timeout: float = 600
) -> dict:
    """Rebuild `box.db` with `litestream restore`; the old database is moved aside, never deleted.

    Recordings ingested after the replica's last position are missing from the result; their
    vault files stay and are reported as orphans here and by `edgebox verify`.
    """
    started = time.monotonic()
    source = _source(config, from_path)
    data = config.data_dir
    db = lsconf.database_path(config)
    if not (data / "keys" / "identity.key").exists():
        raise ReplicationError(
            f"no box at {data}: its keys/ are missing; put the box's keys back (or "
            "`edgebox init` it) before restoring its database",
            status=400,
        )
    if db.exists() and not force:
        raise ReplicationError(
            f"a database already exists at {db}; nothing was changed. Pass --force to move it "
            "aside (into data/replaced-TIME/) and restore over it",
        )
    refuse_if_running(config)
    binary = lsconf.litestream_binary(config)
    stamp = iso().replace(":", "").replace("-", "").replace(".", "")
    tmp = data / f"{db.name}.restoring-{stamp}"
    command = [str(binary), "restore", "-o", str(tmp), "-integrity-check", "full", "-json", source]
    try:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ReplicationError(
                f"litestream restore from {source} took over {timeout} s"
            ) from None
        if done.returncode != 0 or not tmp.exists():
            why = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ReplicationError(f"litestream could not restore from {source}: {why}")
        summary = json.loads(done.stdout or "{}")
        checked = _checked(config, tmp)
        vault = orphan_vault_files(tmp, data / "vault")
        aside = _aside(config, stamp)
        details = {
            "source": source,
            "txid": summary.get("txid"),
            "restored_head": {"seq": checked["custody_entries"], "hash": checked["head"]},
            "replaced": str(aside[0]) if aside else None,
            "orphan_vault_files": vault["orphans"],
            "missing_vault_files": vault["missing"],
        }
        _record_restore(config, tmp, details)
        if aside:
            _move_aside(*aside)
        tmp.replace(db)
        fsync_dir(data)
    finally:
        for leftover in data.glob(f"{tmp.name}*"):
            leftover.unlink()  # our scratch copy of the replica (WAL folded in), never the box's
    return {
        "restored": str(db),
        **details,
        "recordings": checked["recordings"],
        "custody_entries": checked["custody_entries"] + 1 + len(details["found_sealed"]),
        "seconds": round(time.monotonic() - started, 2),
    }


def _aside(config: Config, stamp: str) -> tuple[Path, list[Path]] | None:
    """What a restore moves out of the way: the database, its WAL and Litestream's state."""
    db = lsconf.database_path(config)
    parts = [
        db,
        db.with_name(db.name + "-wal"),
        db.with_name(db.name + "-shm"),
        lsconf.meta_dir(config),
    ]
    present = [p for p in parts if p.exists()]
    return (config.data_dir / f"replaced-{stamp}", present) if present else None


def _move_aside(folder: Path, present: list[Path]) -> None:
    """Move those parts together into `folder` (so the old database stays whole)."""
    folder.mkdir()
    for path in present:
        path.rename(folder / path.name)
    fsync_dir(folder)
    fsync_dir(folder.parent)
