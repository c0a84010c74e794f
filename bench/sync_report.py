"""The `## Sync` section of bench/RESULTS.md, from a finished sync Bench."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import statistics
import subprocess

from bench.common import KIB, MB, fmt, machine, median_or_none
from bench.sync_roles import CHUNK, WINDOW

HASH_PASSES = 3  # SHA-256 over each byte: box segment digests, central segment + whole file


def varint_len(n: int) -> int:
    """Bytes of MQTT's variable-length integer for `n`."""
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def framing(topic_bytes: int, payload_bytes: int, messages: int) -> int:
    """MQTT 5 bytes around QoS 1 PUBLISHes on one leg: fixed header, remaining length, topic
    length, packet id, empty property length, and the 4-byte PUBACK (success, no properties).
    The remaining length is estimated from the average message size."""
    if not messages:
        return 0
    avg = (topic_bytes + payload_bytes) // messages + 5
    return messages * (1 + varint_len(avg) + 2 + 2 + 1 + 4)


def report(bench) -> str:
    """The section: the table, what the rows are, the aims with their evidence."""
    m = bench.measurements
    fill = bench.fill
    now = dt.datetime.now().astimezone()
    nbytes = fill["stored_bytes"]
    lines = [
        "## Sync",
        "",
        f"Run {now:%Y-%m-%d %H:%M %Z} with `{bench.command}` ({bench.args.reps} interleaved "
        f"rounds; {bench.elapsed:.0f} s in all; load average {bench.load[0]:.1f} before, "
        f"{bench.load[1]:.1f} after: the machine is shared). Machine: {machine()}, "
        f"paho-mqtt {_version('paho-mqtt')}, "
        f"{_mosquitto_version()}. Box, broker, central and the bench share the same "
        f"{os.cpu_count()} cores.",
        "",
        f"Backlog: {fill['recordings']} recordings × {bench.args.recording_mib} MiB plaintext "
        f"= {nbytes} stored (vault) bytes, put on the box over tus while it ran offline; each "
        "box run starts a fresh copy of that box. Upstream settings are the defaults: chunk "
        f"{CHUNK // KIB} KiB, window {WINDOW}, ack timeout 20 s. MB/s = 10^6 stored bytes per "
        "second. CPU = user+sys seconds per GiB of stored bytes (median over the rounds).",
        "",
        "| measurement | best MB/s | median MB/s | median s | sender CPU s/GiB "
        "| receiver CPU s/GiB | broker CPU s/GiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    roles = {
        "box": ("box", "central"),
        "box-stream": ("box", "central"),
        "raw": ("sender", "receiver"),
        "store": (None, "receiver"),
        "box-n": ("box", "central"),
    }
    for key, x in m.items():
        if not x.samples:
            lines.append(f"| {x.label} | failed | | | | | |")
            continue
        sender, receiver = roles[key]
        secs = statistics.median(s.seconds for s in x.samples)
        lines.append(
            f"| {x.label} | {x.best():.1f} | {x.median():.1f} | {secs:.2f} "
            f"| {fmt(sender and x.cpu_per_gib(sender), '.2f')} "
            f"| {fmt(x.cpu_per_gib(receiver), '.2f')} | {fmt(x.cpu_per_gib('broker'), '.2f')} |"
        )
    box, stream, raw, store = m["box"], m["box-stream"], m["raw"], m["store"]
    lines += [
        "",
        "- **box → central**: timed from the `edgebox run` spawn (with the `EDGEBOX_UPSTREAM__*` "
        "overrides: broker, CA, client certificate) until the box's own database shows every "
        "recording `synced`, i.e. confirmed by central's `complete` answer (polled every 50 ms). "
        "Includes the box's start-up (Python imports, recovery, HTTPS server, TLS connect, "
        "custody first) and the last fin's whole-file check at central. Sender = the box "
        "process, receiver = the central process (`edgebox central run --workers 1`), broker = "
        "mosquitto, each over the timed interval; box CPU includes its start-up.",
        "- **from the first transfer on**: the same runs without the box's start-up: from the "
        "first transfer folder appearing at central (its first init, polled every 50 ms) to "
        "the last confirmation, each role's CPU over that interval. This is the figure timed "
        "like raw paho's, whose publisher is timed from its first publish, after its own "
        "start-up and TLS connect.",
        "- **raw paho**: a separate publisher process (paho-mqtt 2.x, MQTT 5, "
        f"`max_inflight_messages_set({WINDOW})` and at most {WINDOW} publishes without PUBACK) "
        f"sends the same number of bytes in {CHUNK // KIB} KiB QoS 1 messages over the same TLS "
        "listener (client certificate) to a separate subscriber process (QoS 1, counts bytes); "
        "timed from the first publish to the subscriber holding every byte. No hashing, no "
        "disk, no end-to-end acknowledgement: the limit of MQTT + TLS + Python on this machine.",
        "- **central store alone**: in the bench process, no MQTT: what central does per "
        "segment (SHA-256 check, `Transfer.put`: pwrite and a present mark; the data file is "
        "fsynced once before the fin decision) for the same bytes, in one thread.",
    ]
    if "box-n" in m:
        lines.append(
            f"- **extra, `--workers {bench.args.extra_workers}`**: the box run again, with "
            f"central running {bench.args.extra_workers} workers in the shared subscription "
            f"(threads of one process, each with its own MQTT connection): does spreading "
            f"central's per-segment work help? Not the figure the aim is about."
        )
    if box.samples:
        lines.append(
            f"- Box start-up: the first transfer appeared at central "
            f"{box.extra_median('first_init'):.2f} s (median) after the box was spawned, "
            f"when the box had used {fmt(box.extra_median('startup_cpu'), '.1f')} CPU seconds. "
            f"Peak RSS during the transfers (VmHWM reset through /proc/PID/clear_refs once the "
            f"box started sending, resp. when the box was spawned): box "
            f"{bench.rss.get('box', 0) / MB:.0f} MB, central process "
            f"{bench.rss.get('central', 0) / MB:.0f} MB; the start-up peaks before the reset "
            f"were {bench.rss.get('box-startup', 0) / MB:.0f} and "
            f"{bench.rss.get('central-startup', 0) / MB:.0f} MB (reached while the `edgebox` "
            f"command starts)."
        )
    for key in m:
        for failure in m[key].failures:
            lines.append(f"- {m[key].label} FAILED once: {failure}")

    lines += ["", "Aims:", ""]
    if box.samples and raw.samples:
        best, median = stream.best() / raw.best(), stream.median() / raw.median()
        rounds = {s.extra.get("round"): s.mbps for s in raw.samples}
        paired = [
            s.mbps / rounds[r] for s in stream.samples if (r := s.extra.get("round")) in rounds
        ]
        pair = statistics.median(paired) if paired else 0.0
        lines += [
            f"- box / raw paho ≥ 0.8, both timed from their first byte sent: {pair:.2f} paired "
            f"by round (median of {', '.join(f'{x:.2f}' for x in paired)}: box and raw run "
            f"back to back, so each pair shares the machine's load of the moment), {median:.2f} "
            f"on median ({stream.median():.1f} vs {raw.median():.1f} MB/s), {best:.2f} on best "
            f"({stream.best():.1f} vs {raw.best():.1f}) — "
            f"{'met' if min(pair, median) >= 0.8 else 'NOT met'} (judged on the paired and the "
            f"median ratios, both; a best-of-rounds ratio sets rounds of different moments side "
            f"by side)",
            f"  Counting the box's start-up as well (spawn of `edgebox run` to the last "
            f"confirmation): {box.best() / raw.best():.2f} on best ({box.best():.1f} MB/s), "
            f"{box.median() / raw.median():.2f} on median.",
        ]
        if store.samples:
            lines.append(
                f"  (box / central store alone: {stream.best() / store.best():.2f} on best; raw "
                f"paho / store alone: {raw.best() / store.best():.2f})"
            )
        lines += cpu_lines(bench)
        lines += pace_lines(bench.shares)
    else:
        lines.append("- box / raw paho ≥ 0.8: not measured (a run failed)")
    lines += overhead_lines(bench)
    lines += restart_lines(bench)
    lines += profile_lines(bench)
    return "\n".join(lines) + "\n"


def cores_busy(m) -> float | None:
    """Median CPU seconds of all roles per wall second over a row's samples."""
    return median_or_none([sum(s.cpu.values()) / s.seconds for s in m.samples if s.cpu])


def cpu_lines(bench) -> list[str]:
    """What each GiB cost in CPU along the whole path, box run (after its start-up) against raw
    paho."""
    m = bench.measurements
    box, raw = m["box-stream"], m["raw"]
    parts = [box.cpu_per_gib(r) for r in ("box", "central", "broker")]
    raws = [raw.cpu_per_gib(r) for r in ("sender", "receiver", "broker")]
    startup = m["box"].extra_median("startup_cpu")
    if None in parts or None in raws:
        return []
    busy_box, busy_raw, cores = cores_busy(box), cores_busy(raw), os.cpu_count() or 1
    lines = [
        f"  CPU per GiB along the whole path from the first transfer on (median): box run "
        f"{sum(parts):.1f} s (box {parts[0]:.1f}, central {parts[1]:.1f}, broker "
        f"{parts[2]:.1f}; the box's start-up took another {fmt(startup, '.1f')} CPU s), raw "
        f"paho {sum(raws):.1f} s (publisher {raws[0]:.1f}, subscriber {raws[1]:.1f}, broker "
        f"{raws[2]:.1f}). The runs kept {busy_box:.1f} and {busy_raw:.1f} of the {cores} "
        f"cores busy"
    ]
    if min(busy_box, busy_raw) >= 0.75 * cores:
        lines[-1] += (
            ": both were limited by CPU, so their ratio follows what a GiB costs "
            f"({sum(raws) / sum(parts):.2f} for raw / box)."
        )
    else:
        lines[-1] += "."
    if bench.sha256_cost:
        hashing = HASH_PASSES * bench.sha256_cost
        lines.append(
            f"  The hashing the protocol asks for alone: {HASH_PASSES} SHA-256 passes over "
            f"every byte (the box's segment digests; central's check of each segment and of "
            f"the whole file at the fin) at {bench.sha256_cost:.2f} CPU s/GiB each (measured "
            f"in the bench process) = {hashing:.2f} CPU s/GiB that raw paho does not spend. "
            f"With everything on the same {cores} cores, even a box run costing exactly raw "
            f"paho's {sum(raws):.1f} s plus that hashing would reach "
            f"{sum(raws) / (sum(raws) + hashing):.2f} of raw; this one spends "
            f"{_beyond(sum(parts) - sum(raws) - hashing)}. The box process "
            f"alone (what the vehicle's CPU pays): {parts[0]:.1f} CPU s/GiB against the raw "
            f"publisher's {raws[0]:.1f}, of which {bench.sha256_cost:.2f} is its hashing."
        )
    return lines


def _beyond(extra: float) -> str:
    """How a box run's CPU compares with raw paho's plus the hashing."""
    if extra >= 0:
        return f"{extra:.1f} CPU s/GiB beyond both"
    return (
        f"{-extra:.1f} CPU s/GiB less than both (its MQTT client reads and sends with fewer "
        f"copies than stock paho, see edgebox/sync/paho_client.py)"
    )


def pace_lines(shares: dict) -> list[str]:
    """Who waited for whom in the profiled run (threads' waiting and hashing shares)."""
    network = next(
        (v for k, v in shares.items() if k.startswith("paho-mqtt-client-edgebox-central")), None
    )
    lanes = [
        v
        for k, v in shares.items()
        if k.startswith("edgebox-central-") and "-lane-" in k and "-meta-lane-" not in k
    ]
    uplink = shares.get("uplink")
    if not (network and lanes and uplink):
        return []
    lane_wait = statistics.mean(v.get("waiting", 0) for v in lanes)
    lane_hash = statistics.mean(v.get("hashing", 0) for v in lanes)
    return [
        f"  In the profiled run central's network thread (reads, checks each message, hands "
        f"the rest on) waited for input {network.get('waiting', 0):.0%} of the time, TLS "
        f"{network.get('TLS', 0):.0%}; its {len(lanes)} lanes (SHA-256, write, answer; fin's "
        f"fsync and whole-file hash) waited {lane_wait:.0%} on average and hashed "
        f"{lane_hash:.0%}. The box's uplink thread waited for central's answers "
        f"{uplink.get('waiting', 0):.0%} of the time."
    ]


def overhead_lines(bench) -> list[str]:
    """The protocol overhead aim, with the observer's count per message kind."""
    data = bench.overhead
    if not data or "kinds" not in data:
        return [f"- protocol overhead < 1%: not measured ({(data or {}).get('error')})"]
    nbytes = bench.fill["stored_bytes"]
    kinds = data["kinds"]
    seg = kinds.get("seg", [0, 0, 0])
    total = sum(v[1] + v[2] for v in kinds.values())
    file_kinds = ("init", "seg", "fin", "ack:init", "ack:seg", "ack:fin")
    files = sum(v[1] + v[2] for k, v in kinds.items() if k.removeprefix("replica ") in file_kinds)
    overhead = total / nbytes - 1
    file_overhead = files / nbytes - 1
    frames = sum(framing(v[1], v[2], v[0]) for v in kinds.values())
    lines = [
        f"- protocol overhead < 1%: {overhead:.3%} counting everything, {file_overhead:.3%} "
        f"for the file transfers alone — {'met' if overhead < 0.01 else 'NOT met'}",
        "",
        "  | messages | count | topic bytes | payload bytes |",
        "  | --- | ---: | ---: | ---: |",
    ]
    for kind in sorted(kinds, key=lambda k: ("ack:" in k, k.startswith("replica"), k)):
        count, topic, payload = kinds[kind]
        lines.append(f"  | {kind} | {count} | {topic} | {payload} |")
    lines += [
        "",
        f"  Counted by a passive QoS 1 subscriber to `edgebox/v1/#` (plain listener, in a "
        f"separate, untimed box run): topic + payload bytes of everything the box published "
        f"(`status`, `meta` custody/metadata batches, `file/<tid>/init`, "
        f"`.../seg/<offset>/<sha256>`, `.../fin`) and of every answer central published on "
        f"the box's `ack` topic, over the {nbytes} stored bytes: "
        f'{total} / {nbytes} − 1. "File transfers alone" leaves out `status` and `meta` '
        f"(custody entries of the ingest, sent first whatever the files)"
        + (
            "; it keeps the `replica` rows: the Litestream replica's files, which go up "
            "through the same file transfer and count here as overhead (their bytes are not "
            "the recordings')"
            if any(k.startswith("replica") for k in kinds)
            else ""
        )
        + f". The recordings' segment payloads were {seg[2]} bytes (= the stored bytes once: "
        f"{'yes' if seg[2] == nbytes else 'NO'}); resent topics: {data['resent']}. Each "
        f"segment topic is ~{seg[1] // max(seg[0], 1)} bytes (tid + offset + 64 hex SHA-256). "
        f"Not counted: MQTT framing (≈{frames} bytes on one leg for these messages, "
        f"{frames / nbytes:.3%}: fixed header, lengths, packet id, PUBACK) and TLS records "
        f"(~22 bytes per 16 KiB record, ≈0.13%), both the same for raw paho.",
    ]
    return lines


def restart_lines(bench) -> list[str]:
    """The resume-after-restart aim, with the timeline of the restart."""
    info = bench.restart
    if not info or "first_marker_at_central" not in info:
        lines = [
            f"- resume < 2 s after a broker restart: not measured "
            f"({(info or {}).get('error') or 'no restart happened'})"
        ]
        if info and info.get("evidence"):
            lines += ["", "  ```", *("  " + x for x in info["evidence"].splitlines()), "  ```"]
        return lines
    resume = info["first_marker_at_central"]

    def ms(value) -> str:
        return "–" if value is None else f"{value * 1000:+.0f} ms"

    verdict = "not measured" if resume is None else ("met" if resume < 2 else "NOT met")
    lines = [
        f"- resume < 2 s after a broker restart: {fmt(resume, '.2f')} s from the broker "
        f"accepting connections again to the box's next segment stored at central — {verdict}",
        "",
        "  | event (relative to the restarted broker accepting TCP on its TLS port) | time |",
        "  | --- | ---: |",
        f"  | `restart(kill=False)` called (SIGTERM, persistence saved) "
        f"| {ms(-info['stop_to_listen'])} |",
        f"  | old broker's port closed | {ms(info['stop_to_down'] - info['stop_to_listen'])} |",
        "  | new broker accepts TCP | +0 ms |",
        f"  | observer (50 ms reconnect delay) reconnected | {ms(info['observer_connected'])} |",
        f"  | central worker reconnected | {ms(info['central_connected'])} |",
        f"  | box reconnected | {ms(info['box_connected'])} |",
        f"  | first segment at the broker (observer) | {ms(info['first_seg_at_broker'])} |",
        f"  | first new segment marked present at central | "
        f"{ms(info['first_marker_at_central'])} |",
        "",
        f"  Box messages the broker took after it was back but before central's worker had "
        f"reconnected (no subscriber then: central's workers use a clean session, so the broker "
        f"drops them and the box only notices after its ack timeout): "
        f"{orphan_text(info.get('orphans'))}.",
        "",
    ]
    box_back, central_back = info.get("box_connected"), info.get("central_connected")
    if resume is not None and box_back is not None and central_back is not None:
        lost = info["stop_to_down"] - info["stop_to_listen"]  # < 0: before the new broker
        both = max(box_back, central_back)
        lead = "Mostly paho's reconnect back-off" if both >= resume / 2 else "The reconnects"
        lines += [
            f"  {lead}: the new broker was accepting "
            f"{-lost * 1000:.0f} ms after the old one closed its port, but the box came back "
            f"only {box_back - lost:.2f} s after losing its connection (central's worker "
            f"{central_back - lost:.2f} s): `Link` in `edgebox/sync/link.py` sets paho's first "
            f"retry to 0.2 s (`reconnect_delay_set(min_delay=0.2, max_delay=30)`); box and "
            f"central both use that `Link`. {both:.2f} s of the "
            f"{resume:.2f} s went to that wait; the remaining {(resume - both) * 1000:.0f} ms "
            f"is the protocol resuming (the uplink notices the loss, sends pending custody, "
            f"init, gets `have`, sends the missing segments). The observer here used a 0.05 s "
            f"first retry and was back after "
            f"{fmt(info.get('observer_connected') and info['observer_connected'] * 1000)} ms.",
            "",
        ]
    lines += [
        f"  The restart came after {info['at_bytes'] / MB:.0f} MB of segments "
        f"({bench.args.restart_at:.0%} of the backlog), in a separate box run with the observer. "
        f"Reconnect times are when the 5 ms log poller saw mosquitto's `New client connected` "
        f"line; central's present marks (`transfers/*/*/present`, one byte per segment) are "
        f"polled every 5 ms, and only a segment marked after central's worker reconnected "
        f"counts: {info['stale_markers']} were marked between the restart call and that reconnect "
        f"(central, the slower end of the pipeline, still storing segments it had read before "
        f"the broker went down). Segments published twice in this run: "
        f"{info.get('resent', '?')} ({fmt(info.get('resent_bytes'), 'd')} extra bytes). Whole "
        f"run with the restart: {fmt(info.get('seconds'), '.1f')} s.",
    ]
    if info.get("error"):
        lines.append(f"  The run then FAILED: {info['error']}")
        if info.get("evidence"):
            lines += ["", "  ```", *("  " + x for x in info["evidence"].splitlines()), "  ```"]
    for note in bench.notes:
        lines.append(f"  {note}")
    return lines


def orphan_text(orphans: dict | None) -> str:
    """`3 seg, 1 init`-style count of the messages nobody received, or `none`."""
    if not orphans:
        return "none"
    return ", ".join(f"{n} {kind}" for kind, n in sorted(orphans.items()))


def profile_lines(bench) -> list[str]:
    """Where the time went per busy thread of box and central, if a profile was taken."""
    if not bench.profiles:
        return []
    lines = [
        "",
        f"Where the time goes (py-spy, 100 Hz, idle included, self time per thread; one extra, "
        f"uncounted box run of {fmt(bench.profile_seconds, '.1f')} s, sampled from the first "
        f"transfer to the last confirmation):",
        "",
    ]
    for name in ("box", "central"):
        if bench.profiles.get(name):
            lines.append(f"- {name}:")
            lines += [f"  {x}" for x in bench.profiles[name]]
    return lines


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _mosquitto_version() -> str:
    from tests.brokers import MOSQUITTO

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [MOSQUITTO, "-h"], capture_output=True, text=True, timeout=10, check=False
        )
        match = re.search(r"mosquitto version (\S+)", out.stdout + out.stderr)
        if match:
            return f"Mosquitto {match.group(1)}"
    return "Mosquitto ?"
