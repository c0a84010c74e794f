"""The soak's figures: the Reliability table of bench/RESULTS.md and its raw JSON."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from bench.common import machine, write_section
from edgebox.storage import RETRY_AFTER_FULL_SECONDS

BOX_KILLING = {"kill_ingest", "kill_sync", "power_cut"}
HEADING = "Reliability"
MIB = 1 << 20
WARM_UP = 60  # seconds after a box start left out of the leak trend
COLUMNS = ("lost", "corrupted", "duplicated", "deleted unsynced", "verify failures", "5xx")


SLOPES = (("rss_mib_per_hour", 1), ("fds_per_hour", 2))


def _slope(lives, column: int) -> float | None:
    """Least-squares slope per hour of one column, pooled over process lives of 10 or more
    samples (each life around its own mean, so a restart's drop is no trend)."""
    top = bottom = 0.0
    for points in lives:
        if len(points) < 10:
            continue
        tm = statistics.fmean(p[0] for p in points)
        ym = statistics.fmean(p[column] for p in points)
        top += sum((p[0] - tm) * (p[column] - ym) for p in points)
        bottom += sum((p[0] - tm) ** 2 for p in points)
    return top / bottom * 3600 if bottom else None


def _lives(samples, point) -> dict[int, list]:
    """Each box process's points, `point(sample)`, by pid (a kill starts a new life), the
    first minute of each life left out as warm-up."""
    by_pid: dict[int, list] = defaultdict(list)
    for sample in samples:
        by_pid[sample[1]].append(point(sample))
    return {
        pid: [p for p in points if p[0] - points[0][0] >= WARM_UP] for pid, points in by_pid.items()
    }


def _second_half(points: list) -> list:
    return [p for p in points if p[0] >= (points[0][0] + points[-1][0]) / 2] if points else []


def _range(points: list, column: int, digits: int | None = 1) -> list | None:
    if not points:
        return None
    return [
        round(min(p[column] for p in points), digits),
        round(max(p[column] for p in points), digits),
    ]


def leak_slopes(samples: list[tuple[float, int, int, int]]) -> dict:
    """RSS (MiB/hour) and open files (per hour) trends of the box: the least-squares slope
    within each box process's life (a kill starts a new one), pooled over all of them."""
    lives = _lives(samples, lambda s: (s[0], s[2] / MIB, s[3]))
    result = {name: _slope(lives.values(), column) for name, column in SLOPES}
    longest = max(lives.values(), key=len, default=[])
    # The calm phase's one box alone: the cleanest trend. Its second half shows whether what
    # grew levels off (caches filling to their bound) or keeps growing (a leak).
    late = _second_half(longest)
    for name, column in SLOPES:
        result[f"longest_{name}"] = _slope([longest], column)
        result[f"late_{name}"] = _slope([late], column)
    # A level band with a wobble and a slow climb can share a half's slope; quarters tell them
    # apart (a leak climbs in each, a wobble changes sign).
    quarters: list[list] = [[], [], [], []]
    span = (longest[-1][0] - longest[0][0]) / 4 if longest else 0
    for point in longest if span else []:
        quarters[min(int((point[0] - longest[0][0]) / span), 3)].append(point)
    result["quarters_rss_mib_per_hour"] = [
        None if (v := _slope([quarter], 1)) is None else round(v, 1) for quarter in quarters
    ]
    result["longest_life_samples"] = len(longest)
    result["longest_life_minutes"] = (longest[-1][0] - longest[0][0]) / 60 if longest else 0
    result["rss_mib_range"] = _range(longest, 1)
    result["fds_range"] = _range(longest, 2, None)
    return result


def heap_trend(samples: list[tuple[float, int, int, int]]) -> dict:
    """What the box said of its own memory over its longest life (its release_memory job:
    the heaps' bytes in use and SQLite's share, MiB): the slope of what is in use over that
    life and over its second half, and the ranges. RSS beside it tells free memory kept inside
    the heaps (fragmentation) from memory in use (a leak)."""
    lives = _lives(samples, lambda s: (s[0], s[2] / MIB, s[3] / MIB))
    longest = max(lives.values(), key=len, default=[])
    return {
        "runs": len(longest),
        "in_use_mib_per_hour": _slope([longest], 1),
        "late_in_use_mib_per_hour": _slope([_second_half(longest)], 1),
        "in_use_mib_range": _range(longest, 1),
        "sqlite_mib_range": _range(longest, 2),
    }


def _heap_paragraph(heap: dict) -> str:
    if heap["in_use_mib_per_hour"] is None:
        return "The box's own memory figures: too few release_memory runs in one life to show."
    return (
        f"What the box said of its own memory over its longest life (its release_memory job, "
        f"{heap['runs']} runs): heap in use {heap['in_use_mib_range']} MiB, of it SQLite's "
        f"{heap['sqlite_mib_range']} MiB; in use {_fmt(heap['in_use_mib_per_hour'])} MiB/hour "
        f"over the life, {_fmt(heap['late_in_use_mib_per_hour'])} MiB/hour over its second half."
    )


RSS_MARGIN = 5.0  # MiB an hour: a box that grew this much would double in about 15 hours
FDS_MARGIN = 2.0  # open files an hour


def _leak_verdict(leaks: dict) -> str:
    """Whether the longest-lived box was flat within the margins over the second half of its
    life (none: too short a life to have a second half worth the name)."""
    rss, fds = leaks.get("late_rss_mib_per_hour"), leaks.get("late_fds_per_hour")
    if rss is None or fds is None or leaks["longest_life_minutes"] < 20:
        return "Too short a life to call a trend (20 minutes at least)."
    flat = abs(rss) <= RSS_MARGIN and abs(fds) <= FDS_MARGIN
    return (
        f"Over the second half of that life: RSS {rss:.1f} MiB/hour, open files {fds:.1f}/hour, "
        f"{'flat' if flat else 'NOT flat'} within the margins of ±{RSS_MARGIN:g} MiB/hour and "
        f"±{FDS_MARGIN:g} open files/hour."
    )


def _quarters(slopes: list) -> str:
    return ", ".join(_fmt(v) for v in slopes) if slopes else "–"


def central_alarms(messages: list[str]) -> str:
    """Central's alarms at the end of the run, counted by kind (the text before the first
    colon, or before " on " where a topic follows)."""
    if not messages:
        return "Alarms raised at central: none."
    kinds = Counter(re.split(r":| on ", message, maxsplit=1)[0][:100] for message in messages)
    return (
        f"Alarms raised at central: {len(messages)} ("
        + "; ".join(f"{kind} ×{n}" for kind, n in kinds.most_common(5))
        + ")."
    )


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _fmt(value, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def _table(counts: dict, failures: dict, recovery: dict) -> list[str]:
    """The per-fault table: cycles, each failure column, recovery p50 / p99."""
    header = "| fault | cycles | " + " | ".join(COLUMNS) + " | recovery p50 / p99 (s) |"
    rows = [header, "|" + "---|" * (len(COLUMNS) + 3)]
    for fault in [*sorted(counts), "final"]:
        found = failures.get(fault, {})
        times = recovery.get(fault, [])
        cells = [str(found.get(c, 0)) for c in COLUMNS]
        timing = f"{_fmt(_percentile(times, 0.5))} / {_fmt(_percentile(times, 0.99))}"
        rows.append(
            f"| {fault} | {counts.get(fault, 'end')} | " + " | ".join(cells) + f" | {timing} |"
        )
    return rows


def box_kills(counts: dict) -> int:
    """How many cycles killed the box process (kill -9 or power cut)."""
    return sum(n for fault, n in counts.items() if fault in BOX_KILLING)


def _read_alongside(path: str) -> dict | str:
    """A companion run's figures, or why there are none (not written yet, not figures)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        return f"Run alongside it: no figures from {Path(path).name} ({exc.__class__.__name__})."
    needed = {"command", "minutes", "cycles", "delivered", "counts", "failures", "recovery"}
    missing = sorted(needed - set(raw))
    if missing:
        return f"Run alongside it: {Path(path).name} lacks {', '.join(missing)}."
    return raw


def companion(raw: dict) -> list[str]:
    """A run made alongside this one (its --json), as a paragraph and its table."""
    clean = sum(n for found in raw["failures"].values() for n in found.values()) == 0
    return [
        f"Run alongside it: `python bench/soak.py {raw['command']}`: {raw['cycles']} fault "
        f"cycles in {raw['minutes']:.1f} min, {raw['delivered']} clips delivered, "
        f"{box_kills(raw['counts'])} box kills, the same checks after every cycle and at the "
        f"end ({'nothing failed' if clean else 'SOME CHECKS FAILED: see the table'}).",
        "",
        *_table(raw["counts"], raw["failures"], raw["recovery"]),
    ]


def report(soak, world, ran: int, args) -> int:
    """Print the table, write RESULTS.md (unless --no-write) and --json; exit status."""
    leaks = leak_slopes(soak.samples)
    heap = heap_trend(soak.heap_samples)
    minutes = (soak.samples[-1][0] / 60) if soak.samples else 0
    rows = _table(soak.counts, soak.failures, soak.recovery)
    other = {
        f"{fault}: {kind}": n
        for fault, failures in soak.failures.items()
        for kind, n in failures.items()
        if n and kind not in COLUMNS
    }
    delivered = sum(len(c.delivered) for c in world.cameras)
    fuzz = None
    if args.fuzz_json and Path(args.fuzz_json).exists():
        fuzz = json.loads(Path(args.fuzz_json).read_text())
    elif args.fuzz_json:
        fuzz = {"markdown": f"Fuzzing: no figures ({args.fuzz_json} was not written)."}
    lines = [
        f"## {HEADING}",
        "",
        f"`python bench/soak.py {args.command}` on {machine()}: {ran} fault cycles in "
        f"{minutes:.1f} min, {len(world.cameras)} simulated cameras, {delivered} clips "
        "delivered. After every cycle the cameras drain and the soak checks central, "
        "`edgebox verify` and the box's disk (recovery: fault healed -> every delivered clip "
        "at central and the box's backlog confirmed).",
        "",
        *rows,
        "",
        f"Box loop disk: {'ext4 on a loop device' if world.disk.mounted else world.disk.problem}. "
        f"Plaintext of a clip found on the box's disk: "
        f"{sum(f.get('plaintext found', 0) for f in soak.failures.values())} files (the scan "
        f"{'found' if getattr(soak, 'canary', False) else 'DID NOT find'} a clip's bytes planted "
        "in the box's folder at the end, so it can see them). 507 answers while the disk was "
        f"full: {soak.full_disk_answers.get('disk_full', 0)} (cameras then wait for the "
        f"Retry-After of {RETRY_AFTER_FULL_SECONDS} s; the soak frees the disk and lets them "
        "retry at once); 507s "
        "in other cycles, when the box's own disk filled up between retention sweeps: "
        f"{sum(n for f, n in soak.full_disk_answers.items() if f != 'disk_full')}. 5xx "
        "excludes those 507s. At the end every clip at central was decrypted with central's "
        f"key ({soak.decrypted} files) and hashed: a mismatch counts as corrupted. "
        + central_alarms(soak.central_alarms),
        "",
        f"Leaks (least-squares slope within each box process, pooled): RSS "
        f"{_fmt(leaks['rss_mib_per_hour'])} MiB/hour, open files "
        f"{_fmt(leaks['fds_per_hour'])}/hour; the longest-lived box process ran "
        f"{leaks['longest_life_minutes']:.1f} min ({leaks['longest_life_samples']} samples, "
        f"RSS {leaks['rss_mib_range']} MiB, open files {leaks['fds_range']}): RSS "
        f"{_fmt(leaks['longest_rss_mib_per_hour'])} MiB/hour, open files "
        f"{_fmt(leaks['longest_fds_per_hour'])}/hour over its life after a "
        f"{WARM_UP} s warm-up; RSS by quarter of that life: "
        f"{_quarters(leaks['quarters_rss_mib_per_hour'])} MiB/hour. {_leak_verdict(leaks)}",
        "",
        _heap_paragraph(heap),
        "",
        "What happened at each fault: "
        + "; ".join(f"{k} ×{v}" for k, v in sorted(soak.notes.items()))
        + ".",
    ]
    if other:
        lines += ["", "Other problems: " + "; ".join(f"{k} ×{v}" for k, v in other.items())]
    runs = [_read_alongside(path) for path in args.alongside or []]
    for run in runs:
        lines += ["", run] if isinstance(run, str) else ["", *companion(run)]
    if any(isinstance(run, dict) for run in runs):
        others = sum(box_kills(run["counts"]) for run in runs if isinstance(run, dict))
        lines += ["", f"Box kills in these runs together: {box_kills(soak.counts) + others}."]
    if fuzz:
        lines += ["", fuzz["markdown"]]
    section = "\n".join(lines) + "\n"
    print(section)
    raw = {
        "command": args.command,
        "minutes": minutes,
        "cycles": ran,
        "counts": dict(soak.counts),
        "failures": {k: dict(v) for k, v in soak.failures.items()},
        "recovery": dict(soak.recovery),
        "leaks": leaks,
        "samples": soak.samples,
        "heap": heap,
        "heap_samples": soak.heap_samples,
        "notes": dict(soak.notes),
        "delivered": delivered,
        "central_alarms": soak.central_alarms,
    }
    if args.json:  # whole or not at all: a run alongside may read it at any moment
        written = Path(args.json).with_suffix(".json.part")
        written.write_text(json.dumps(raw, indent=1, default=str))
        written.replace(args.json)
    if not args.no_write:
        write_section(Path(args.results), HEADING, section)
    bad = sum(n for failures in soak.failures.values() for n in failures.values())
    return 1 if bad else 0
