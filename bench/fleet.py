"""Central at scale: a fleet of simulated boxes against one Mosquitto and central with 1, 2 and 4
worker processes, on the local folder store and on SeaweedFS (S3).

    .venv/bin/python bench/fleet.py [--boxes 200] [--recordings 2] [--size 3145728]
        [--chunk 1048576] [--workers 1,2,4] [--stores local,s3] [--offline 0.05]
        [--deadline 170] [--rounds 2] [--plain] [--json OUT] [--no-write]

Each box (bench/fleet_box.py) has its own Ed25519 identity, custody chain, real vault files
and client certificate; each speaks MQTT 5 over TLS through its own paho client
(bench/fleet_link.py), under the ACL shipped in deploy/mosquitto, which holds a box to its own
topics (`--plain`: plain MQTT on loopback, to see what TLS costs), and drops offline for 1-4 s
at random mid-transfer (`--offline`, the chance per recording). Central runs as N
`edgebox central run --workers 1` processes sharing one work folder and SQLite index, one
store. Per run: aggregate MB/s (stored bytes over the time from the first init to the last
confirmation), p50/p99 fin-to-ack, broker peak RSS, central CPU seconds per GiB (and
SeaweedFS's), and the check that every file is held once. The store alone (the same bytes put
by 1 and 4 threads, no MQTT) is measured in the same run as the floor of the store-bound part.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

from bench.common import (  # noqa: E402
    GIB,
    MB,
    ROOT,
    Proc,
    clean_env,
    cpu_self,
    edgebox_cmd,
    log,
    write_section,
)
from bench.fleet_box import SimBox  # noqa: E402
from bench.fleet_link import BoxRunner, BoxUplink, FleetStats  # noqa: E402
from bench.fleet_report import HEADING, section  # noqa: E402
from edgebox.central.blobs import open_store  # noqa: E402
from edgebox.central.files import recording_key  # noqa: E402
from edgebox.central.index import Index  # noqa: E402
from tests.brokers import Mosquitto, TestPKI  # noqa: E402
from tests.seaweed import SeaweedFS  # noqa: E402


def make_fleet(
    folder: Path, boxes: int, recordings: int, size: int, pki: TestPKI | None = None
) -> list[SimBox]:
    """Boxes with their identities, client certificates (from `pki`) and real vault files
    (made once, reused by every run)."""
    central = X25519PrivateKey.generate().public_key()
    fleet = []
    for n in range(boxes):
        box = SimBox(f"sim-{n:04d}", folder / f"sim-{n:04d}")
        box.certificate = pki.client_cert(box.box_id) if pki else None
        box.record("box.enrolled")
        for _ in range(recordings):
            box.make_recording(size + random.randrange(4096), central)
        fleet.append(box)
    return fleet


def fleet_acl(workers: int) -> list[str]:
    """The ACL deploy/mosquitto ships, with a block like its first worker's for each of
    `workers` worker certificates (`central:worker-N`)."""
    shipped = (ROOT / "deploy" / "mosquitto" / "edgebox-central.acl").read_text().splitlines()
    start = shipped.index("user central:worker-1")
    end = next((n for n in range(start, len(shipped)) if not shipped[n].strip()), len(shipped))
    block = shipped[start:end]
    named = {line for line in shipped if line.startswith("user central:worker-")}
    extra = []
    for n in range(1, workers + 1):
        if f"user central:worker-{n}" not in named:
            extra += [f"user central:worker-{n}", *block[1:], ""]
    return shipped + [""] + extra


class Sampler:
    """Peak RSS of the broker, sampled every 0.2 s."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.peak


def start_central(
    work: Path, store: str, workers: int, broker: Mosquitto, env: dict, tls: bool
) -> list:
    """N central processes of one worker each, sharing the work folder, index and store;
    over TLS each with its own worker certificate."""
    procs = []
    for n in range(workers):
        if tls:
            cert, key = broker.pki.client_cert(f"central:worker-{n + 1}")
            link = [broker.url_tls_cert, "--ca", str(broker.ca_path)]
            link += ["--cert", str(cert), "--key", str(key)]
        else:
            link = [broker.url_plain]
        argv = [
            *edgebox_cmd(),
            "central",
            "run",
            "--broker",
            *link,
            "--store",
            store,
            "--work",
            str(work),
            "--workers",
            "1",
        ]
        procs.append(Proc(f"central-{n}", argv, work.parent / f"central-{n}.log", env=env))
    deadline = time.monotonic() + 30
    while not all("worker(s) on" in p.text() for p in procs):
        if time.monotonic() > deadline or not all(p.alive() for p in procs):
            raise RuntimeError("central did not start:\n" + "\n".join(p.tail() for p in procs))
        time.sleep(0.1)
    time.sleep(1)  # subscriptions settle
    return procs


def held_once(work: Path, store: str, fleet: list[SimBox], env: dict) -> dict:
    """Every recording indexed and in the store with its hash, none twice, nothing left staged."""
    for name, value in env.items():
        os.environ[name] = value
    blobs = open_store(store)
    index = Index(work)
    try:
        rows = index.query("SELECT box_id, recording_id, stored_sha256 FROM recordings")
    finally:
        index.close()
    indexed = {(r["box_id"], r["recording_id"]): r["stored_sha256"] for r in rows}
    expected = {(b.box_id, r.id): r.sha256 for b in fleet for r in b.recordings}

    def check(item):
        (box, rid), sha = item
        stat = blobs.head(recording_key(box, rid))
        return stat is not None and stat.sha256 == sha

    with ThreadPoolExecutor(8) as pool:
        in_store = sum(pool.map(check, indexed.items()))
    keys = list(blobs.list("boxes/"))
    staged = list((work / "transfers").glob("*/*/data"))
    return {
        "expected": len(expected),
        "indexed": len(indexed),
        "lost": len(set(expected) - set(indexed)),
        "wrong_hash": sum(1 for k, v in indexed.items() if expected.get(k) != v),
        "in_store": in_store,
        "store_objects": len(keys),
        "stored_twice": len(keys) - len(set(keys)) + max(0, len(keys) - 2 * len(indexed)),
        "left_staged": len(staged),
    }


def run_fleet(fleet, broker, args, rng) -> tuple[FleetStats, float, float]:
    """Every box at once; (stats, seconds from start to the last confirmation, sim CPU s)."""
    stats = FleetStats()
    deadline = time.monotonic() + args.deadline
    cpu0, start = cpu_self(), time.monotonic()
    last = [start]

    def one(box: SimBox) -> None:
        if args.plain:
            uplink = BoxUplink(box, "127.0.0.1", broker.port_plain, args.ack_timeout)
        else:
            uplink = BoxUplink(
                box, "127.0.0.1", broker.port_tls_cert, args.ack_timeout, ca=broker.ca_path
            )
        runner = BoxRunner(
            box, uplink, stats, random.Random(rng.random()), args.chunk, offline_chance=args.offline
        )
        try:
            runner.run(deadline)
        except Exception as exc:  # noqa: BLE001 - reported, the others go on
            log(f"{box.box_id}: {exc}")
        last[0] = max(last[0], time.monotonic())

    threads = [threading.Thread(target=one, args=(b,), daemon=True) for b in fleet]
    for thread in threads:
        thread.start()
        time.sleep(0.002)  # boxes come online over a fraction of a second, not in one burst
    for thread in threads:
        thread.join(max(1, deadline - time.monotonic() + 10))
    return stats, last[0] - start, cpu_self() - cpu0


def store_alone(store: str, env: dict, fleet, threads: int, limit_bytes: int) -> float:
    """MB/s of putting the fleet's files into the store directly, `threads` at once."""
    for name, value in env.items():
        os.environ[name] = value
    blobs = open_store(store)
    files = [r for b in fleet for r in b.recordings]
    chosen, total = [], 0
    for rec in files:
        if total >= limit_bytes:
            break
        chosen.append(rec)
        total += rec.size

    def put(rec) -> None:
        upload = blobs.begin(f"alone/{threads}/{rec.id}", rec.sha256)
        upload.part(rec.path.read_bytes())
        upload.commit()

    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, chosen))
    return total / MB / (time.monotonic() - start)


def one_run(kind, workers, fleet, broker, seaweed, root, args, rng) -> dict:
    """One configuration: fresh work folder and store prefix, central up, fleet, checks."""
    work = root / f"{kind}-{workers}" / "work"
    work.mkdir(parents=True)
    env = clean_env()
    if kind == "s3":
        env.update(seaweed.env())
        store = f"s3://{seaweed.bucket}/run-{kind}-{workers}-{rng.randrange(1 << 30):x}"
    else:
        store = str(work)
    procs = start_central(work, store, workers, broker, env, tls=not args.plain)
    weed = psutil.Process(seaweed.process.pid) if kind == "s3" else None
    weed_cpu0 = _tree_cpu(weed)
    cpu0 = sum(p.cpu() for p in procs)
    mosquitto = psutil.Process(broker.pid)
    broker_cpu0 = _tree_cpu(mosquitto)
    machine0, load0 = psutil.cpu_times(), os.getloadavg()[0]
    sampler = Sampler(broker.pid)
    try:
        stats, seconds, sim_cpu = run_fleet(fleet, broker, args, rng)
    finally:
        broker_rss = sampler.close()
        central_cpu = sum(p.cpu() for p in procs) - cpu0
        weed_cpu = _tree_cpu(weed) - weed_cpu0
        broker_cpu = _tree_cpu(mosquitto) - broker_cpu0
        machine1 = psutil.cpu_times()
        busy = sum(machine1[:3]) - sum(machine0[:3])  # user, nice, system of every process
        for proc in procs:
            proc.stop()
    check = held_once(work, store, fleet, env)
    stored = sum(r.size for b in fleet for r in b.recordings if (b.box_id, r.id) in stats.completed)
    gib = stored / GIB
    ordered = sorted(stats.fin_to_ack)
    result = {
        "store": kind,
        "workers": workers,
        "boxes": len(fleet),
        "confirmed": len(stats.completed),
        "mb": round(stored / MB, 1),
        "seconds": round(seconds, 1),
        "mb_per_s": round(stored / MB / seconds, 1),
        "fin_to_ack_p50_ms": round(1000 * statistics.median(ordered), 1) if ordered else None,
        "fin_to_ack_p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 1)
        if ordered
        else None,
        "broker_rss_mib": round(broker_rss / (1 << 20), 1),
        "central_cpu_s_per_gib": round(central_cpu / gib, 1) if gib else None,
        "seaweed_cpu_s_per_gib": round(weed_cpu / gib, 1) if gib and weed else None,
        "broker_cpu_s_per_gib": round(broker_cpu / gib, 1) if gib else None,
        "machine_busy_cores": round(busy / seconds, 2),
        "load_average_before": round(load0, 1),
        "sim_cpu_s_per_gib": round(sim_cpu / gib, 1) if gib else None,
        "offline_spells": stats.offline_spells,
        "resends": stats.resends,
        **check,
    }
    log(json.dumps(result))
    shutil.rmtree(work.parent, ignore_errors=True)
    return result


def _tree_cpu(process) -> float:
    if process is None:
        return 0.0
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        total += sum(child.cpu_times()[:2])
    return total


def summarise(results: list[dict], floors: dict, args) -> dict:
    """The runs, the store-alone floors and the ratios, as plain JSON (the same whether the
    section is written now or later from the saved file: keys are strings)."""
    report = {
        "runs": results,
        "store_alone_mb_per_s": floors,
        "cores": os.cpu_count(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    for kind in floors:
        by: dict[int, list[float]] = {}
        for r in results:
            if r["store"] == kind:
                by.setdefault(r["workers"], []).append(r["mb_per_s"])
        report[f"median_mb_per_s_{kind}"] = {w: statistics.median(v) for w, v in by.items()}
        if 1 in by and 4 in by:
            ratio = statistics.median(by[4]) / statistics.median(by[1])
            report[f"scale_out_4_over_1_{kind}"] = round(ratio, 2)
        report[f"store_alone_4_over_1_{kind}"] = round(floors[kind][4] / floors[kind][1], 2)
    return json.loads(json.dumps(report))


def main() -> None:
    """Run every configuration asked for; print the section and write it to RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", type=int, default=200)
    parser.add_argument("--recordings", type=int, default=2)
    parser.add_argument("--size", type=int, default=3 << 20)
    parser.add_argument("--chunk", type=int, default=1 << 20)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--stores", default="local,s3")
    parser.add_argument("--offline", type=float, default=0.05)
    parser.add_argument("--ack-timeout", type=float, default=15)
    parser.add_argument("--deadline", type=float, default=170)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plain", action="store_true", help="plain MQTT, no TLS, no ACL")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    random.seed(args.seed)
    root = Path(tempfile.mkdtemp(prefix="edgebox-fleet-"))
    began, load_before = dt.datetime.now(dt.UTC), os.getloadavg()[0]
    results, floors = [], {}
    try:
        log(f"fleet: making {args.boxes} boxes x {args.recordings} vault files")
        pki = TestPKI(root / "pki")
        fleet = make_fleet(
            root / "boxes", args.boxes, args.recordings, args.size, None if args.plain else pki
        )
        stores = args.stores.split(",")
        counts = [int(w) for w in args.workers.split(",")]
        with (
            Mosquitto(root / "broker", pki, acl_lines=fleet_acl(max(counts))) as broker,
            SeaweedFS(root / "seaweed") as seaweed,
        ):
            for kind in stores:
                env = clean_env(**(seaweed.env() if kind == "s3" else {}))
                target = f"s3://{seaweed.bucket}/alone" if kind == "s3" else str(root / "alone")
                floors[kind] = {
                    n: round(store_alone(target, env, fleet, n, 256 << 20), 1) for n in (1, 4)
                }
                log(f"store alone {kind}: {floors[kind]} MB/s with 1 / 4 threads")
                for round_no in range(args.rounds):  # alternate the order: load drifts
                    for workers in counts if round_no % 2 == 0 else counts[::-1]:
                        result = one_run(kind, workers, fleet, broker, seaweed, root, args, rng)
                        results.append({**result, "round": round_no + 1})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = summarise(results, floors, args)
    report["when"] = f"{began:%Y-%m-%d %H:%M}–{dt.datetime.now(dt.UTC):%H:%M} UTC"
    report["load_before"] = round(load_before, 1)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    text = section(report)
    print(text)
    if not args.no_write:
        write_section(Path(args.results), HEADING, text)


if __name__ == "__main__":
    main()
