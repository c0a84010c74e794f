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
import os
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
from bench.tus import DemoBox, Pattern, PatternStream, TusUploader, plain_session  # noqa: E402

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
    _check(box, container, expected, f"Swift round {number}")
    return Timing(elapsed, sum(sizes))


class _Body:
    """A clip body for requests: sized (so it goes with Content-Length, not chunked) and
    handed over in 8 MiB views (urllib3 reads a file-like body 16 KiB at a time)."""

    def __init__(self, pattern: Pattern, base: int, size: int):
        self.pattern, self.base, self.size = pattern, base, size

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        for offset in range(0, self.size, PATCH):
            yield self.pattern.view(self.base + offset, min(PATCH, self.size - offset))


def swift_raw_round(box: DemoBox, account: dict, pattern, sizes, number: int, expected) -> Timing:
    """The same Swift requests from a plain requests.Session writing 8 MiB at a time: what the
    box's Swift path costs without python-swiftclient's 16 KiB writes."""
    from tests.axis_controller import SERIAL, USER_UUID, connect

    url, token = connect(box.url, account["username"], account["key"], Path(box.cert)).get_auth()
    session = plain_session()
    headers = {"X-Auth-Token": token}
    trigger = 1795000000 + number * 3600 + 1
    container = f"{USER_UUID}_{SERIAL}_{trigger}"
    _ok(session.put(f"{url}/{container}", headers=headers, verify=box.cert))
    started = time.perf_counter()
    base = 0
    for index, size in enumerate(sizes):
        _ok(
            session.put(
                f"{url}/{container}/{trigger}_{index:04d}.mp4",
                data=_Body(pattern, base, size),
                headers=headers,
                verify=box.cert,
            )
        )
        base += size
    _ok(
        session.post(
            f"{url}/{container}",
            headers={**headers, "X-Container-Meta-Status": "Complete"},
            verify=box.cert,
        )
    )
    elapsed = time.perf_counter() - started
    session.close()
    _check(box, container, expected, f"raw Swift round {number}")
    return Timing(elapsed, sum(sizes))


def _ok(response) -> None:
    if response.status_code >= 300:
        raise RuntimeError(f"{response.request.method}: {response.status_code} {response.text}")


def _check(box: DemoBox, container: str, expected: list[str], what: str) -> None:
    """Every clip's evidence hash at the box equals the sent bytes'."""
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
        raise RuntimeError(f"{what}: evidence hashes differ from the sent bytes")


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
    # bench/run hands every benchmark the same arguments; ignore the other benches' own.
    args, unknown = parser.parse_known_args()
    if unknown:
        log(f"bench/axis.py: ignoring {' '.join(unknown)}")
    exit_on_sigterm()
    total = (64 if args.quick else args.total_mib) * MIB
    sizes = [total // args.clips] * args.clips
    sizes[-1] += total - sum(sizes)
    pattern = Pattern(PATCH)
    bases = [sum(sizes[:i]) for i in range(len(sizes))]
    expected = [_evidence(pattern, b, s) for b, s in zip(bases, sizes, strict=True)]
    samples: dict[str, list[Timing]] = {"swift": [], "swift-raw": [], "tus": []}
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
                log(f"bench axis: round {rep + 1}/{args.reps}, swift (requests)")
                samples["swift-raw"].append(
                    swift_raw_round(box, account, pattern, sizes, rep, expected)
                )
                log(f"bench axis: round {rep + 1}/{args.reps}, tus")
                samples["tus"].append(tus_round(box, pattern, sizes, expected))
        finally:
            box.stop()
    section = _report(samples, sizes, args)
    publish(args, HEADING, section, {k: [vars(t) for t in v] for k, v in samples.items()})


def _report(samples: dict, sizes: list[int], args) -> str:
    rows, medians = [], {}
    for name, label in (
        ("swift", "Swift, python-swiftclient"),
        ("swift-raw", "Swift, requests writing 8 MiB"),
        ("tus", "tus, 8 MiB PATCHes"),
    ):
        mbps = [t.mbps for t in samples[name]]
        medians[name] = median_or_none(mbps)
        rows.append(
            f"| {label} | {fmt(max(mbps))} | {fmt(medians[name])} | "
            f"{fmt(median_or_none([t.seconds for t in samples[name]]), '.1f')} |"
        )
    ratio = medians["swift"] / medians["tus"] if medians["tus"] else None
    raw_ratio = medians["swift-raw"] / medians["tus"] if medians["tus"] else None
    return "\n".join(
        [
            f"## {HEADING}",
            "",
            f"`python bench/axis.py` — {machine()}. One recording of {len(sizes)} clips, "
            f"{sum(sizes) / MIB:.0f} MiB in all, through each path, {args.reps} rounds "
            "interleaved on one box (`edgebox run`, HTTPS). Evidence hashes checked. "
            f"Load average at the end: {os.getloadavg()[0]:.1f} (the machine is shared).",
            "",
            "| path | best MB/s | median MB/s | median seconds |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
            f"Swift / tus (medians): {fmt(ratio, '.2f')} with python-swiftclient, "
            f"{fmt(raw_ratio, '.2f')} with the requests client. The box's Swift path computes "
            "the md5 (Swift's ETag) on top of the vault's SHA-256 and AES-GCM and syncs once "
            "per clip; tus syncs per 8 MiB PATCH. python-swiftclient hands its body to "
            "urllib3 as a file, which sends it 16 KiB at a time; client and box share the "
            "machine's cores.",
        ]
    )


if __name__ == "__main__":
    main()
