"""Axis content destination throughput: one recording of N clips through the Swift path
(python-swiftclient as the system controller) next to the same bytes over tus, same box, same run.

A real box (`edgebox init --demo`, `edgebox run`), one tus camera enrolled through the API and
one Axis account made with `edgebox axis add-account`. Per round, interleaved: the Swift path
(PUT container, N clip PUTs with Content-Length, POST `Status: Complete`; the clock runs from the
first PUT to the Complete answer) and the tus path (N uploads of the same sizes, 8 MiB PATCHes
on one keep-alive session, as `bench/ingest.py`'s "box single"). Every clip's evidence hash is
checked against the sent bytes. Footage: `bench.tus.Pattern`, each clip at its own offset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    MIB,
    Timing,
    add_output_args,
    clean_env,
    exit_on_sigterm,
    fmt,
    log,
    machine,
    median_or_none,
    publish,
    run_cli,
)
from bench.tus import DemoBox, Pattern, PatternStream, TusUploader  # noqa: E402

HEADING = "Axis content destination (Swift) vs tus"
PATCH = 8 * MIB


class _ClipStream(PatternStream):
    """The pattern's bytes from `base` on, `size` long (each clip different)."""

    def __init__(self, pattern: Pattern, base: int, size: int):
        super().__init__(pattern, size)
        self.base = base

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes, read at `base` + the position."""
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        out = self.pattern.chunk(self.base + self.pos, n) if n else b""
        self.pos += len(out)
        return out


def _evidence(pattern: Pattern, base: int, size: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, PATCH):
        digest.update(pattern.view(base + offset, min(PATCH, size - offset)))
    return digest.hexdigest()


def swift_round(box: DemoBox, account: dict, pattern, sizes, number: int, expected) -> Timing:
    """One Axis recording of len(sizes) clips; checks every evidence hash at the box."""
    from tests.axis_controller import SERIAL, USER_UUID, Controller, connect

    conn = connect(box.url, account["username"], account["key"], Path(box.cert))
    ctl = Controller(conn)
    if number == 0:
        ctl.register()
    trigger = 1795000000 + number * 3600
    container = f"{USER_UUID}_{SERIAL}_{trigger}"
    conn.put_container(container, headers={"X-Container-Meta-Triggerontime": str(trigger)})
    started = time.perf_counter()
    base = 0
    for index, size in enumerate(sizes):
        conn.put_object(
            container,
            f"{trigger}_{index:04d}.mp4",
            _ClipStream(pattern, base, size),
            content_length=size,
            chunk_size=PATCH,
            headers={"X-Object-Meta-Starttime": str(trigger + index * 60)},
        )
        base += size
    conn.post_container(container, headers={"X-Container-Meta-Status": "Complete"})
    elapsed = time.perf_counter() - started
    conn.close()
    with sqlite3.connect(box.data_dir / "box.db") as db:
        got = [
            r[0]
            for r in db.execute(
                "SELECT r.evidence_sha256 FROM axis_objects o JOIN recordings r "
                "ON r.id = o.recording_id WHERE o.container = ? ORDER BY o.name",
                (container,),
            )
        ]
    if got != expected:
        raise RuntimeError(f"Swift round {number}: evidence hashes differ from the sent bytes")
    return Timing(elapsed, sum(sizes))


def tus_round(box: DemoBox, pattern, sizes, expected) -> Timing:
    """The same clips as tus uploads, one after the other, on one keep-alive session."""
    serial, token = box.cameras[0]
    uploader = TusUploader(f"{box.url}/tus/", box.cert, token, serial)
    started = time.perf_counter()
    got, base = [], 0
    for size in sizes:
        view = _OffsetPattern(pattern, base)
        got.append(uploader.upload(view, size, PATCH)["evidence"])
        base += size
    elapsed = time.perf_counter() - started
    uploader.close()
    if got != expected:
        raise RuntimeError("tus round: evidence hashes differ from the sent bytes")
    return Timing(elapsed, sum(sizes))


class _OffsetPattern:
    """A Pattern seen from `base` on (TusUploader asks for chunk(offset, n))."""

    def __init__(self, pattern: Pattern, base: int):
        self.pattern, self.base = pattern, base

    def chunk(self, offset: int, size: int) -> bytes:
        """The bytes at `base` + `offset`."""
        return self.pattern.chunk(self.base + offset, size)


def main() -> None:
    """Run the rounds and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--total-mib", type=int, default=2048, help="size of one recording")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="64 MiB, print only")
    add_output_args(parser, "raw samples as JSON")
    args = parser.parse_args()
    exit_on_sigterm()
    total = (64 if args.quick else args.total_mib) * MIB
    sizes = [total // args.clips] * args.clips
    sizes[-1] += total - sum(sizes)
    pattern = Pattern(PATCH)
    bases = [sum(sizes[:i]) for i in range(len(sizes))]
    expected = [_evidence(pattern, b, s) for b, s in zip(bases, sizes, strict=True)]
    samples: dict[str, list[Timing]] = {"swift": [], "tus": []}
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-axis-") as tmp:
        root = Path(tmp)
        box = DemoBox(root / "box", "bench-axis", root / "box.log", env=clean_env())
        try:
            box.start(["TUS-1"])
            account = json.loads(
                run_cli(
                    "axis", "add-account", "bench", "--config", box.config, "--json", env=box.env
                )
            )
            for rep in range(args.reps):
                log(f"bench axis: round {rep + 1}/{args.reps}, swift")
                samples["swift"].append(swift_round(box, account, pattern, sizes, rep, expected))
                log(f"bench axis: round {rep + 1}/{args.reps}, tus")
                samples["tus"].append(tus_round(box, pattern, sizes, expected))
        finally:
            box.stop()
    section = _report(samples, sizes, args)
    publish(args, HEADING, section, {k: [vars(t) for t in v] for k, v in samples.items()})


def _report(samples: dict, sizes: list[int], args) -> str:
    rows, medians = [], {}
    for name, label in (("swift", "Swift (python-swiftclient)"), ("tus", "tus, 8 MiB PATCHes")):
        mbps = [t.mbps for t in samples[name]]
        medians[name] = median_or_none(mbps)
        rows.append(
            f"| {label} | {fmt(max(mbps))} | {fmt(medians[name])} | "
            f"{fmt(median_or_none([t.seconds for t in samples[name]]), '.1f')} |"
        )
    ratio = medians["swift"] / medians["tus"] if medians["tus"] else None
    return "\n".join(
        [
            f"## {HEADING}",
            "",
            f"`python bench/axis.py` — {machine()}. One recording of {len(sizes)} clips, "
            f"{sum(sizes) / MIB:.0f} MiB in all, through each path, {args.reps} rounds "
            "interleaved on one box (`edgebox run`, HTTPS). Evidence hashes checked.",
            "",
            "| path | best MB/s | median MB/s | median seconds |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
            f"Swift / tus (medians): {fmt(ratio, '.2f')}. The Swift path computes the md5 "
            "(Swift's ETag) on top of the vault's SHA-256 and AES-GCM, and answers each clip "
            "in one request; tus fsyncs per 8 MiB PATCH.",
        ]
    )


if __name__ == "__main__":
    main()
