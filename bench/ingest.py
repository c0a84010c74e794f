"""Ingest benchmark: how fast a real box takes footage over tus, against the disk and a plain peer.

Everything is real: `edgebox init --demo` makes a box in a temp dir, `edgebox run` serves it
over HTTPS (cheroot + TLS), cameras are paired and enrolled through the API, and the footage
goes in over tus 1.0.0. The same client code, bytes and chunk sizes then feed a plain,
non-encrypting tus server (tuspyserver on uvicorn, `bench/peer_server.py`), over HTTP and
HTTPS, and the same filesystem is measured with plain writes. Each measurement runs at least
twice (interleaved, the machine is noisy); best and median are reported. Nothing is asserted:
a benchmark reports.

    python bench/ingest.py                    # full run, rewrites "## Ingest" of bench/RESULTS.md
    python bench/ingest.py --quick --no-write # small smoke run
    python bench/ingest.py --profile          # plus one box upload under py-spy, hot spots printed

MB/s are decimal (10^6 bytes per second); sizes are binary (MiB, GiB).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import ingest_floor as floor  # noqa: E402
from bench.common import (  # noqa: E402
    GIB,
    HERE,
    MB,
    MIB,
    Proc,
    add_output_args,
    exit_on_sigterm,
    filesystem_of,
    log,
    publish,
    vm_hwm,
)
from bench.ingest_measure import Measurement, timed  # noqa: E402
from bench.ingest_peers import Peer, disk_write, vault_alone  # noqa: E402
from bench.ingest_pipeline import SYNC_EVERY, PipelineServer  # noqa: E402
from bench.ingest_report import report  # noqa: E402
from bench.profiling import Spy, pyspy, source_snapshot, summarize_pyspy  # noqa: E402
from bench.tus import DemoBox, Pattern, TusUploader, tuspy_upload  # noqa: E402


class Bench:
    """One ingest run: the box, the peers, every measurement over the rounds, the figures."""

    def __init__(self, args):
        self.args = args
        self.size = args.size_mib * MIB
        self.streams = args.streams
        self.part = self.size // self.streams
        self.pattern = Pattern(max(8 * MIB, args.chunk_mib * MIB))
        self.chunk = args.chunk_mib * MIB
        self.small_chunk = args.small_chunk_mib * MIB
        self.measurements: dict[str, Measurement] = {}
        self.order: list[str] = []
        self.skipped: dict[str, str] = {}

    def add(self, key, label, means, group):
        """A new row of the table (in the order rows are added)."""
        self.measurements[key] = Measurement(key, label, means, group)
        self.order.append(key)

    def record(self, key: str, pid: int | None, body) -> None:
        """Time `body()` once for row `key` (server `pid`); a failure is noted, not raised."""
        m = self.measurements[key]
        try:
            sample = timed(pid, body)
        except Exception as exc:  # noqa: BLE001 - report and carry on with the others
            self.skipped[key] = f"{type(exc).__name__}: {exc}"[:300]
            log(f"  {m.label}: FAILED {self.skipped[key]}")
            return
        m.samples.append(sample)
        extra = ""
        if sample.hwm:
            extra = f", server CPU {sample.server_cpu:.1f}s, peak RSS {sample.hwm / MB:.0f} MB"
        log(f"  {m.label}: {sample.mbps:7.1f} MB/s ({sample.seconds:.2f}s{extra})")

    # uploads --------------------------------------------------------------------------
    def single(self, create_url, verify, camera, check, chunk) -> int:
        """One upload of the whole size on one Session; the bytes moved."""
        client = TusUploader(create_url, verify, camera[1], camera[0])
        try:
            result = client.upload(self.pattern, self.size, chunk)
        finally:
            client.close()
        check(result, self.size)
        return self.size

    def multi(self, create_url, verify, cameras, check, chunk) -> int:
        """One concurrent upload of a part per camera, a thread each; the bytes moved."""
        clients = [TusUploader(create_url, verify, token, serial) for serial, token in cameras]
        results: list = [None] * len(clients)
        errors: list = []

        def run(i):
            try:
                results[i] = clients[i].upload(self.pattern, self.part, chunk)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in clients:
            c.close()
        if errors:
            raise errors[0]
        for r in results:
            check(r, self.part)
        return self.part * len(clients)

    def tuspy(self, create_url, cert, camera, check, chunk) -> int:
        """One upload of the whole size with tuspy; the bytes moved."""
        serial, token = camera
        result = tuspy_upload(create_url, cert, token, serial, self.pattern, self.size, chunk)
        check(result, self.size)
        return self.size

    def through_pipeline(self, pipeline) -> int:
        """One upload of the whole size through the web-server-less pipeline; bytes moved."""
        evidence = pipeline.send(self.pattern, self.size, self.chunk)
        self.check_box({"evidence": evidence}, self.size)
        return self.size

    def run(self) -> None:
        """Start box and peers, run every step each round, profile if asked, stop all."""
        args = self.args
        root = Path(tempfile.mkdtemp(prefix="edgebox-bench-", dir=args.workdir))
        self.root = root
        procs: list[Proc] = []
        started = time.monotonic()
        try:
            log(f"bench: workdir {root}")
            box = DemoBox(root / "box", "bench", root / "edgebox-run.log")
            # The source the box runs, to name profiled lines even if the files change meanwhile.
            self.sources = source_snapshot()
            try:
                box.start([f"BENCH-CAM-{n + 1}" for n in range(self.streams)])
            finally:
                if box.proc:
                    procs.append(box.proc)
            self.box = box
            self.fs = filesystem_of(box.data_dir)
            log(f"bench: box {box.url} (pid {box.proc.pid}), data on {self.fs}")
            peers: dict[str, Peer] = {}
            for name, tls, fsync in (
                ("peer-http", None, False),
                ("peer-https", (box.cert, box.key), False),
                ("peer-https-fsync", (box.cert, box.key), True),
            ):
                if name in args.skip:
                    continue
                try:
                    peers[name] = Peer(root, name, tls, fsync)
                    procs.append(peers[name].proc)
                except Exception as exc:  # noqa: BLE001 - e.g. HTTPS peer not feasible
                    self.skipped[name] = f"{type(exc).__name__}: {exc}"[:300]
                    log(f"bench: {name} unavailable: {self.skipped[name]}")
            pipeline = None
            if "pipeline" not in args.skip:
                pipeline = PipelineServer(root, box.cert, box.key)
                procs.append(pipeline.proc)
            self.plan(box, peers, pipeline)
            log(
                f"bench: hashing the reference data ({self.size // MIB} MiB, "
                f"{self.part // MIB} MiB)"
            )
            self.pattern.sha256(self.size)
            self.pattern.sha256(self.part)
            self.box_lifetime_hwm_start = vm_hwm(box.proc.pid)
            for rep in range(1, args.reps + 1):
                log(f"bench: round {rep}/{args.reps}")
                for key, pid, body, after in self.steps:
                    self.record(key, pid, body)
                    after()
            self.box_lifetime_hwm = vm_hwm(box.proc.pid)
            if "floor" not in args.skip:
                log("bench: the CPU floor (TLS, SHA-256, AES-GCM alone)")
                self.floor = floor.measure(Path(box.cert), Path(box.key))
            if args.profile:
                self.profile(box)
            self.elapsed = time.monotonic() - started
        finally:
            for proc in reversed(procs):
                proc.stop()
            if args.keep:
                log(f"bench: kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)

    def plan(self, box: DemoBox, peers: dict[str, Peer], pipeline) -> None:
        """The rows and the steps of a round: (key, server pid, timed body, untimed after)."""
        size_txt = (
            f"1 × {self.size // MIB} MiB" if self.size < GIB else f"1 × {self.size // GIB} GiB"
        )
        multi_txt = f"{self.streams} × {self.part // MIB} MiB concurrent"
        chunk_txt = f"{self.chunk // MIB} MiB PATCH"
        small_txt = f"{self.small_chunk // MIB} MiB PATCH"
        noop = lambda: None  # noqa: E731
        steps = []
        scratch = box.data_dir / "bench-scratch"
        scratch.mkdir()

        def wipe():  # after (outside) the timed section: deleting 1 GiB takes a while
            for path in scratch.iterdir():
                path.unlink()

        self.add(
            "disk",
            f"disk: {size_txt}, {self.chunk // MIB} MiB writes, fsync at end",
            "plain os.write() of the same bytes to the box's filesystem, one fsync at the "
            "end: the limit",
            "disk",
        )
        steps.append(
            (
                "disk",
                None,
                lambda: disk_write(
                    scratch / "disk.bin", self.pattern, self.size, self.chunk, False
                ),
                wipe,
            )
        )
        self.add(
            "disk-each",
            f"disk: {size_txt}, {self.chunk // MIB} MiB writes, fsync each",
            "the same with an fsync after every write (the box fsyncs once per PATCH)",
            "disk",
        )
        steps.append(
            (
                "disk-each",
                None,
                lambda: disk_write(scratch / "disk.bin", self.pattern, self.size, self.chunk, True),
                wipe,
            )
        )
        if "vault" not in self.args.skip:
            self.add(
                "vault",
                f"vault Writer alone: {size_txt}, {self.chunk // MIB} MiB writes",
                "edgebox.vault.Writer in the bench process, no HTTP/TLS: AES-256-GCM per "
                "1 MiB segment, SHA-256 of plaintext and ciphertext, fsync per write",
                "disk",
            )
            steps.append(
                (
                    "vault",
                    None,
                    lambda: vault_alone(scratch, self.pattern, self.size, self.chunk),
                    wipe,
                )
            )
        if pipeline is not None:
            self.add(
                "pipeline",
                f"box without its web server: {size_txt}, raw TLS, sync every "
                f"{SYNC_EVERY // MIB} MiB",
                "the box's vault Writer in a server process of its own, fed straight from a "
                "raw TLS socket (no HTTP, no tus, no database; a fresh 1 MiB buffer per read "
                f"as in the box, a sync every {SYNC_EVERY // MIB} MiB as at the end of a PATCH), "
                "the client "
                "sending the same bytes with `sendall` and no copies (`bench/ingest_pipeline.py`)"
                ": what this design could reach with a perfect web server",
                "pipeline",
            )
            steps.append(
                (
                    "pipeline",
                    pipeline.proc.pid,
                    lambda: self.through_pipeline(pipeline),
                    pipeline.settle,
                )
            )

        targets = [("box", box.url + "/tus/", box.cert, box.cert, box.proc.pid, None)]
        for name, peer in peers.items():
            targets.append(
                (name, f"{peer.url}/files/", peer.verify, peer.cert, peer.proc.pid, peer)
            )
        cam = box.cameras[0]
        for name, create_url, verify, cert, pid, peer in targets:
            where = {
                "box": "EdgeBox over HTTPS (cheroot, TLS), encrypting",
                "peer-http": "tuspyserver/uvicorn, plain HTTP, no encryption, no fsync",
                "peer-https": "tuspyserver/uvicorn, HTTPS (same cert), no encryption, no fsync",
                "peer-https-fsync": "tuspyserver/uvicorn, HTTPS, LocalFileStorage "
                "(fsync per PATCH), no encryption",
            }[name]
            check = self.check_box if peer is None else self.check_peer(peer)
            after = noop if peer is None else peer.clear
            u, v, c = create_url, verify, check
            variants = [
                (
                    "single",
                    f"{size_txt}, {chunk_txt}, Session",
                    lambda u=u, v=v, c=c: self.single(u, v, cam, c, self.chunk),
                )
            ]
            if name != "peer-https-fsync":
                variants += [
                    (
                        "multi",
                        f"{multi_txt}, {chunk_txt}",
                        lambda u=u, v=v, c=c: self.multi(u, v, box.cameras, c, self.chunk),
                    ),
                    (
                        "small",
                        f"{size_txt}, {small_txt}, Session",
                        lambda u=u, v=v, c=c: self.single(u, v, cam, c, self.small_chunk),
                    ),
                    (
                        "tuspy",
                        f"{size_txt}, {chunk_txt}, tuspy (new connection per request)",
                        lambda u=u, ce=cert, c=c: self.tuspy(u, ce, cam, c, self.chunk),
                    ),
                ]
            for variant, text, body in variants:
                key = f"{name}/{variant}"
                if key in self.args.skip or variant in self.args.skip:
                    continue
                self.add(key, f"{name}: {text}", where, name)
                steps.append((key, pid, body, after))
        self.steps = steps

    def check_box(self, result: dict, size: int) -> None:
        """The box's evidence hash must be that of the bytes sent."""
        expected = self.pattern.sha256(size)
        if result["evidence"] != expected:
            raise RuntimeError(f"box evidence hash {result['evidence']} != sent data {expected}")

    def check_peer(self, peer: Peer):
        """A check that `peer` holds a file of the size sent."""

        def check(result: dict, size: int) -> None:
            if size not in peer.stored_sizes():
                raise RuntimeError(f"{peer.name} holds {peer.stored_sizes()}, expected {size}")

        return check

    # profiling ------------------------------------------------------------------------
    def profile(self, box: DemoBox) -> None:
        """One more box upload (not counted) under py-spy; prints the hottest frames."""
        if not pyspy():
            log("bench: --profile needs py-spy (pip install py-spy); skipped")
            return
        out = self.root / "box.pyspy.txt"
        chunk = (self.args.profile_chunk_mib or self.args.chunk_mib) * MIB
        self.profile_chunk = chunk
        done = [m for k, m in self.measurements.items() if k.startswith("box/") and m.samples]
        rate = min(m.median() for m in done) if done else 50.0
        seconds = max(4, int(self.size / (rate * MB) * (8 * MIB / chunk) ** 0.5) + 4)
        spy = Spy(box.proc.pid, out, rate=200, seconds=seconds)
        time.sleep(1.0)
        try:
            self.single(box.url + "/tus/", box.cert, box.cameras[0], self.check_box, chunk)
        finally:
            spy.wait(timeout=seconds + 60)
        if not out.exists():
            log(f"bench: py-spy wrote nothing: {spy.stderr()[-500:]}")
            return
        self.hotspots = summarize_pyspy(out.read_text(), self.sources)
        keep = HERE / "ingest-profile.txt"
        shutil.copy(out, keep)
        log(f"bench: py-spy collapsed stacks kept in {keep}")


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the bench, print the section (and write it unless told not to)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2, help="rounds of every measurement (>= 2)")
    parser.add_argument("--size-mib", type=int, default=1024, help="bytes per measurement")
    parser.add_argument("--streams", type=int, default=4, help="concurrent uploads")
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--small-chunk-mib", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="64 MiB, for a smoke test")
    add_output_args(parser, json_help="also write raw samples here")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help="skip a server (peer-http, peer-https, peer-https-fsync), a variant "
        "(multi, small, tuspy), vault, pipeline, floor (the CPU floor), or KEY like box/tuspy",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one extra box upload under py-spy; hot spots in the report",
    )
    parser.add_argument(
        "--profile-chunk-mib",
        type=int,
        help="PATCH size of the profiled upload (default: --chunk-mib)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib = 64
    args.reps = max(2, args.reps)

    exit_on_sigterm()
    bench = Bench(args)
    bench.run()
    raw = {k: [s.__dict__ for s in v.samples] for k, v in bench.measurements.items()}
    publish(args, "Ingest", report(bench), raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
