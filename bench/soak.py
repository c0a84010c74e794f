"""Soak under faults: a real box, Mosquitto, central and simulated cameras, and a schedule
of faults (kill -9 of the box during ingest and during sync, broker restarts, link cuts
and stalls through a TCP proxy, a disk filled past the ingest reserve, central killed,
Litestream killed, a power cut of the box's loop-mounted disk).

After each cycle the cameras drain and the soak checks: every clip a camera was told was
delivered is at central once with the camera's hash, `edgebox verify` passes, no clip's
bytes are on the box's disk, nothing unsynced was deleted. It samples the box's RSS and
open files, and each minute what the box says of its own memory (its `release_memory` job:
the heaps' bytes in use, SQLite's share), and times each fault's recovery (fault healed ->
everything at central).

    python bench/soak.py --minutes 15            # as many cycles as fit
    python bench/soak.py --cycles 5 --no-write   # a few cycles, print only
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from bench.common import edgebox_cmd, exit_on_sigterm, log  # noqa: E402
from bench.plaintext_scan import SHORTEST, Markers  # noqa: E402
from bench.soak_report import BOX_KILLING, report  # noqa: E402
from bench.soak_world import World, jitter  # noqa: E402
from edgebox.errors import EdgeboxError  # noqa: E402
from edgebox.keys import x25519_private_from_file  # noqa: E402
from edgebox.recordings import data_key_for  # noqa: E402
from edgebox.vault import Reader  # noqa: E402

MEMORY_JOB = "job:release_memory"  # the job's record in the box's sync_state
PLANTED = "planted-by-soak"  # the file the final scan must find (its own check)
# Recordings the box still has to sync or seal (a shredded one, 'deleted', is done).
BACKLOG = "sync_state NOT IN ('synced', 'deleted') OR (sync_state = 'synced' AND sealed = 0)"
# Kill-heavy, as the counts are (100 box kills to 20 broker or link flaps): 13 of
# every 20 cycles kill the box, 4 flap the broker or the link.
SCHEDULE = [
    "kill_ingest",
    "kill_sync",
    "broker_restart",
    "kill_ingest",
    "kill_sync",
    "net_cut",
    "kill_ingest",
    "power_cut",
    "central_restart",
    "kill_sync",
    "kill_ingest",
    "net_stall",
    "kill_sync",
    "litestream_kill",
    "kill_ingest",
    "broker_restart",
    "kill_sync",
    "disk_full",
    "power_cut",
    "kill_ingest",
]


STACK_DEPTH = 8  # frames of a camera's thread shown when a cycle does not recover


def where_is(thread: threading.Thread, depth: int = STACK_DEPTH) -> list[str]:
    """Where a running thread is now: its innermost `depth` frames as "file:line in function",
    innermost last (empty once it has ended)."""
    frame = sys._current_frames().get(thread.ident)
    if frame is None:
        return []
    frames = traceback.extract_stack(frame)[-depth:]
    return [f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in frames]


FILLS_MIB_PER_HOUR = 500  # two cameras' review copies and the local Litestream replica


def disk_mib_for(minutes: float) -> int:
    """A loop disk the run's own footage does not fill: at 1 GiB a 115-minute run filled it
    (917 MiB), the box made room 20 usual clips at a time, and the cameras waited out its
    Retry-After (300 s then) in two cycles that were not meant to test a full disk."""
    return max(1024, math.ceil(FILLS_MIB_PER_HOUR * minutes / 60 * 1.5))


def _wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


class Faults:
    """Each fault: inject it, heal it, return a note of what happened."""

    def __init__(self, world: World):
        self.world = world

    def kill_ingest(self) -> str:
        """kill -9 the box while an upload is being received."""
        receiving = _wait_until(
            lambda: self.world.box_db("SELECT 1 FROM uploads WHERE state = 'receiving'"), 8
        )
        self.world.kill_box()
        self.world.start_box()
        return "mid-upload" if receiving else "no upload caught in flight"

    def kill_sync(self) -> str:
        """kill -9 the box while recordings wait for central's confirmation."""
        waiting = _wait_until(
            lambda: self.world.box_db("SELECT 1 FROM recordings WHERE sync_state != 'synced'"), 8
        )
        self.world.kill_box()
        self.world.start_box()
        return "with unsynced recordings" if waiting else "nothing unsynced at the kill"

    def broker_restart(self) -> str:
        """Stop Mosquitto (SIGTERM), keep it down a moment, start it again."""
        time.sleep(jitter(0.5, 2))
        self.world.broker.stop()
        time.sleep(jitter(1, 3))
        self.world.broker.start()
        return "broker down 1-3 s"

    def net_cut(self) -> str:
        """Cut every box-broker connection."""
        time.sleep(jitter(0.5, 2))
        self.world.proxy.cut()
        return "link cut"

    def net_stall(self) -> str:
        """Carry nothing between box and broker for a while, then flow again."""
        time.sleep(jitter(0.5, 2))
        self.world.proxy.stall(jitter(4, 8))
        return "link stalled 4-8 s"

    def central_restart(self) -> str:
        """kill -9 central and start it again."""
        time.sleep(jitter(0.5, 2))
        self.world.central.popen.kill()
        self.world.central.stop()
        self.world.start_central()
        return "central killed"

    def litestream_kill(self) -> str:
        """kill -9 the box's Litestream; the box must start it again."""
        before = self.world.litestream_pids()
        for pid in before:
            psutil.Process(pid).kill()
        back = _wait_until(lambda: set(self.world.litestream_pids()) - set(before), 60, 0.2)
        return "restarted by the box" if back else "NOT restarted within 60 s"

    def disk_full(self) -> str:
        """Fill the box's filesystem past the ingest reserve, hold it, free it."""
        filler = self.world.fill_disk()
        if filler is None:
            return "skipped: no loop filesystem"
        time.sleep(jitter(3, 5))
        filler.unlink()
        for camera in self.world.cameras:
            camera.retry_now()
        return "filled past the reserve for 3-5 s"

    def power_cut(self) -> str:
        """kill -9 the box and Litestream, then lose what the loop disk's page cache had not
        written back (or, without a loop disk, drop the page cache)."""
        self.world.kill_box(group=True)
        if self.world.disk.mounted:
            took, dirty = self.world.disk.power_cut()
            log(f"soak: power cut: {dirty >> 10} KiB of page cache dirty at the cut, {took:.1f} s")
            note = "what the page cache had not written back was lost"
        else:
            try:
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
                note = "page cache dropped (no loop disk)"
            except OSError:
                note = "only a kill: no loop disk, page cache not droppable (not root)"
        self.world.start_box()
        return note


class Soak:
    """The cycle loop and the checks after each cycle."""

    def __init__(self, world: World):
        self.world = world
        self.faults = Faults(world)
        self.samples: list[tuple[float, int, int, int]] = []  # (t, pid, rss, fds)
        # (t, pid, heap in use, SQLite's share): the box's release_memory job, once a run
        self.heap_samples: list[tuple[float, int, int, int]] = []
        self._heap_run_seen = None
        self.recovery: dict[str, list[float]] = defaultdict(list)
        self.counts: Counter = Counter()
        self.failures: dict[str, Counter] = defaultdict(Counter)
        self.notes: Counter = Counter()
        self.scanned_until = 0.0
        self.started = time.monotonic()
        self.sampling = True
        self.full_disk_answers: Counter = Counter()  # 507s the cameras got, per fault
        self.decrypted = 0  # clips decrypted at central by the final check
        self.duplicates_seen = 0
        self.central_alarms: list[str] = []  # what central's index said went wrong, at the end

    def cycle(self, number: int, fault: str) -> None:
        """Run with cameras, inject the fault, heal, drain, check."""
        self.world.resume_cameras()
        time.sleep(jitter(1, 3))
        note = getattr(self.faults, fault)()
        self.notes[f"{fault}: {note}"] += 1
        self.counts[fault] += 1
        took = self.settle(fault)
        if took is not None:
            self.recovery[fault].append(took)
        self._check(fault)
        outcome = "NOT recovered within 180 s" if took is None else f"recovered in {took:.1f} s"
        log(f"soak: cycle {number} {fault} ({note}): {outcome}")

    def settle(self, fault: str) -> float | None:
        """Let the cameras drain and the box deliver everything to central (180 s each);
        returns the seconds it took, or None (counted and explained) when it did not."""
        started = time.monotonic()
        drained = self.world.drain_cameras(timeout=180)
        if drained and _wait_until(self._converged, 180, 0.2):
            return time.monotonic() - started
        self.failures[fault]["not recovered in 180 s"] += 1
        self._say_why(drained)
        return None

    def _say_why(self, drained: bool) -> None:
        """Log what the box, central and the cameras show when a cycle did not recover."""
        unsynced = self.world.box_db(f"SELECT count(*) FROM recordings WHERE {BACKLOG}")[0][0]
        held = self._central()
        missing = sum(1 for rid in self._delivered() if rid not in held)
        log(
            f"soak: NOT RECOVERED: cameras {'drained' if drained else 'still sending'}, "
            f"{unsynced} recordings unsynced or unsealed on the box, {missing} delivered clips "
            "not yet at central; the cameras' last words:"
        )
        for camera in self.world.cameras:
            for line in list(camera.said):  # the camera may still be talking
                log(f"soak:   {line}")
            log(f"soak:   {camera.name} is at: " + " <- ".join(reversed(where_is(camera))))

    def _delivered(self) -> dict[str, tuple[str, str]]:
        merged: dict[str, tuple[str, str]] = {}
        for camera in self.world.cameras:
            merged.update(camera.delivered)
        return merged

    def _duplicated_clips(self) -> int:
        """Camera clips (serial and file name) central holds under more than one recording.
        (Not by hash: two clips recorded within one second are identical bytes, legitimately.)"""
        rows = self.world.central_db("SELECT manifest FROM recordings")
        clips = Counter()
        for (manifest,) in rows:
            recording = json.loads(manifest)["recording"]
            clips[(recording.get("serial"), recording.get("filename"))] += 1
        return sum(n - 1 for n in clips.values() if n > 1)

    def _central(self) -> dict[str, tuple[str, str]]:
        rows = self.world.central_db(
            "SELECT recording_id, evidence_sha256, stored_sha256 FROM recordings"
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    def _converged(self) -> bool:
        held = self._central()
        if any(rid not in held for rid in self._delivered()):
            return False
        # Sealed too: the box rewrites a confirmed file's header in place and then its row,
        # and `edgebox verify` run from outside in between sees the two disagree.
        return not self.world.box_db(f"SELECT 1 FROM recordings WHERE {BACKLOG}")

    def _check(self, fault: str) -> None:
        failures = self.failures[fault]
        delivered, held = self._delivered(), self._central()
        failures["lost"] += sum(1 for rid in delivered if rid not in held)
        failures["corrupted"] += sum(
            1 for rid, (sha, _) in delivered.items() if rid in held and held[rid][0] != sha
        )
        duplicated = self._duplicated_clips()
        failures["duplicated"] += duplicated - self.duplicates_seen  # new since the last check
        self.duplicates_seen = duplicated
        on_box = {r[0] for r in self.world.box_db("SELECT id FROM recordings")}
        failures["deleted unsynced"] += sum(
            1 for rid in delivered if rid not in on_box and rid not in held
        )
        for camera in self.world.cameras:
            failures["camera refused or mismatch"] += len(camera.problems)
            camera.problems.clear()
            statuses, camera.statuses = camera.statuses, Counter()
            failures["5xx"] += sum(n for code, n in statuses.items() if code >= 500 and code != 507)
            self.full_disk_answers[fault] += statuses[507]
        verify = subprocess.run(
            [*edgebox_cmd(), "verify", "--config", str(self.world.config), "--json"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if verify.returncode != 0:
            failures["verify failures"] += 1
            log(f"soak: verify failed after {fault}: {verify.stdout[-800:]}{verify.stderr[-400:]}")
        failures["plaintext found"] += self._plaintext_scan()

    def _plaintext_scan(self) -> int:
        """Files on the box changed since the last scan that hold any clip's bytes."""
        markers = Markers(
            [m for c in self.world.cameras for m in c.markers.values() if len(m) >= SHORTEST]
        )
        if not markers:
            return 0
        found, since = 0, self.scanned_until
        self.scanned_until = time.time()
        for path in self.world.box_dir.rglob("*"):
            try:
                if path.is_file() and path.stat().st_mtime >= since - 1:
                    if markers.found_in(path.read_bytes()):
                        found += 1
                        if path.name != PLANTED:
                            log(f"soak: PLAINTEXT of a clip in {path}")
            except OSError:
                continue  # a file the box replaced meanwhile
        return found

    def decrypt_at_central(self) -> int:
        """Decrypt every delivered clip's copy at central with central's key (the demo key
        pair `edgebox init --demo` made); how many do not hash to the camera's SHA-256."""
        key = x25519_private_from_file(self.world.box_dir / "central-demo" / "central.key")
        files = dict(self.world.central_db("SELECT recording_id, file FROM recordings"))
        wrong = 0
        for rid, (sha, name) in self._delivered().items():
            path = self.world.store / files.get(rid, "missing")
            try:
                evidence = Reader(path, data_key_for(path, key, role="central")).verify()
            except (OSError, EdgeboxError) as exc:
                evidence = f"unreadable: {exc}"
            if evidence != sha:
                wrong += 1
                log(f"soak: central's copy of {rid} ({name}) decrypts to {evidence}, not {sha}")
        self.decrypted = len(files)
        return wrong

    def alarms_at_central(self) -> list[str]:
        """The alarms central's index holds (what it could not read is said as one)."""
        try:
            return [m for (m,) in self.world.central_db("SELECT message FROM alarms")]
        except sqlite3.Error as exc:
            return [f"soak: central's index unreadable: {exc}"]

    def scan_finds_a_planted_clip(self) -> bool:
        """The scan's own check: a clip's bytes planted in the box's folder are found."""
        markers = [m for c in self.world.cameras for m in c.markers.values()]
        if not markers:
            return False
        planted = self.world.box_dir / PLANTED
        planted.write_bytes(b"x" * 100 + markers[0] + b"y" * 100)
        try:
            self.scanned_until = 0.0
            return self._plaintext_scan() == 1
        finally:
            planted.unlink()

    def _sample(self) -> None:
        try:
            proc = psutil.Process(self.world.box.pid)
            self.samples.append(
                (time.monotonic() - self.started, proc.pid, proc.memory_info().rss, proc.num_fds())
            )
        except psutil.Error:
            pass

    def run(
        self, minutes: float, cycles: int | None, leak_share: float, schedule: list[str]
    ) -> int:
        """Cycles until the time or the count is reached; returns how many ran. The last
        `leak_share` of the time runs only faults that leave the box process alive, so one
        box lives long enough for its RSS and open-file trend to mean something."""
        deadline = self.started + minutes * 60
        calm_from = deadline - leak_share * minutes * 60
        number = 0
        sampler = threading.Thread(target=self._sampling, args=(deadline,), daemon=True)
        sampler.start()
        while (cycles is None or number < cycles) and time.monotonic() < deadline:
            fault = schedule[number % len(schedule)]
            calm = [f for f in schedule if f not in BOX_KILLING]
            if time.monotonic() >= calm_from and calm:
                fault = calm[number % len(calm)]
            self.cycle(number, fault)
            number += 1
        self.sampling = False
        return number

    def _sample_heap(self) -> None:
        """The box's own figures from its last release_memory run, once per run (read from
        the job's record in its database)."""
        try:
            rows = self.world.box_db("SELECT value FROM sync_state WHERE key = ?", [MEMORY_JOB])
            pid = self.world.box.pid
        except (sqlite3.Error, AttributeError):
            return
        record = json.loads(rows[0][0]) if rows else {}
        result = record.get("last_result") or {}
        if record.get("last_run") == self._heap_run_seen or "heap_in_use_kib" not in result:
            return
        self._heap_run_seen = record["last_run"]
        self.heap_samples.append(
            (
                time.monotonic() - self.started,
                pid,
                result["heap_in_use_kib"] << 10,
                result.get("sqlite_kib", 0) << 10,
            )
        )

    def _sampling(self, deadline: float) -> None:
        while self.sampling and time.monotonic() < deadline:
            self._sample()
            if len(self.samples) % 10 == 0:  # every 20 s: the job runs each minute
                self._sample_heap()
            time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    """Run the soak and report; exit 1 when any check failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15, help="wall-clock budget")
    parser.add_argument("--cycles", type=int, help="stop after this many fault cycles")
    parser.add_argument(
        "--leak-share", type=float, default=0.3, help="share of the time without box kills"
    )
    parser.add_argument(
        "--faults",
        type=lambda text: [f for f in text.split(",") if f],
        default=SCHEDULE,
        help=f"comma-separated schedule, repeated (default: {','.join(SCHEDULE)})",
    )
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--clip-seconds", type=float, default=3)
    parser.add_argument(
        "--disk-mib",
        type=int,
        help="size of the loop disk (default: room for the whole run, `disk_mib_for`)",
    )
    parser.add_argument("--workdir", help="parent of the temp dir (default: system temp)")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--fuzz-json", help="figures of bench/fuzz.py to put in the table")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument(
        "--alongside",
        action="append",
        metavar="JSON",
        help="the --json of a run made at the same time, reported under this one's",
    )
    args = parser.parse_args(argv)
    args.command = " ".join(
        [f"--minutes {args.minutes:g}", f"--leak-share {args.leak_share:g}"]
        + ([f"--cycles {args.cycles}"] if args.cycles else [])
        + ([f"--faults {','.join(args.faults)}"] if args.faults != SCHEDULE else [])
    )
    unknown = [f for f in args.faults if f not in SCHEDULE]
    if unknown:
        parser.error(f"unknown fault {unknown[0]!r}; known: {', '.join(sorted(set(SCHEDULE)))}")
    exit_on_sigterm()
    root = Path(tempfile.mkdtemp(prefix="edgebox-soak-", dir=args.workdir))
    log(f"soak: working in {root}")
    disk_mib = args.disk_mib or disk_mib_for(args.minutes)
    world = World(root, args.cameras, args.clip_seconds, disk_mib)
    soak = Soak(world)
    try:
        ran = soak.run(args.minutes, args.cycles, args.leak_share, args.faults)
        soak.settle("final")  # as after every cycle: what was delivered reaches central
        soak.scanned_until = 0.0  # the final scan reads every file
        soak._check("final")
        soak.failures["final"]["corrupted"] += soak.decrypt_at_central()
        soak.canary = soak.scan_finds_a_planted_clip()
        soak.central_alarms = soak.alarms_at_central()
    finally:
        world.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return report(soak, world, ran, args)


if __name__ == "__main__":
    sys.exit(main())
