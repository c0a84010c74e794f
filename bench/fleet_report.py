"""The fleet benchmark's JSON as the Markdown table of bench/RESULTS.md ("Central at scale").

.venv/bin/python bench/fleet_report.py RESULT.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

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


def main() -> None:
    """Print the table and the ratios."""
    report = json.loads(Path(sys.argv[1]).read_text())
    print(table(report))
    print()
    for key, value in report.items():
        if key.startswith(("scale_out", "store_alone", "median")):
            print(f"- {key}: {value}")


if __name__ == "__main__":
    main()
