"""Web benchmark: the recordings page and its JSON over 100,000 recordings, box against Datasette.

Everything is real: `edgebox init --demo` makes a box in a temp dir, `edgebox run` serves it
over HTTPS (cheroot + TLS), cameras are paired and enrolled through the API, and 100,000
recordings go into its database (`bench/web_fixture.py`: camera metadata parsed by the box's
own parser, rows as ingest writes them). A user made with `edgebox users add` logs in through
`POST /login`; the client then keeps one HTTPS connection alive per server and times each
request from send to the last byte. In the same run Datasette serves a copy of the same
database (`bench/web_peers.py`), asked for the same rows (`bench/web_queries.py`), both as it
ships (row count, facet suggestions) and lean (`_nocount`, `_nofacet`). Before timing, every
query's answer from the box and from Datasette must list the same recording ids in the same
order. Each round times every query on every server, interleaved; p50 and p95 are reported
per round, with the median and the best of the rounds. Nothing is asserted: a benchmark
reports.

    python bench/web.py                     # full run, rewrites "## Web" of bench/RESULTS.md
    python bench/web.py --quick --no-write  # small smoke run (2,000 recordings)
"""

from __future__ import annotations

import argparse
import os
import re
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
    Proc,
    add_output_args,
    exit_on_sigterm,
    log,
    proc_cpu,
    publish,
    run_cli,
    tree_cpu,
)
from bench.tus import DemoBox, plain_session  # noqa: E402
from bench.web_fixture import fill  # noqa: E402
from bench.web_peers import DATABASE, Datasette  # noqa: E402
from bench.web_queries import FORMATS, Query, plan, row_ids  # noqa: E402
from bench.web_report import percentile, raw, report  # noqa: E402

PASSWORD = "bench-web-password"  # noqa: S105 - a throwaway user of a temp box
_SERVER_TIMING = re.compile(r"app;dur=([\d.]+)")


@dataclass
class Target:
    """One server as the client sees it: a keep-alive session and how it spells a query."""

    key: str
    label: str
    server: str  # "box" or "datasette": how to read its answers
    url: str
    verify: str
    pid: int
    path: object  # (Query, fmt) -> path with query string
    requests: int  # timed requests per query and format in a round
    warmup: int  # untimed ones before the first round
    session: object = None

    def get(self, path: str):
        """GET `path` on the session; the response (raises unless 200)."""
        response = self.session.get(self.url + path, verify=self.verify, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"{self.label} {path}: {response.status_code} {response.text[:300]}")
        return response


@dataclass
class Series:
    """The timings of one (server, query, format) in one round."""

    client_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    nbytes: int = 0


class Bench:
    """One web run: the filled box, the peer, the cross-check, the timed rounds."""

    def __init__(self, args):
        self.args = args
        self.rounds: list[dict[tuple[str, str, str], Series]] = []
        self.checked: dict[tuple[str, str], int] = {}
        self.answers: dict[str, list[str]] = {}  # "server query format" -> ids, in order

    # -- set-up ----------------------------------------------------------------------------
    def start_box(self, root: Path) -> DemoBox:
        """A real box with cameras, filled with the recordings, and a logged-in user."""
        box = DemoBox(root / "box", "bench-web", root / "edgebox-run.log")
        try:
            box.start([f"CAM-{n + 1:02d}" for n in range(self.args.cameras)])
        finally:
            if box.proc:
                self.procs.append(box.proc)
        self.db_path = box.data_dir / "box.db"
        started = time.monotonic()
        self.fixture = fill(self.db_path, self.args.recordings)
        self.fill_seconds = time.monotonic() - started
        log(f"bench: {self.fixture} written in {self.fill_seconds:.1f} s")
        secret = root / "password"
        secret.write_text(PASSWORD)
        run_cli("users", "add", "bench", "--role", "crew", "--password-file", str(secret),
                "--config", box.config)  # fmt: skip
        return box

    def box_target(self, box: DemoBox) -> Target:
        """The box, logged in through the JSON login as the UI's script would."""
        args = self.args
        target = Target(
            "box", "box", "box", box.url, box.cert, box.proc.pid, Query.box_path,
            args.requests, args.warmup,
        )  # fmt: skip
        target.session = plain_session()
        answer = target.session.post(
            f"{box.url}/login", json={"username": "bench", "password": PASSWORD}, verify=box.cert
        )
        if answer.status_code != 200 or not answer.json().get("csrf_token"):
            raise RuntimeError(f"login: {answer.status_code} {answer.text[:300]}")
        return target

    def peer_targets(self, root: Path, box: DemoBox) -> list[Target]:
        """Datasette lean (no count, no facets) and as it ships, on one server; as it ships it
        takes seconds per first page, so it gets fewer requests."""
        peer = Datasette(root / "peer", self.db_path, box.cert, box.key, root / "datasette.log")
        self.procs.append(peer.proc)
        peer.wait_ready()
        self.peer = peer
        targets = []
        args = self.args
        for key, label, lean, count, warmup in (
            ("lean", "Datasette lean", True, args.requests, args.warmup),
            ("datasette", "Datasette", False, args.shipped_requests, 1),
        ):
            path = lambda query, fmt, lean=lean: query.datasette_path(DATABASE, fmt, lean)  # noqa: E731
            target = Target(
                key, label, "datasette", peer.url, box.cert, peer.proc.pid, path, count, warmup
            )
            target.session = plain_session()
            targets.append(target)
        return targets

    # -- measuring -------------------------------------------------------------------------
    def cross_check(self) -> None:
        """Every server must answer every query with the same recording ids, in order."""
        for query in self.queries:
            for fmt in FORMATS:
                answers = {
                    t.key: row_ids(t.server, fmt, t.get(t.path(query, fmt)).content)
                    for t in self.targets
                }
                box_ids = answers["box"]
                if not box_ids:
                    raise RuntimeError(f"{query.label} {fmt}: the box returned no rows")
                for key, ids in answers.items():
                    if ids != box_ids:
                        raise RuntimeError(
                            f"{query.label} {fmt}: {key} returned {len(ids)} ids "
                            f"{ids[:3]}..., the box {len(box_ids)} {box_ids[:3]}..."
                        )
                self.checked[(query.key, fmt)] = len(box_ids)
                self.answers.update({f"{k} {query.key} {fmt}": v for k, v in answers.items()})
        log(f"bench: same ids from every server for {len(self.checked)} query/format pairs")

    def series(self, target: Target, query: Query, fmt: str, count: int) -> Series:
        """`count` timed GETs of one query on one server (keep-alive)."""
        path = target.path(query, fmt)
        out = Series()
        cpu = proc_cpu(target.pid)
        for _ in range(count):
            started = time.perf_counter()
            response = target.get(path)
            out.client_ms.append((time.perf_counter() - started) * 1000)
            timing = _SERVER_TIMING.search(response.headers.get("Server-Timing", ""))
            if timing:
                out.server_ms.append(float(timing.group(1)))
            out.nbytes = len(response.content)
        out.cpu_s = proc_cpu(target.pid) - cpu
        return out

    def one_round(self, number: int) -> None:
        """Every query, format and server once; the server order rotates per round."""
        results: dict[tuple[str, str, str], Series] = {}
        order = (
            self.targets[number % len(self.targets) :] + self.targets[: number % len(self.targets)]
        )
        for query in self.queries:
            for fmt in FORMATS:
                for target in order:
                    if number == 0:
                        self.series(target, query, fmt, target.warmup)
                    series = self.series(target, query, fmt, target.requests)
                    results[(target.key, query.key, fmt)] = series
                line = " ".join(
                    f"{t.key} {percentile(results[(t.key, query.key, fmt)].client_ms, 50):6.2f}"
                    for t in self.targets
                )
                log(f"  {query.key:9s} {fmt:4s} p50 ms: {line}")
        self.rounds.append(results)

    def wait_quiet(self, seconds: float = 1.0, timeout: float = 120.0) -> None:
        """Wait until the box's process tree uses under 5% of a core (Litestream's first copy)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = tree_cpu(self.box.proc.pid)
            time.sleep(seconds)
            if tree_cpu(self.box.proc.pid) - before < 0.05 * seconds:
                return
        log("bench: the box did not go quiet; measuring anyway")

    def run(self) -> None:
        """Set up, cross-check, run the rounds, stop everything."""
        args = self.args
        root = Path(tempfile.mkdtemp(prefix="edgebox-web-bench-", dir=args.workdir))
        self.procs: list[Proc] = []
        started = time.monotonic()
        self.load = [os.getloadavg()[0]]
        try:
            log(f"bench: workdir {root}")
            self.box = self.start_box(root)
            self.queries = plan(self.db_path, args.deep_page)
            self.targets = [self.box_target(self.box), *self.peer_targets(root, self.box)]
            self.db_bytes = self.peer.db.stat().st_size
            self.sqlite_version = sqlite3.sqlite_version  # the library box and peer both load
            self.wait_quiet()
            self.cross_check()
            for number in range(args.reps):
                log(f"bench: round {number + 1}/{args.reps}")
                self.one_round(number)
        finally:
            for target in getattr(self, "targets", []):
                target.session.close()
            for proc in reversed(self.procs):
                proc.stop()
            if args.keep:
                log(f"bench: kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
        self.elapsed = time.monotonic() - started
        self.load.append(os.getloadavg()[0])


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the bench, print the section (and write it unless told not to)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="rounds (>= 2)")
    parser.add_argument("--requests", type=int, default=100, help="timed requests per round")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests before round 1")
    parser.add_argument(
        "--shipped-requests",
        type=int,
        default=5,
        help="timed requests per round for Datasette as shipped (seconds each)",
    )
    parser.add_argument("--recordings", type=int, default=100_000)
    parser.add_argument("--cameras", type=int, default=12)
    parser.add_argument("--deep-page", type=int, default=500, help="page reached by cursor")
    parser.add_argument("--quick", action="store_true", help="2,000 recordings, prints only")
    add_output_args(parser, json_help="also write raw timings here")
    # bench/run hands every benchmark the same arguments; ignore the other benches' own.
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        log(f"bench/web.py: ignoring {' '.join(unknown)}")
    if args.quick:
        args.recordings, args.cameras, args.requests, args.warmup = 2000, 3, 10, 3
        args.shipped_requests = min(args.shipped_requests, 3)
        args.reps = min(args.reps, 2)
    args.command = "python bench/web.py " + " ".join(argv)
    exit_on_sigterm()
    bench = Bench(args)
    bench.run()
    publish(args, "Web", report(bench), raw(bench))
    return 0


if __name__ == "__main__":
    sys.exit(main())
