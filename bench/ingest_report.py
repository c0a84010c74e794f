"""The `## Ingest` section of bench/RESULTS.md, from a finished ingest Bench."""

from __future__ import annotations

import datetime as dt
import os

from bench.common import MB, MIB, fmt, machine


def report(bench) -> str:
    """The section: the table, ratios, aims, what the rows are, hot spots (if profiled)."""
    m = bench.measurements
    have = {k: v for k, v in m.items() if v.samples}
    reps = bench.args.reps
    now = dt.datetime.now().astimezone()
    lines = [
        "## Ingest",
        "",
        f"Run {now:%Y-%m-%d %H:%M %Z} with `bench/run` ({reps} interleaved rounds; "
        f"{bench.elapsed:.0f} s in all). Machine: {machine()}; box data, peer files and disk "
        f"test on {bench.fs}. Client and servers share the same {os.cpu_count()} cores.",
        "",
        "MB/s = 10^6 bytes per second of plaintext, from tus creation to the last PATCH's "
        "answer (for concurrent uploads: aggregate bytes over wall time). Server CPU = user+sys "
        "seconds of the server process per GiB ingested (median); client CPU likewise for the "
        "bench process. Peak RSS = the server process's VmHWM during the measurement (reset per "
        "measurement through /proc/PID/clear_refs; cross-checked with 50 ms psutil samples).",
        "",
        "| measurement | best MB/s | median MB/s | server CPU s/GiB | client CPU s/GiB "
        "| server peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in bench.order:
        x = m[key]
        if not x.samples:
            lines.append(f"| {x.label} | failed | | | | |")
            continue
        rss = x.peak_rss()
        lines.append(
            f"| {x.label} | {x.best():.0f} | {x.median():.0f} "
            f"| {fmt(x.cpu_per_gib(), '.2f')} | {fmt(x.client_cpu_per_gib(), '.2f')} "
            f"| {fmt(rss and rss / MB)} |"
        )
    lines += ["", "Ratios (best / best, median / median in brackets):", ""]

    def ratio(a, b):
        if a in have and b in have:
            return (
                f"{have[a].best() / have[b].best():.2f} ({have[a].median() / have[b].median():.2f})"
            )
        return "–"

    lines += [
        "| box scenario | box / peer-https | box / peer-http | box / disk (fsync at end) "
        "| box / disk (fsync each) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for variant in ("single", "multi", "small", "tuspy"):
        key = f"box/{variant}"
        if key in m:
            lines.append(
                f"| {m[key].label.removeprefix('box: ')} "
                f"| {ratio(key, f'peer-https/{variant}')} "
                f"| {ratio(key, f'peer-http/{variant}')} | {ratio(key, 'disk')} "
                f"| {ratio(key, 'disk-each')} |"
            )
    if "box/single" in have and "peer-https-fsync/single" in have:
        lines += [
            "",
            f"Box / peer-https-fsync (both fsync every PATCH), single upload: "
            f"{ratio('box/single', 'peer-https-fsync/single')}.",
        ]

    box_rss = max(
        [have[k].peak_rss() or 0 for k in have if k.startswith("box/")]
        + [getattr(bench, "box_lifetime_hwm", 0)]
    )
    lines += ["", "Aims:", ""]
    aims = []
    for variant in ("single", "multi"):
        key, peer = f"box/{variant}", f"peer-https/{variant}"
        if key in have and peer in have:
            ok = have[key].best() >= have[peer].best()
            aims.append(
                f"- box ≥ peer throughput while encrypting ({variant}, vs HTTPS peer): "
                f"best {have[key].best():.0f} vs {have[peer].best():.0f} MB/s, median "
                f"{have[key].median():.0f} vs {have[peer].median():.0f} — "
                f"{'met' if ok else 'NOT met'} (on best)"
            )
    if "box/single" in have and "disk" in have:
        ok = have["box/single"].best() >= 0.5 * have["disk"].best()
        aims.append(
            f"- box ≥ 0.5 × disk (single upload vs fsync-at-end disk): best "
            f"{have['box/single'].best():.0f} vs 0.5 × {have['disk'].best():.0f} = "
            f"{0.5 * have['disk'].best():.0f} MB/s, median "
            f"{have['box/single'].median():.0f} vs {0.5 * have['disk'].median():.0f} — "
            f"{'met' if ok else 'NOT met'} "
            f"(on best)"
        )
    aims += _pipeline_lines(have)
    aims += _floor_lines(bench, have)
    aims.append(
        f"- box peak RSS < 150 MB: {box_rss / MB:.0f} MB (box process VmHWM over the "
        f"whole run, start-up included) — {'met' if box_rss < 150 * MB else 'NOT met'}"
    )
    lines += aims
    lines += ["", "What the rows are:", ""]
    seen = set()
    for key in bench.order:
        x = m[key]
        if x.group not in seen:
            seen.add(x.group)
            lines.append(f"- **{x.group}**: {x.means}.")
    lines.append(
        "- Client: one `requests.Session` per upload (keep-alive) sending pre-sliced "
        "chunks of a repeating seeded random block (never the whole file in memory); "
        "the identical code feeds the box and the peers. The box's evidence SHA-256 is "
        "checked against the sent bytes, the peer's stored file size is checked. "
        "`tuspy` rows use tuspy 1.x, which opens a new connection (and TLS handshake) "
        "for every PATCH."
    )
    lines.append(
        "- The peer is uvicorn with its pure-Python h11 parser (the bench extras do not "
        "pull in httptools/uvloop); no-fsync peer rows finish in the page cache, so they "
        "are not bounded by the disk."
    )
    if bench.skipped:
        lines += [
            "",
            "Not measured / failed: " + "; ".join(f"{k}: {v}" for k, v in bench.skipped.items()),
        ]
    hot = getattr(bench, "hotspots", None)
    if hot and hot["total"]:
        lines += [
            "",
            f"Box hot spots (py-spy 200 Hz on one extra, uncounted single upload with "
            f"{bench.profile_chunk // MIB} MiB PATCHes; share of non-idle samples, self "
            f"time; raw stacks in `bench/ingest-profile.txt`):",
            "",
        ]
        lines += [f"- {share:5.1%} {frame}" for frame, share in hot["self"][:10]]
    return "\n".join(lines) + "\n"


def _pipeline_lines(have) -> list[str]:
    """How far the design itself, without its web server, gets towards the disk aim."""
    if not {"pipeline", "disk", "box/single"} <= have.keys():
        return []
    pipe, disk, box = have["pipeline"], have["disk"], have["box/single"]
    return [
        f"  The box without its web server (its vault Writer fed from raw TLS by a client "
        f"with no copies, same run) reached {pipe.best():.0f} MB/s best, {pipe.median():.0f} "
        f"median: {pipe.best() / disk.best():.2f} × disk; the box over HTTPS reached "
        f"{box.best() / pipe.best():.2f} of that (best / best), its server CPU "
        f"{fmt(box.cpu_per_gib(), '.2f')} s/GiB against {fmt(pipe.cpu_per_gib(), '.2f')}."
    ]


def _floor_lines(bench, have) -> list[str]:
    """What the unavoidable steps cost on this machine, and the ceiling they put on ingest."""
    f = getattr(bench, "floor", None)
    if f is None:
        return []
    cores = os.cpu_count() or 1
    lines = [
        f"  CPU floor, measured in the same run (each step alone in the bench process, best "
        f"of 3): TLS receive {f.tls_receive:.2f} + SHA-256 of the plaintext {f.sha256:.2f} + "
        f"SHA-256 of the stored file {f.sha256:.2f} + AES-256-GCM {f.aes_gcm:.2f} = "
        f"{f.box:.2f} CPU s/GiB for the box, plus {f.tls_send:.2f} for the client's TLS send: "
        f"{f.total:.2f} CPU s/GiB. With client and box on the same {cores} cores no "
        f"implementation can pass {f.ceiling_mb_s(cores):.0f} MB/s here"
    ]
    if "disk" in have:
        lines[0] += f" ({f.ceiling_mb_s(cores) / have['disk'].best():.2f} × disk)"
    if "box/single" in have and have["box/single"].cpu_per_gib():
        box_cpu = have["box/single"].cpu_per_gib()
        lines[0] += (
            f"; the box spends {box_cpu:.2f} CPU s/GiB on a single upload, "
            f"{box_cpu / f.box:.2f} × its floor"
        )
    lines[0] += "."
    return lines
