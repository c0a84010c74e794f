"""The fuzzing bench: the property tests of tests/test_fuzz_*.py under the `edgebox-bench`
hypothesis profile (1,250 cases per property, over 10,000 in all), counted.

    python bench/fuzz.py --json fuzz.json     # then bench/soak.py --fuzz-json fuzz.json

Targets: the vault reader (arbitrary and mutated files), what central accepts (any topic
and payload, hostile custody and file messages), and the box's HTTP surface
(schemathesis from /api/openapi.json as every role, tus headers, metadata).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = {
    "vault reader": "tests/test_fuzz_vault.py",
    "sync messages at central": "tests/test_fuzz_protocol.py",
    "HTTP API (schemathesis, every role), tus, metadata": "tests/test_fuzz_web.py",
}
_TEST = re.compile(r"^(tests/test_fuzz_\w+\.py)::(\w+):", re.M)
_COUNTS = re.compile(r"(\d+) passing, (\d+) failing")


def _cases(output: str) -> dict[str, dict[str, int]]:
    """Per test file: passing and failing examples, from hypothesis's statistics."""
    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"passing": 0, "failing": 0})
    marks = list(_TEST.finditer(output))
    for number, mark in enumerate(marks):
        end = marks[number + 1].start() if number + 1 < len(marks) else len(output)
        for passing, failing in _COUNTS.findall(output[mark.end() : end]):
            totals[mark.group(1)]["passing"] += int(passing)
            totals[mark.group(1)]["failing"] += int(failing)
    return totals


def main(argv: list[str] | None = None) -> int:
    """Run the fuzz tests with the bench profile; print and save the counts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="edgebox-bench")
    parser.add_argument("--json", help="write the figures here (bench/soak.py --fuzz-json)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *FILES.values(),
            "-q",
            "-p",
            "no:cacheprovider",
            "--hypothesis-show-statistics",
            f"--hypothesis-profile={args.profile}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HYPOTHESIS_PROFILE": args.profile},
    )
    minutes = (time.monotonic() - started) / 60
    counts = _cases(run.stdout)
    summary = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
    rows = ["| fuzz target | cases | failing (5xx, crash or wrong answer) |", "|---|---|---|"]
    for name, path in FILES.items():
        found = counts.get(path, {"passing": 0, "failing": 0})
        total = found["passing"] + found["failing"]
        rows.append(f"| {name} | {total} | {found['failing']} |")
    total = sum(c["passing"] + c["failing"] for c in counts.values())
    markdown = "\n".join(
        [
            f"Fuzzing (`python bench/fuzz.py`, profile `{args.profile}`, {minutes:.1f} min): "
            f"{total} cases; pytest: {summary}. Every crash or 5xx found while building it is "
            "now a regression test (`@example` in tests/test_fuzz_*.py).",
            "",
            *rows,
        ]
    )
    print(markdown)
    if run.returncode != 0:
        print(run.stdout[-6000:], run.stderr[-2000:])
    if args.json:
        Path(args.json).write_text(
            json.dumps({"markdown": markdown, "counts": counts, "returncode": run.returncode})
        )
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
