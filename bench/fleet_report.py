"""The fleet benchmark's figures as the "Central at scale" section of bench/RESULTS.md:
how it ran, the table, and what the figures say (each sentence built from the figures).

.venv/bin/python bench/fleet_report.py RESULT.json     # print the section of a saved run
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402

HEADING = "Central at scale"

COLUMNS = (
    ("MB/s", "mb_per_s"),
    ("fin→ack p50 ms", "fin_to_ack_p50_ms"),
    ("fin→ack p99 ms", "fin_to_ack_p99_ms"),
    ("broker peak RSS MiB", "broker_rss_mib"),
    ("central CPU s/GiB", "central_cpu_s_per_gib"),
    ("SeaweedFS CPU s/GiB", "seaweed_cpu_s_per_gib"),
    ("broker CPU s/GiB", "broker_cpu_s_per_gib"),
    ("simulator CPU s/GiB", "sim_cpu_s_per_gib"),
    ("busy cores", "machine_busy_cores"),
    ("load avg before", "load_average_before"),
)


def table(report: dict) -> str:
    """One row per store and worker count: the median over the rounds (each round's value in
    brackets), then the file check summed over every round."""
    lines = [
        "| store | workers | " + " | ".join(name for name, _ in COLUMNS) + " | confirmed / "
        "expected | lost | stored twice | offline spells |",
        "|" + " --- |" * (len(COLUMNS) + 6),
    ]
    groups: dict[tuple, list[dict]] = {}
    for run in report["runs"]:
        groups.setdefault((run["store"], run["workers"]), []).append(run)
    for (store, workers), runs in groups.items():
        cells = []
        for _, key in COLUMNS:
            values = [r[key] for r in runs if r.get(key) is not None]
            if not values:
                cells.append("–")
                continue
            each = ", ".join(f"{v:g}" for v in values)
            cells.append(f"{statistics.median(values):g} ({each})" if len(values) > 1 else each)
        confirmed = sum(r["confirmed"] for r in runs)
        expected = sum(r["expected"] for r in runs)
        lost = sum(r["lost"] for r in runs)
        twice = sum(r["stored_twice"] + r["left_staged"] for r in runs)
        spells = sum(r["offline_spells"] for r in runs)
        lines.append(
            f"| {store} | {workers} | " + " | ".join(cells)
            + f" | {confirmed} / {expected} | {lost} | {twice} | {spells} |"
        )  # fmt: skip
    return "\n".join(lines)


def _median(report: dict, store: str, workers: int, key: str) -> float | None:
    values = [
        r[key]
        for r in report["runs"]
        if r["store"] == store and r["workers"] == workers and r.get(key) is not None
    ]
    return statistics.median(values) if values else None


def findings(report: dict) -> list[str]:
    """The bullets under the table, each from the figures of this run."""
    runs = report["runs"]
    confirmed = sum(r["confirmed"] for r in runs)
    bad = sum(r["lost"] + r["wrong_hash"] + r["stored_twice"] + r["left_staged"] for r in runs)
    spells = sum(r["offline_spells"] for r in runs)
    lines = [
        f"- Held once: {confirmed} confirmations over {len(runs)} runs, {bad} files lost, "
        "with a wrong hash, stored twice or left half-transferred (every file indexed once "
        "with its hash, its object in the store with that hash by a HEAD of each), through "
        f"{spells} offline spells mid-transfer."
    ]
    for store, floor in report["store_alone_mb_per_s"].items():
        ratio = report.get(f"scale_out_4_over_1_{store}")
        alone = report.get(f"store_alone_4_over_1_{store}")
        one, four = _median(report, store, 1, "mb_per_s"), _median(report, store, 4, "mb_per_s")
        if ratio is None:
            continue
        verdict = "meets" if ratio >= 1.6 else "does not meet"
        lines.append(
            f"- Scale-out on {store}, 4 workers / 1 (median MB/s): **{ratio}** ({four} / {one}); "
            f"it {verdict} the aim of 1.6. The store alone in the same run (the same files put "
            f"straight into it by 1 and 4 threads, no MQTT, no central): {floor['1']} → "
            f"{floor['4']} MB/s, **{alone}**: the floor central's ratio stands on."
        )
    for store in report["store_alone_mb_per_s"]:
        parts = {
            name: _median(report, store, 1, key)
            for name, key in (
                ("central", "central_cpu_s_per_gib"),
                ("SeaweedFS", "seaweed_cpu_s_per_gib"),
                ("simulator", "sim_cpu_s_per_gib"),
                ("Mosquitto", "broker_cpu_s_per_gib"),
            )
        }
        parts = {k: v for k, v in parts.items() if v is not None}
        if not parts:
            continue
        total = sum(parts.values())
        cores = report.get("cores") or 2
        lines.append(
            f"- Where a GiB's CPU goes ({store}, 1 worker): "
            + ", ".join(f"{k} {v:g} s" for k, v in parts.items())
            + f": {total:.1f} CPU s per GiB, so {cores} whole cores carry at most "
            f"{cores / total * 1024**3 / 1e6:.0f} MB/s of this pipeline; measured "
            f"{_median(report, store, 1, 'mb_per_s')} MB/s."
        )
    return lines


def section(report: dict) -> str:
    """The whole section: how it ran, the table, the findings."""
    args = report["args"]
    link = (
        "plain MQTT on loopback (`--plain`)"
        if args.get("plain") == "True"
        else "MQTT 5 over TLS, each box with its own client certificate (CN = box id) under "
        "the ACL deploy/mosquitto ships, which holds a box to its own topics; central's "
        "processes each with a worker certificate"
    )
    command = " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in args.items()
        if k not in ("json", "results", "no_write", "plain") and v not in ("None", "False")
    )
    lines = [
        f"## {HEADING}",
        "",
        f"`python bench/fleet.py {command}{' --plain' if args.get('plain') == 'True' else ''}` "
        f"on {machine()}, {report.get('when', '')}; load average before the first run "
        f"{report.get('load_before', '–')}. The simulator, Mosquitto, every central process "
        "and SeaweedFS share the same cores.",
        "",
        f"Fleet: {args['boxes']} simulated boxes (`bench/fleet_box.py`), each with its own "
        f"Ed25519 identity, custody chain (sent first, with a signed checkpoint) and "
        f"{args['recordings']} real vault files of about {int(args['size']) / 2**20:g} MiB "
        "(AES-256-GCM, the data key wrapped to a central X25519 key); each box its own paho "
        f"client, {link}. Segments of {int(args['chunk']) >> 10} KiB, a window of 16, resend "
        f"after {args['ack_timeout']} s without an answer; a {float(args['offline']):.0%} chance "
        "per recording of dropping offline for 1–4 s halfway and resuming from central's "
        "`have`. Central: N `edgebox central run --workers 1` processes on one work folder and "
        'SQLite index; the store is that folder ("local") or a SeaweedFS `weed server -s3` '
        'started for the run ("s3", fresh prefix per run). MB/s = 10^6 stored bytes per '
        "second from the first box's start to the last confirmation; fin→ack = from a fin's "
        "first sending to central's `complete`; CPU = user+sys seconds per GiB stored. Cells: "
        "the median of the rounds, each round in brackets.",
        "",
        table(report),
        "",
        *findings(report),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print the section of a saved run's JSON."""
    print(section(json.loads(Path(sys.argv[1]).read_text())))


if __name__ == "__main__":
    main()
