"""Sync benchmark: how fast a real box drains its backlog to central over MQTT 5 + TLS.

Everything is real: `edgebox init --demo` makes a box, `edgebox run` (offline) takes the footage
over tus and is stopped; each measurement then starts a copy of that box with its upstream
pointed at a fresh Mosquitto (TLS, client certificates; `tests/brokers.py`) and one
`edgebox central run --workers 1`, and times the drain until every recording is confirmed end
to end. In the same run, raw paho QoS 1 publishing of the same bytes in the same chunks and
window through the same TLS listener to a byte-counting subscriber gives the limit; a passive
observer counts the protocol's bytes; and a broker restart mid-transfer times the resumption.
Each throughput measurement runs at least twice (interleaved); best and median are reported.
Nothing is asserted: a benchmark reports.

    python bench/sync.py                     # full run, rewrites "## Sync" of bench/RESULTS.md
    python bench/sync.py --quick --no-write  # small smoke run (2 x 16 MiB)

MB/s are decimal (10^6 bytes per second); sizes are binary (MiB, GiB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    GIB,
    MB,
    MIB,
    Proc,
    Rates,
    Timing,
    add_output_args,
    exit_on_sigterm,
    log,
    median_or_none,
    proc_cpu,
    publish,
    reset_hwm,
    vm_hwm,
)
from bench.ingest_floor import sha256_cost  # noqa: E402
from bench.profiling import Spy, pyspy, summarize_threads  # noqa: E402
from bench.sync_limits import raw_paho, store_alone  # noqa: E402
from bench.sync_observe import Observer, time_restart  # noqa: E402
from bench.sync_report import report  # noqa: E402
from bench.sync_wiring import BOX_ID, Wiring, fill_box  # noqa: E402
from tests.brokers import TestPKI  # noqa: E402

STALL_SECONDS = 60  # no progress at central for this long (3 x the 20 s ack timeout): a stall
# The busy threads per process: the box's uplink (and its finisher) and
# paho's network thread; central's network thread and its lanes (`edgebox/central/lanes.py`).
SYNC_THREADS = {
    "box": ("uplink", "paho-mqtt-client-edgebox-"),
    "central": ("paho-mqtt-client-edgebox-central", "edgebox-central-"),
}


@dataclass
class Sample(Timing):
    """One timed transfer of the sync bench, with CPU seconds per role."""

    cpu: dict = field(default_factory=dict)  # role -> CPU seconds
    extra: dict = field(default_factory=dict)


@dataclass
class Measurement(Rates):
    """One row of the sync table: its samples over the rounds, and the runs that failed."""

    key: str
    label: str
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def cpu_per_gib(self, role: str) -> float | None:
        """Median CPU seconds of `role` per GiB."""
        return median_or_none(
            [s.cpu[role] / (s.nbytes / GIB) for s in self.samples if role in s.cpu]
        )

    def extra_median(self, name: str) -> float | None:
        """Median of an extra figure over the samples that have it."""
        return median_or_none(
            [s.extra[name] for s in self.samples if s.extra.get(name) is not None]
        )


def cpu_text(cpu: dict[str, float]) -> str:
    """`box 1.2, central 0.3`: CPU seconds per role, for the progress lines."""
    return ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())


@dataclass
class BoxRun:
    """What one drain of the backlog measured."""

    seconds: float | None = None
    first_init: float | None = None
    startup_cpu: float | None = None  # the box's CPU seconds until the first transfer
    first_cpu: dict = field(default_factory=dict)  # central's and broker's by then
    cpu: dict = field(default_factory=dict)
    rss: dict = field(default_factory=dict)
    error: str | None = None
    evidence: str | None = None
    observer: Observer | None = None
    restart: dict | None = None


def streaming(result: BoxRun, whole: Sample) -> Sample:
    """The part of a box run after its start-up: from the first transfer seen at central to the
    last confirmation, with each role's CPU over that interval (timed like raw paho, which is
    timed from its first publish)."""
    cpu = {"box": whole.cpu["box"] - result.startup_cpu}
    cpu.update({role: whole.cpu[role] - result.first_cpu[role] for role in result.first_cpu})
    return Sample(whole.seconds - result.first_init, whole.nbytes, cpu, dict(whole.extra))


class Bench:
    """One sync run: the backlog, every measurement over the rounds, the extra runs, figures."""

    def __init__(self, args):
        self.args = args
        self.size = args.recording_mib * MIB
        self.measurements = {
            "box": Measurement("box", "box → central: `edgebox run` → Mosquitto TLS → 1 worker"),
            "box-stream": Measurement(
                "box-stream", "the same box runs, from the first transfer at central on"
            ),
            "raw": Measurement("raw", "raw paho QoS 1 → Mosquitto TLS → counting subscriber"),
            "store": Measurement("store", "central store alone: SHA-256 + Transfer.put, no MQTT"),
        }
        if args.extra_workers > 1:
            self.measurements["box-n"] = Measurement(
                "box-n",
                f"extra: box → central with `--workers {args.extra_workers}` (one process)",
            )
        self.overhead: dict | None = None
        self.restart: dict | None = None
        self.notes: list[str] = []
        self.rss: dict[str, int] = {}
        self.profiles: dict[str, list[str]] = {}
        self.shares: dict[str, dict] = {}  # thread -> category -> share (of the profiled run)
        self.profile_seconds: float | None = None
        self.sha256_cost: float | None = None  # CPU s/GiB of SHA-256 alone, in this process

    # -- measurements --------------------------------------------------------------------
    def box_run(
        self,
        name: str,
        *,
        observe: bool = False,
        restart: bool = False,
        profile: bool = False,
        workers: int = 1,
    ) -> BoxRun:
        """One drain of the backlog through a fresh Wiring: timed until the box has it synced.

        `observe`: with a passive Observer; `restart`: restart the broker mid-transfer;
        `profile`: box and central under py-spy from the first transfer on.
        """
        result = BoxRun()
        try:
            wiring = Wiring(self, name, workers)
        except Exception as exc:  # noqa: BLE001 - report it, keep measuring the rest
            result.error = f"setting up broker, central and box failed: {exc}"
            return result
        observer = None
        spies: dict[str, Spy] = {}
        try:
            if observe or restart:
                observer = Observer(wiring.broker, f"bench-observer-{name}")
                result.observer = observer
            broker_cpu0 = proc_cpu(wiring.broker.pid)
            central_cpu0 = wiring.central.cpu()
            startup_hwm = {"central": reset_hwm(wiring.central.pid)}
            t0 = time.monotonic()
            box = wiring.start_box()
            expected = self.fill["recordings"]
            last_progress, progress_at = None, time.monotonic()
            restarted = False
            while True:
                time.sleep(0.05)
                now = time.monotonic()
                if result.first_init is None and wiring.transfers.exists():
                    with contextlib.suppress(OSError):
                        if os.listdir(wiring.transfers):
                            result.first_init = now - t0
                            result.startup_cpu = box.cpu()
                            result.first_cpu = {
                                "central": wiring.central.cpu() - central_cpu0,
                                "broker": proc_cpu(wiring.broker.pid) - broker_cpu0,
                            }
                            startup_hwm["box"] = reset_hwm(box.pid)
                            if profile:
                                spies = self.spies(box.pid, wiring.central.pid)
                if not box.alive():
                    raise RuntimeError(f"edgebox run exited:\n{box.tail()}")
                with contextlib.suppress(sqlite3.Error):
                    synced, rejected = wiring.synced()
                    if rejected:
                        raise RuntimeError(f"{rejected} recording(s) rejected by central")
                    if synced == expected:
                        result.seconds = now - t0
                        break
                if (
                    restart
                    and not restarted
                    and observer.seg_bytes >= self.args.restart_at * self.fill["stored_bytes"]
                ):
                    restarted = True
                    result.restart = time_restart(wiring, observer)
                    progress_at = time.monotonic()
                if now - progress_at > 1:
                    progress = (wiring.synced(), wiring.central_progress())
                    if progress != last_progress:
                        last_progress, progress_at = progress, now
                if now - progress_at > STALL_SECONDS:
                    result.error = (
                        f"stalled: no progress at box or central for {STALL_SECONDS} s "
                        f"({now - t0:.0f} s after box start)"
                    )
                    result.evidence = wiring.evidence()
                    break
            if spies:
                self.take_profiles(spies)
            spies = {}
            result.cpu = {
                "box": box.cpu(),
                "central": wiring.central.cpu() - central_cpu0,
                "broker": proc_cpu(wiring.broker.pid) - broker_cpu0,
            }
            result.rss = {"box": vm_hwm(box.pid), "central": vm_hwm(wiring.central.pid)}
            result.rss.update({f"{k}-startup": v for k, v in startup_hwm.items()})
            if result.error is None:
                problem = wiring.check_central()
                if problem:
                    result.error = problem
                    result.evidence = wiring.evidence()
            if observer is not None and result.error is None:
                deadline = time.monotonic() + 15  # the observer drains what the broker queued
                while time.monotonic() < deadline:
                    with observer.lock:
                        nbytes = self.fill["stored_bytes"]
                        if len(observer.complete) >= expected and observer.seg_bytes >= nbytes:
                            break
                    time.sleep(0.1)
                time.sleep(0.5)
        except Exception as exc:  # noqa: BLE001 - report it, keep measuring the rest
            result.error = f"{type(exc).__name__}: {exc}"
            result.evidence = wiring.evidence()
        finally:
            for spy in spies.values():
                spy.finish()
            if observer is not None:
                observer.close()
            wiring.close()
        return result

    def spies(self, box_pid: int, central_pid: int) -> dict[str, Spy]:
        """py-spy (100 Hz, idle included, per thread) on box and central until finished."""
        return {
            name: Spy(pid, self.tmp / f"profile-{short}.txt", rate=100, seconds=600, threads=True)
            for name, pid, short in (("box", box_pid, "box"), ("central", central_pid, "c"))
        }

    def take_profiles(self, spies: dict[str, Spy]) -> None:
        """Stop the spies; keep per process the lines on its busy threads, and their shares."""
        for name, spy in spies.items():
            self.profiles[name], shares = summarize_threads(spy.finish(), SYNC_THREADS[name])
            self.shares.update(shares)

    def record_box(self, name: str, key: str = "box", workers: int = 1) -> None:
        """One box run, as a sample of row `key` (central with `workers` workers)."""
        result = self.box_run(name, workers=workers)
        m = self.measurements[key]
        if result.error:
            m.failures.append(result.error)
            log(f"  {key}: FAILED {result.error}\n{result.evidence or ''}")
            return
        m.samples.append(
            Sample(
                result.seconds,
                self.fill["stored_bytes"],
                result.cpu,
                {
                    "first_init": result.first_init,
                    "startup_cpu": result.startup_cpu,
                    "round": name.rsplit("-", 1)[-1],
                },
            )
        )
        if key == "box":
            self.measurements["box-stream"].samples.append(streaming(result, m.samples[-1]))
        for role, value in result.rss.items():
            if key == "box":
                self.rss[role] = max(self.rss.get(role, 0), value)
        log(
            f"  {key}: {m.samples[-1].mbps:.1f} MB/s ({result.seconds:.2f} s; first init at "
            f"central {result.first_init:.2f} s after start, box CPU by then "
            f"{result.startup_cpu:.1f} s); CPU s {cpu_text(result.cpu)}"
        )

    def record_raw(self, name: str) -> None:
        """Raw paho: publisher and counting subscriber processes through a fresh broker."""
        m = self.measurements["raw"]
        nbytes = self.fill["stored_bytes"]
        try:
            seconds, cpu = raw_paho(self.tmp / name, self.pki, nbytes)
        except RuntimeError as exc:
            m.failures.append(str(exc))
            log(f"  raw: FAILED {exc}")
            return
        sample = Sample(seconds, nbytes, cpu, {"round": name.rsplit("-", 1)[-1]})
        m.samples.append(sample)
        log(f"  raw: {sample.mbps:.1f} MB/s ({sample.seconds:.2f} s); CPU s {cpu_text(sample.cpu)}")

    def record_store(self, name: str) -> None:
        """Central's per-segment work without MQTT: SHA-256 check, pwrite, present mark."""
        nbytes = self.fill["stored_bytes"]
        seconds, cpu = store_alone(self.tmp / name, BOX_ID, nbytes)
        sample = Sample(seconds, nbytes, cpu)
        self.measurements["store"].samples.append(sample)
        log(f"  store: {sample.mbps:.1f} MB/s ({sample.seconds:.2f} s)")

    def record_overhead(self) -> None:
        """One box run with the observer: the protocol's bytes per message kind."""
        result = self.box_run("overhead", observe=True)
        if result.error:
            self.overhead = {"error": result.error}
            log(f"  overhead: FAILED {result.error}\n{result.evidence or ''}")
            return
        obs = result.observer
        kinds = {k: list(v) for k, v in obs.kinds.items()}
        resent = sum(n - 1 for n in obs.topics.values() if n > 1)
        self.overhead = {"kinds": kinds, "resent": resent, "seconds": result.seconds}
        log(
            f"  overhead run: {self.fill['stored_bytes'] / result.seconds / MB:.1f} MB/s "
            f"with the observer; kinds {kinds}; resent topics {resent}"
        )

    def record_profile(self) -> None:
        """One box run (uncounted) with box and central under py-spy."""
        if not pyspy():
            self.notes.append("py-spy not found: no profile of box and central")
            return
        result = self.box_run("profile", profile=True)
        if result.error:
            log(f"  profile run: FAILED {result.error}")
            return
        self.profile_seconds = result.seconds
        log(
            f"  profile run: {self.fill['stored_bytes'] / result.seconds / MB:.1f} MB/s under "
            f"py-spy"
        )

    def record_restart(self) -> None:
        """One box run with the observer and a broker restart mid-transfer."""
        result = self.box_run("restart", restart=True)
        info = result.restart or {}
        info["error"] = result.error
        info["evidence"] = result.evidence
        info["seconds"] = result.seconds
        if result.observer is not None:
            info["resent"] = sum(n - 1 for n in result.observer.topics.values() if n > 1)
            info["resent_bytes"] = result.observer.seg_bytes - self.fill["stored_bytes"]
        self.restart = info
        if result.error:
            log(f"  restart: FAILED {result.error}\n{result.evidence or ''}")
        log(f"  restart: {json.dumps({k: v for k, v in info.items() if k != 'evidence'})}")

    # -- driver ----------------------------------------------------------------------------
    def run(self) -> None:
        """Fill the backlog, run the rounds and the extra runs, stop everything."""
        started = time.monotonic()
        load0 = os.getloadavg()[0]
        parent = self.args.workdir or None
        self.tmp = Path(tempfile.mkdtemp(prefix="edgebox-sync-bench-", dir=parent))
        try:
            self.pki = TestPKI(self.tmp / "pki")
            self.source_box = self.tmp / "source-box"
            log(
                f"bench: filling an offline box with {self.args.recordings} x "
                f"{self.args.recording_mib} MiB over tus"
            )
            t = time.monotonic()
            self.fill = fill_box(self.source_box, self.args.recordings, self.size)
            log(
                f"bench: filled in {time.monotonic() - t:.1f} s: "
                f"{self.fill['stored_bytes']} stored bytes "
                f"({self.fill['plain_bytes']} plaintext)"
            )
            for rep in range(self.args.reps):
                log(f"bench: round {rep + 1}/{self.args.reps}")
                self.record_box(f"box-{rep}")
                self.record_raw(f"raw-{rep}")
                self.record_store(f"store-{rep}")
                if "box-n" in self.measurements:
                    self.record_box(f"box-n-{rep}", "box-n", self.args.extra_workers)
            self.sha256_cost = min(sha256_cost(GIB) for _ in range(3))
            log("bench: protocol overhead (passive observer on edgebox/v1/#)")
            self.record_overhead()
            log("bench: broker restart mid-transfer")
            self.record_restart()
            if not self.args.no_profile:
                log("bench: one more box run with box and central under py-spy (uncounted)")
                self.record_profile()
        finally:
            for proc in list(Proc.running):
                proc.stop()
            if self.args.keep:
                log(f"bench: kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        self.elapsed = time.monotonic() - started
        self.load = (load0, os.getloadavg()[0])


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the bench, print the section (and write it unless told not to)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reps", type=int, default=5, help="rounds of each throughput (>= 2; noise here wants 5)"
    )
    parser.add_argument("--recordings", type=int, default=8)
    parser.add_argument("--recording-mib", type=int, default=128)
    parser.add_argument(
        "--restart-at", type=float, default=0.4, help="restart the broker after this share"
    )
    parser.add_argument("--quick", action="store_true", help="2 x 16 MiB, prints only")
    add_output_args(parser, json_help="also write raw figures here")
    parser.add_argument(
        "--extra-workers",
        type=int,
        default=2,
        help="also time the box against a central with this many workers (<= 1: skip)",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the extra box run under py-spy"
    )
    # bench/run hands every benchmark the same arguments; ignore the ingest bench's own.
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        log(f"bench/sync.py: ignoring {' '.join(unknown)}")
    if args.quick:
        args.recordings, args.recording_mib = 2, 16
    args.reps = max(2, args.reps)

    exit_on_sigterm()
    bench = Bench(args)
    bench.command = " ".join(["bench/sync.py", *argv])
    bench.run()
    raw = {
        "measurements": {k: [s.__dict__ for s in v.samples] for k, v in bench.measurements.items()},
        "overhead": bench.overhead,
        "restart": bench.restart,
    }
    publish(args, "Sync", report(bench), raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
