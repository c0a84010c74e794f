"""Compliance benchmark: the compliance report over 100,000 recordings, against the list page.

A real box (`edgebox init --demo`, `edgebox run`, 12 cameras enrolled through the API) gets
the web benchmark's 100,000 recordings (`bench/web_fixture.py`) written into its database
while it runs, with `compliance.organisation_type = police` so per-user counts are computed
too (the heavier path). A supervisor made with `edgebox users add` logs in through
`POST /login`; one keep-alive HTTPS session then times each request from send to last byte.

The peer, measured in the same rounds on the same box: the recordings list of today
(`/recordings?from=TODAY&to=TOMORROW`, page and JSON), the page a supervisor opens every day.
The report is asked for whole (every check, exact counts, per-camera and per-user counts,
100 rows per check), for today, and for one camera, as JSON and as the page; the CSV export
(every row, logged in custody) gets fewer requests. Rounds interleave the queries; p50 and
p95 per round, the median of the rounds and the ratio to the list of today are reported.

    python bench/compliance.py                      # full run, rewrites "## Compliance"
    python bench/compliance.py --quick --no-write   # 2,000 recordings, prints only
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    add_output_args,
    clean_env,
    exit_on_sigterm,
    log,
    machine,
    publish,
    run_cli,
)
from bench.tus import DemoBox, plain_session  # noqa: E402
from bench.web_fixture import fill  # noqa: E402
from bench.web_report import percentile  # noqa: E402

PASSWORD = "bench-compliance-password"  # noqa: S105 - a throwaway user of a temp box
ENV = {"EDGEBOX_COMPLIANCE__ORGANISATION_TYPE": "police"}


def queries(today: str, tomorrow: str) -> list[tuple[str, str, str]]:
    """(key, label, path): the peer first, then the report's questions."""
    day = f"from={today}&to={tomorrow}"
    return [
        ("list-page", "list of today (page, peer)", f"/recordings?{day}"),
        ("list-json", "list of today (JSON, peer)", f"/api/v1/recordings?{day}"),
        ("report-json", "report, everything (JSON)", "/api/v1/compliance"),
        ("report-page", "report, everything (page)", "/compliance"),
        ("today-json", "report of today (JSON)", f"/api/v1/compliance?{day}"),
        ("camera-json", "report of one camera (JSON)", "/api/v1/compliance?camera=CAM-01"),
    ]


def timed(session, method: str, url: str, verify: str, **kwargs) -> tuple[float, object]:
    """One request: milliseconds from send to last byte, and the response (200 or raise)."""
    started = time.perf_counter()
    response = session.request(method, url, verify=verify, timeout=120, **kwargs)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{method} {url}: {response.status_code} {response.text[:300]}")
    return elapsed, response


def run(args) -> dict:
    """Start and fill the box, log in, time the rounds; the raw figures."""
    root = Path(tempfile.mkdtemp(prefix="edgebox-compliance-bench-", dir=args.workdir))
    box = DemoBox(root / "box", "bench-compliance", root / "edgebox-run.log", clean_env(**ENV))
    raw: dict = {"rounds": [], "export_ms": []}
    try:
        box.start([f"CAM-{n + 1:02d}" for n in range(args.cameras)])
        started = time.monotonic()
        raw["fixture"] = fill(box.data_dir / "box.db", args.recordings)
        log(f"bench: {raw['fixture']} written in {time.monotonic() - started:.1f} s")
        secret = root / "password"
        secret.write_text(PASSWORD)
        run_cli("users", "add", "bench", "--role", "supervisor", "--password-file", str(secret),
                "--config", box.config, env=clean_env(**ENV))  # fmt: skip
        session = plain_session()
        login = session.post(
            f"{box.url}/login", json={"username": "bench", "password": PASSWORD}, verify=box.cert
        ).json()
        now = dt.datetime.now(dt.UTC)
        today = now.strftime("%Y-%m-%dT00:00:00Z")
        tomorrow = (now + dt.timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
        plan = queries(today, tomorrow)
        _, answer = timed(session, "GET", f"{box.url}/api/v1/compliance", box.cert)
        raw["counts"] = answer.json()["counts"]
        _, listed = timed(session, "GET", f"{box.url}/api/v1/recordings?limit=500&from={today}"
                          f"&to={tomorrow}", box.cert)  # fmt: skip
        raw["today_rows_first_page"] = len(listed.json()["items"])
        for _key, _label, path in plan:  # warm-up, untimed
            for _ in range(args.warmup):
                timed(session, "GET", box.url + path, box.cert)
        for number in range(args.reps):
            results: dict[str, list[float]] = {key: [] for key, _, _ in plan}
            order = plan[number % len(plan) :] + plan[: number % len(plan)]
            for key, _label, path in order:
                for _ in range(args.requests):
                    results[key].append(timed(session, "GET", box.url + path, box.cert)[0])
            for _ in range(args.exports):
                ms, response = timed(
                    session, "POST", f"{box.url}/api/v1/compliance/export", box.cert,
                    json={"format": "csv"}, headers={"X-CSRF-Token": login["csrf_token"]},
                )  # fmt: skip
                raw["export_ms"].append(ms)
                raw["export_bytes"] = len(response.content)
                raw["export_rows"] = response.content.count(b"\r\n") - 1
            raw["rounds"].append(results)
            log(f"bench: round {number + 1}: " + ", ".join(
                f"{k} {percentile(v, 50):.1f}" for k, v in results.items()))  # fmt: skip
        raw["plan"] = plan
        session.close()
    finally:
        if box.proc:
            box.proc.stop()
        if args.keep:
            log(f"bench: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return raw


def report(args, raw: dict) -> str:
    """The `## Compliance` section of RESULTS.md."""
    plan = raw["plan"]

    def median_of(key: str, q: float) -> float:
        return statistics.median(percentile(r[key], q) for r in raw["rounds"])

    lines = [
        "## Compliance",
        "",
        f"`{args.command}` on {machine()}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: a real "
        f"box over HTTPS with {raw['fixture']['recordings']:,} recordings from "
        f"{raw['fixture']['cameras']} cameras, {args.reps} rounds × {args.requests} requests per "
        "query (interleaved, keep-alive, a logged-in supervisor). Milliseconds from send to last "
        "byte; the median over the rounds of each round's p50 and p95. Ratio: p50 against the "
        "list of today in the same format (page or JSON).",
        "",
        f"Counts in the fixture: {raw['counts']}; today holds "
        f"{'at least ' if raw['today_rows_first_page'] == 500 else ''}"
        f"{raw['today_rows_first_page']} recordings (the list shows 50 per page).",
        "",
        "| query | p50 ms | p95 ms | × list of today |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, label, _ in plan:
        peer = "list-page" if key.endswith("page") else "list-json"
        ratio = median_of(key, 50) / median_of(peer, 50)
        lines.append(
            f"| {label} | {median_of(key, 50):.2f} | {median_of(key, 95):.2f} | {ratio:.1f}× |"
        )
    if raw["export_ms"]:
        lines += [
            "",
            f"CSV export of the whole report ({raw['export_rows']:,} rows, "
            f"{raw['export_bytes']:,} bytes, logged in custody): median "
            f"{statistics.median(raw['export_ms']):.0f} ms over {len(raw['export_ms'])} exports.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the bench, print the section (and write it unless told not to)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="rounds")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per query")
    parser.add_argument("--exports", type=int, default=2, help="CSV exports per round")
    parser.add_argument("--recordings", type=int, default=100_000)
    parser.add_argument("--cameras", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="2,000 recordings, prints only")
    add_output_args(parser, json_help="also write raw timings here")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        log(f"bench/compliance.py: ignoring {' '.join(unknown)}")
    if args.quick:
        args.recordings, args.cameras, args.requests, args.reps = 2000, 3, 5, 2
    args.command = "python bench/compliance.py " + " ".join(argv)
    exit_on_sigterm()
    raw = run(args)
    publish(args, "Compliance", report(args, raw), raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
