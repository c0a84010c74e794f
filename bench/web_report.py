"""The `## Web` section of bench/RESULTS.md, and the raw figures, from a finished web Bench."""

from __future__ import annotations

import datetime as dt
import math
import statistics
from importlib.metadata import version

from bench.common import MB, fmt, machine
from bench.web_fixture import SPAN_DAYS
from bench.web_peers import datasette_version
from bench.web_queries import FORMATS, PAGE


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile `pct` (0-100) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(pct / 100 * len(ordered)))) - 1]


def _per_round(bench, key: tuple, pick) -> list[float]:
    """`pick(series)` of one (server, query, format) in every round that has figures."""
    return [pick(r[key]) for r in bench.rounds if key in r and r[key].client_ms]


def figures(bench, target: str, query: str, form: str) -> dict:
    """p50/p95/max (median of rounds, best for p50 and p95), server-side p50, CPU ms/request."""
    key = (target, query, form)
    p50 = _per_round(bench, key, lambda s: percentile(s.client_ms, 50))
    p95 = _per_round(bench, key, lambda s: percentile(s.client_ms, 95))
    top = _per_round(bench, key, lambda s: max(s.client_ms))
    server = _per_round(bench, key, lambda s: s.server_ms and percentile(s.server_ms, 50))
    cpu = _per_round(bench, key, lambda s: s.cpu_s * 1000 / len(s.client_ms))
    size = _per_round(bench, key, lambda s: s.nbytes)
    med = lambda xs: statistics.median(xs) if xs and all(x is not None for x in xs) else None  # noqa: E731
    return {
        "p50": med(p50),
        "p50_best": min(p50) if p50 else None,
        "p95": med(p95),
        "p95_best": min(p95) if p95 else None,
        "max": med(top),
        "server_p50": med([s for s in server if s]) if any(server) else None,
        "cpu_ms": med(cpu),
        "bytes": med(size),
    }


def _cell(median, best) -> str:
    return f"{fmt(median, '.2f')} ({fmt(best, '.2f')})"


def report(bench) -> str:
    """The section: set-up, the table, what each column is, the aim with its evidence."""
    args = bench.args
    now = dt.datetime.now().astimezone()
    rows, wins = [], {"lean": 0, "datasette": 0}
    for query in bench.queries:
        for form in FORMATS:
            box = figures(bench, "box", query.key, form)
            lean = figures(bench, "lean", query.key, form)
            peer = figures(bench, "datasette", query.key, form)
            for key, other in (("lean", lean), ("datasette", peer)):
                wins[key] += bool(box["p50"] and other["p50"] and box["p50"] < other["p50"])
            ratio = lean["p50"] / box["p50"] if box["p50"] and lean["p50"] else None
            rows.append(
                f"| {query.label} | {form} | {_cell(box['p50'], box['p50_best'])} "
                f"| {fmt(box['p95'], '.2f')} | {fmt(box['server_p50'], '.2f')} "
                f"| {fmt(box['cpu_ms'], '.1f')} "
                f"| {_cell(lean['p50'], lean['p50_best'])} | {fmt(lean['p95'], '.2f')} "
                f"| {fmt(lean['cpu_ms'], '.1f')} "
                f"| {_cell(peer['p50'], peer['p50_best'])} | {fmt(peer['max'], '.2f')} "
                f"| {fmt(peer['cpu_ms'], '.1f')} | {fmt(ratio, '.1f')}× |"
            )
    total = len(rows)
    return "\n".join(
        [
            "## Web",
            "",
            f"Run {now:%Y-%m-%d %H:%M %Z} with `{args.command.strip()}` ({args.reps} interleaved "
            f"rounds of {args.requests} timed requests per query, format and server after "
            f"{args.warmup} untimed ones, except Datasette as shipped: {args.shipped_requests} "
            f"after 1, as it takes up to seconds each; {bench.elapsed:.0f} s in all; load average "
            f"{bench.load[0]:.1f} before, {bench.load[1]:.1f} after: the machine is shared). "
            f"Machine: {machine()}; SQLite {bench.sqlite_version}, Flask {version('flask')}, "
            f"cheroot {version('cheroot')}, Datasette {datasette_version()} on uvicorn "
            f"{version('uvicorn')}. Client, box and Datasette share the same cores.",
            "",
            f"Data: {bench.fixture['recordings']:,} recordings from {bench.fixture['cameras']} "
            f"cameras over {SPAN_DAYS} days, written into a running box's database in "
            f"{bench.fill_seconds:.0f} s (`bench/web_fixture.py`); database "
            f"{bench.db_bytes / MB:.0f} MB. Every query asks for one page of {PAGE} rows, newest "
            "first, with the box's 16 list columns; each server's answer was checked to hold the "
            "same recording ids in the same order before timing.",
            "",
            "Milliseconds per request as the client sees them (sent to last byte, one keep-alive "
            "HTTPS connection per server, `requests`). p50 cells: median of the rounds' p50 "
            "(best round's p50). p95, max: median of the rounds' p95, maximum. *box server*: "
            "the box's own `Server-Timing` (Flask's request hooks; without TLS and HTTP "
            "parsing). CPU: the "
            "server process's user+sys ms per request. Last column: lean Datasette's p50 over "
            "the box's.",
            "",
            "| query | format | box p50 | box p95 | box server p50 | box CPU "
            "| lean p50 | lean p95 | lean CPU | Datasette p50 | Datasette max | Datasette CPU "
            "| lean / box |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
            "| ---: |",
            *rows,
            "",
            "- **box**: `GET /recordings?…` (the page a person sees: Jinja template, layout, "
            "filters form) and `GET /api/v1/recordings?…` (JSON), logged in as a crew user "
            "(signed session cookie, user looked up per request), `edgebox run` with its defaults "
            "(cheroot, TLS, Litestream replicating). A deep page is reached with the page's own "
            "`cursor` (keyset: `received_at~id`), as the *Older recordings* link does.",
            "- **Datasette**: `datasette serve -i` (immutable) with `--inspect-file`, same "
            "certificate, a copy of the same database file (same indexes) made with SQLite's "
            "backup API; `/edgebox/recordings?_sort_desc=received_at&_size=50&_col=…` plus the "
            "filters as `column__exact=`, `warned__isnull=1&exemption__isnull=1`, "
            "`started_at__gte/__lt`, and `_next=received_at,id` for the deep page; JSON via "
            "`.json?_shape=objects`. *Datasette* is as it ships (a filtered `count(*)` and facet "
            "suggestions on every first page); *lean* adds `_nocount=1&_nofacet=1`, i.e. the "
            "same work as the box, which shows no count.",
            f"- Aim (issue 4): faster than the peer. Box p50 below lean Datasette's in "
            f"{wins['lean']} of {total} rows, below Datasette-as-shipped's in "
            f"{wins['datasette']} of {total}.",
            "",
        ]
    )


def raw(bench) -> dict:
    """Every round's timings, for --json."""
    return {
        "queries": [
            {"key": q.key, "label": q.label, "args": q.args, "after": q.after}
            for q in bench.queries
        ],
        "fixture": bench.fixture,
        "checked": {f"{k[0]} {k[1]}": n for k, n in bench.checked.items()},
        "answers": bench.answers,
        "rounds": [
            {
                " ".join(key): {
                    "client_ms": s.client_ms,
                    "server_ms": s.server_ms,
                    "cpu_s": s.cpu_s,
                    "bytes": s.nbytes,
                }
                for key, s in results.items()
            }
            for results in bench.rounds
        ],
    }
