"""The parts a soak drives, all real: a box (`edgebox run`), Mosquitto, central
(`edgebox central run`), simulated cameras (edgebox.camera.CameraSim, the code of
`edgebox camera-sim`), a TCP proxy between box and broker, and, as root, a small ext4
filesystem on a loop device under the box."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter, deque
from pathlib import Path

import psutil
import requests

from bench.common import Proc, clean_env, edgebox_cmd, free_port, run_cli
from bench.tcp_proxy import TcpProxy
from edgebox.camera import CameraSim
from edgebox.provision import CONFIG_NAME, init_box
from tests.brokers import Mosquitto, TestPKI

BOX_ID = "soak-box"
SECRET = "soak-supervisor-secret"
MIB = 1 << 20
RESERVE = 24 * MIB  # ingest.reserve_free_bytes of the soak box: creation answers 507 below it
MARKER = 48  # bytes of each clip kept to look for on the box's disk (plaintext scan)


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _dirty_bytes() -> int:
    """The machine's page cache not yet written back (Dirty in /proc/meminfo)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Dirty:"):
            return int(line.split()[1]) * 1024
    return 0


def unmount(mount: Path, lazy: bool = True) -> bool:
    """Unmount `mount`, retrying while a file being closed keeps it busy (10 s); then, with
    `lazy`, detach it anyway. Returns whether it was unmounted outright."""
    for _ in range(50):
        if _run("umount", str(mount)).returncode == 0:
            return True
        time.sleep(0.2)
    if lazy:
        _run("umount", "-l", str(mount))
    return False


class LoopDisk:
    """A small ext4 filesystem in a file, loop-mounted (root only); `power_cut()` leaves
    on it only what had reached the medium."""

    def __init__(self, folder: Path, mib: int):
        self.image, self.mount = folder / "disk.img", folder / "disk"
        self.mount.mkdir(parents=True, exist_ok=True)
        self.problem = ""
        if os.geteuid() != 0:
            self.problem = "not root: no loop mount"
            return
        with open(self.image, "wb") as handle:
            handle.truncate(mib * MIB)
        made = _run("mkfs.ext4", "-q", "-m", "0", "-F", str(self.image))
        mounted = _run("mount", "-o", "loop", str(self.image), str(self.mount))
        if made.returncode or mounted.returncode:
            self.problem = (made.stderr or mounted.stderr).strip()

    @property
    def mounted(self) -> bool:
        """Whether the loop filesystem is in use."""
        return not self.problem

    def power_cut(self) -> tuple[float, int]:
        """What a power cut leaves on the medium: the image as the loop device has written it,
        copied at once (writes still in the page cache above it are not in it), mounted in
        place of the old one (ext4 replays its journal). The processes using the disk must be
        dead. Returns (seconds it took, bytes of dirty page cache dropped with the old disk)."""
        started = time.monotonic()
        dirty = _dirty_bytes()
        cut = self.image.with_name("disk.cut.img")
        copied = _run("cp", "--sparse=always", str(self.image), str(cut))
        if copied.returncode:
            raise RuntimeError(f"power cut: copy failed: {copied.stderr}")
        if not unmount(self.mount, lazy=False):  # the old disk goes, with its page cache
            raise RuntimeError("power cut: the old disk stays busy")
        cut.replace(self.image)
        mounted = _run("mount", "-o", "loop", str(self.image), str(self.mount))
        if mounted.returncode:
            raise RuntimeError(f"power cut: mount after the cut failed: {mounted.stderr}")
        return time.monotonic() - started, dirty

    def close(self) -> None:
        """Unmount (lazily if it stays busy) and remove the image."""
        if self.mounted:
            unmount(self.mount)
        self.image.unlink(missing_ok=True)


class Camera(threading.Thread):
    """One simulated camera recording short clips and offloading them, until told to drain
    (finish what is queued, record nothing new) or to quit."""

    def __init__(self, sim: CameraSim, seconds: float, chunk: int, said: deque):
        super().__init__(name=f"camera-{sim.serial}", daemon=True)
        self.sim, self.seconds, self.chunk = sim, seconds, chunk
        self.said = said  # the camera's last log lines, shown when a cycle does not recover
        self.recording = threading.Event()
        self.recording.set()
        self.quit = threading.Event()
        self.idle = threading.Event()
        self.delivered: dict[str, tuple[str, str]] = {}  # recording id -> (sha256, file)
        self.markers: dict[str, bytes] = {}  # file -> bytes from inside the clip
        self.problems: list[str] = []
        self.statuses: Counter = Counter()  # every HTTP status the box answered
        connect = sim._tus._connect  # noqa: SLF001 - count the answers on the camera's own link

        def counted():
            session = connect()
            session.hooks["response"].append(
                lambda r, *a, **k: self.statuses.update([r.status_code])
            )
            return session

        sim._tus._connect = counted  # noqa: SLF001

    def run(self) -> None:
        """Record and offload until `quit`."""
        while not self.quit.is_set():
            if self.recording.is_set():
                path = self.sim.record(self.seconds, pre_event_seconds=1)
                data = path.read_bytes()
                middle = len(data) // 2
                self.markers[path.name] = data[middle : middle + MARKER]
            try:
                results = self.sim.upload_pending(self.chunk, self.quit)
            except Exception as exc:  # noqa: BLE001 - a soak notes it and carries on
                self.problems.append(f"upload_pending raised {exc!r}")
                results = []
            for result in results:
                if result.delivered:
                    name = Path(result.path).name
                    self.delivered[result.recording_id] = (result.evidence_sha256, name)
                elif result.status in ("rejected", "mismatch"):
                    self.problems.append(f"{result.status}: {result.message}")
            queued = [e for e in self.sim.pending if e["status"] == "queued"]
            if not self.recording.is_set():
                (self.idle.clear if queued else self.idle.set)()
                self.quit.wait(0.3)

    def drain(self) -> None:
        """Record nothing new; `idle` is set once the queue is empty."""
        self.idle.clear()
        self.recording.clear()

    def resume(self) -> None:
        """Record and offload again."""
        self.idle.clear()
        self.recording.set()

    def retry_now(self) -> None:
        """Forget the box's Retry-After (after a full disk the box asks for 30 s; the soak
        has freed the disk and does not wait that long)."""
        self.sim._not_before = 0.0  # noqa: SLF001 - the soak's shortcut, said in its report


class World:
    """Everything a soak runs, started in order and stopped in reverse."""

    def __init__(self, root: Path, cameras: int, clip_seconds: float, disk_mib: int):
        self.root = root
        self.disk = LoopDisk(root / "medium", disk_mib)
        box_parent = self.disk.mount if self.disk.mounted else root / "medium" / "disk"
        self.box_dir = box_parent / "box"
        self.store = root / "central"
        self.pki = TestPKI(root / "pki")
        self.broker = Mosquitto(root / "broker", self.pki).start()
        self.proxy = TcpProxy(self.broker.port_tls_cert)
        self.port = free_port()
        init_box(
            self.box_dir,
            box_id=BOX_ID,
            organisation="Soak",
            site="Soak van",
            listen=f"127.0.0.1:{self.port}",
            supervisor="supervisor",
            review_secret=SECRET,
            demo=True,
        )
        self.config = self.box_dir / CONFIG_NAME
        self.box: Proc | None = None
        self.central: Proc | None = None
        self.start_central()
        self.start_box()
        self.cameras = [self._camera(n, clip_seconds) for n in range(cameras)]
        for camera in self.cameras:
            camera.start()

    # -- the box ------------------------------------------------------------------------
    def box_env(self) -> dict:
        """The soak box's environment: upstream through the proxy, a small disk reserve."""
        cert, key = self.pki.client_cert(BOX_ID)
        return clean_env(
            EDGEBOX_UPSTREAM__BROKER=f"mqtts://127.0.0.1:{self.proxy.port}",
            EDGEBOX_UPSTREAM__CA=str(self.broker.ca_path),
            EDGEBOX_UPSTREAM__CLIENT_CERT=str(cert),
            EDGEBOX_UPSTREAM__CLIENT_KEY=str(key),
            EDGEBOX_UPSTREAM__ACK_TIMEOUT_SECONDS="3",
            EDGEBOX_UPSTREAM__CHUNK_SIZE=str(128 * 1024),
            EDGEBOX_INGEST__RESERVE_FREE_BYTES=str(RESERVE),
            EDGEBOX_REPLICATION__SHIP_INTERVAL_SECONDS="10",
            PYTHONUNBUFFERED="1",
        )

    def start_box(self, timeout: float = 60) -> float:
        """Start `edgebox run` and wait until it answers; seconds it took."""
        started = time.monotonic()
        argv = [*edgebox_cmd(), "run", "--config", str(self.config)]
        argv += ["--listen", f"127.0.0.1:{self.port}"]
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        self.box = Proc("box", argv, logs / f"box-{time.time_ns()}.log", self.box_env())
        cert = self.box_dir / "data" / "keys" / "tls.crt"
        while time.monotonic() - started < timeout:
            if not self.box.alive():
                raise RuntimeError(f"the box exited:\n{self.box.tail()}")
            with contextlib.suppress(requests.RequestException):
                requests.get(f"{self.box_url}/api/v1/health", verify=str(cert), timeout=1)
                return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError(f"the box did not answer:\n{self.box.tail()}")

    @property
    def box_url(self) -> str:
        """Where cameras reach the box."""
        return f"https://127.0.0.1:{self.port}"

    def kill_box(self, group: bool = False) -> None:
        """kill -9 the box (with `group`, Litestream too, as a power cut would)."""
        assert self.box is not None
        target = os.killpg if group else os.kill
        with contextlib.suppress(ProcessLookupError):
            target(self.box.pid, signal.SIGKILL)
        self.box.popen.wait(timeout=30)
        deadline = time.monotonic() + 15
        while self.litestream_pids() and time.monotonic() < deadline:
            time.sleep(0.1)  # Litestream leaves when its parent dies (PR_SET_PDEATHSIG)
        self.box.stop()

    def litestream_pids(self) -> list[int]:
        """Litestream processes started for this box (children or orphans of the group)."""
        found = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                line = " ".join(proc.info["cmdline"] or [])
                if "litestream" in (proc.info["name"] or "") and str(self.box_dir) in line:
                    found.append(proc.pid)
        return found

    def box_db(self, sql: str, params=()) -> list[tuple]:
        """Rows from the box database, read-only (the box owns the writer)."""
        with contextlib.closing(
            sqlite3.connect(f"file:{self.box_dir / 'data' / 'box.db'}?mode=ro", uri=True)
        ) as db:
            db.execute("PRAGMA busy_timeout = 5000")
            return db.execute(sql, params).fetchall()

    # -- central ------------------------------------------------------------------------
    def start_central(self) -> None:
        """Start `edgebox central run` with one worker, straight to the broker."""
        cert, key = self.pki.client_cert("central")
        argv = [*edgebox_cmd(), "central", "run", "--broker", self.broker.url_tls_cert]
        argv += ["--store", str(self.store), "--workers", "1", "--ca", str(self.broker.ca_path)]
        argv += ["--cert", str(cert), "--key", str(key)]
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        self.central = Proc("central", argv, logs / f"central-{time.time_ns()}.log", clean_env())

    def central_db(self, sql: str, params=()) -> list[tuple]:
        """Rows from central's index, read-only."""
        path = self.store / "central.db"
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            db.execute("PRAGMA busy_timeout = 5000")
            return db.execute(sql, params).fetchall()

    # -- cameras ------------------------------------------------------------------------
    def _camera(self, number: int, clip_seconds: float) -> Camera:
        paired = json.loads(run_cli("cameras", "pair", "--json", "--config", str(self.config)))
        said: deque = deque(maxlen=40)
        sim = CameraSim(
            self.root / f"camera-{number}",
            serial=f"SOAK-{number:03d}",
            width=320,
            height=240,
            fps=10,
            backoff=0.2,
            max_backoff=2.0,
            max_attempts=60,
            timeout=10,
            log=lambda line: said.append(f"{time.strftime('%H:%M:%S')} {line}"),
        )
        sim.pair(self.box_url, paired["code"], paired["cert_sha256"])
        return Camera(sim, clip_seconds, chunk=32 * 1024, said=said)

    def drain_cameras(self, timeout: float) -> bool:
        """Stop recording; wait until every camera's queue is delivered."""
        for camera in self.cameras:
            camera.drain()
        deadline = time.monotonic() + timeout
        return all(c.idle.wait(max(0.0, deadline - time.monotonic())) for c in self.cameras)

    def resume_cameras(self) -> None:
        """Record again."""
        for camera in self.cameras:
            camera.resume()

    # -- the disk -----------------------------------------------------------------------
    def fill_disk(self) -> Path | None:
        """Fill the box's filesystem until less than the ingest reserve is free."""
        if not self.disk.mounted:
            return None
        filler = self.disk.mount / "filler"
        free = shutil.disk_usage(self.disk.mount).free - RESERVE // 2
        with open(filler, "wb") as handle:
            block = b"\0" * MIB
            for _ in range(max(0, free // MIB)):
                handle.write(block)
        return filler

    def close(self) -> None:
        """Stop everything in reverse order."""
        for camera in self.cameras:
            camera.quit.set()
        for camera in self.cameras:
            camera.join(30)
            camera.sim.close()
        for proc in (self.box, self.central):
            if proc is not None:
                proc.stop()
        self.proxy.close()
        self.broker.stop()
        self.disk.close()


def jitter(low: float, high: float) -> float:
    """A random pause between `low` and `high` seconds."""
    return random.uniform(low, high)  # noqa: S311 - a schedule, not security
