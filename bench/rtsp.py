"""RTSP recorder benchmark: CPU and memory per camera pulled (1, 4, 8), next to ffmpeg alone.

Everything is real: ffmpeg encodes a 1080p H.264 test clip (~4.5 Mbit/s, keyframe every
second) once, GStreamer's RTSP server (`tests/rtsp_server.py` under Debian's python3) serves
it on 8 mounts in real time, `edgebox init --demo` makes a box and `edgebox run` serves it,
and cameras are added with `edgebox cameras add-rtsp`. For 1, 4 and 8 cameras, the peer
(and floor) runs at the same time on the same mounts: one plain `ffmpeg -c copy` per camera
writing 2-second MPEG-TS segments to disk, as a recorder without a pre-event buffer or
encryption would. Both are measured over the same windows, so the shared machine's noise
hits both: user+sys CPU seconds of the box process with its ffmpeg children, and of the
peer's ffmpegs, per second of stream; and the resident memory of each. Then, with every
ring full, triggers through the API: the time from the request to the recording started
(the API answers once the events are open) and to the MP4s in the vault.

    python bench/rtsp.py                   # rewrites "## RTSP recorder" of bench/RESULTS.md
    python bench/rtsp.py --quick --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    MIB,
    Proc,
    add_output_args,
    exit_on_sigterm,
    free_port,
    log,
    machine,
    publish,
    run_cli,
)
from bench.tus import DemoBox, Pattern, TusUploader, plain_session  # noqa: E402
from tests.rtsp_fixtures import RtspCamera  # noqa: E402

PASSWORD = "bench-password-123"
HEADING = "RTSP recorder"


def make_clip(folder: Path, seconds: int, size: str, bitrate: str) -> Path:
    """An H.264 MPEG-TS clip of `seconds`: 4 s encoded once, then copied end to end."""
    seed, clip = folder / "seed.ts", folder / "clip.ts"
    encode = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25"]
    encode += ["-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency"]
    encode += ["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate, "-g", "25"]
    subprocess.run([*encode, "-pix_fmt", "yuv420p", "-f", "mpegts", str(seed)], check=True)
    loops = ["ffmpeg", "-v", "error", "-y", "-stream_loop", str(seconds // 4 - 1), "-i", str(seed)]
    subprocess.run([*loops, "-c", "copy", "-f", "mpegts", str(clip)], check=True)
    return clip


def recorder_processes(pid: int) -> list[psutil.Process]:
    """The box process and its ffmpeg children (not Litestream, which it also supervises)."""
    with contextlib.suppress(psutil.Error):
        main = psutil.Process(pid)
        return [main, *(c for c in main.children() if c.name() == "ffmpeg")]
    return []


def cpu_of(processes: list[psutil.Process]) -> float:
    """user+sys seconds of these processes."""
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def rss_of(processes: list[psutil.Process]) -> int:
    """Resident bytes of these processes."""
    total = 0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


class Bench:
    """One run: the camera server, the box, the peer's ffmpegs, and the figures."""

    def __init__(self, args: argparse.Namespace, root: Path):
        self.args, self.root = args, root
        self.rows: list[dict] = []
        self.latency: dict = {}
        self.ingest: dict | None = None
        self.peers: list[Proc] = []

    def run(self) -> None:
        """Every stage, then the triggers."""
        args = self.args
        log("bench: encoding the test clip")
        clip = make_clip(self.root, args.clip_seconds, args.size, args.bitrate)
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=bit_rate", "-of", "csv=p=0"]
            + [str(clip)],
            capture_output=True,
            text=True,
            check=True,
        )
        self.bitrate = int(probe.stdout.strip()) / 1e6
        mounts = [f"/c{n}" for n in range(1, max(args.cameras) + 1)]
        with RtspCamera(free_port(), mounts, source=f"file:{clip}") as server:
            box = DemoBox(self.root / "box", "bench-rtsp", self.root / "edgebox-run.log")
            try:
                box.start([])
                self.box = box
                secret = self.root / "password"
                secret.write_text(PASSWORD)
                run_cli("users", "add", "bench", "--role", "crew", "--password-file",
                        str(secret), "--config", box.config)  # fmt: skip
                for count in args.cameras:
                    self.stage(server, count)
                self.ingest_stage()
                self.triggers()
            finally:
                for peer in self.peers:
                    peer.stop()
                box.stop()

    def add_cameras(self, server: RtspCamera, count: int) -> None:
        """Add cameras to the box until it has `count`; start a peer ffmpeg for each."""
        for index in range(len(self.peers) + 1, count + 1):
            url = server.url(f"/c{index}")
            run_cli("cameras", "add-rtsp", f"cam{index}", url, "--config", self.box.config)
            folder = self.root / "peer" / f"cam{index}"
            folder.mkdir(parents=True)
            command = ["ffmpeg", "-nostdin", "-v", "error", "-rtsp_transport", "tcp", "-i", url]
            command += ["-map", "0:v:0", "-c", "copy", "-f", "segment", "-segment_time", "2"]
            command += ["-segment_format", "mpegts", str(folder / "seg%05d.ts")]
            self.peers.append(Proc(f"peer {index}", command, folder.with_suffix(".log")))

    def cameras(self) -> list[dict]:
        """The box's RTSP cameras as its API lists them."""
        return self.session.get(f"{self.box.url}/api/v1/rtsp/cameras", verify=self.box.cert).json()

    def login(self) -> None:
        """A logged-in API session."""
        self.session = plain_session()
        answer = self.session.post(
            f"{self.box.url}/login",
            json={"username": "bench", "password": PASSWORD},
            verify=self.box.cert,
        )
        self.session.headers["X-CSRF-Token"] = answer.json()["csrf_token"]

    def stage(self, server: RtspCamera, count: int) -> None:
        """Measure the box and the peer with `count` cameras over the same windows."""
        if not hasattr(self, "session"):
            self.login()
        self.add_cameras(server, count)
        deadline = time.monotonic() + 60
        while (
            not all(c["state"] == "streaming" for c in self.cameras())
            or len(self.cameras()) < count
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cameras not streaming: {self.cameras()}")
            time.sleep(0.5)
        time.sleep(self.args.settle)
        pid = self.box.proc.pid
        for window in range(self.args.reps):
            box = recorder_processes(pid)
            peers = [psutil.Process(p.pid) for p in self.peers]
            box0, python0, peer0 = cpu_of(box), cpu_of(box[:1]), cpu_of(peers)
            start = time.monotonic()
            time.sleep(self.args.window)
            elapsed = time.monotonic() - start
            row = {
                "cameras": count,
                "window": window,
                "box_cpu": (cpu_of(box) - box0) / elapsed,
                "box_python_cpu": (cpu_of(box[:1]) - python0) / elapsed,
                "peer_cpu": (cpu_of(peers) - peer0) / elapsed,
                "box_rss": rss_of(box),
                "box_python_rss": rss_of(box[:1]),
                "peer_rss": rss_of(peers),
                "ffmpegs": len(box) - 1,
            }
            if row["ffmpegs"] != count:
                raise RuntimeError(f"{row['ffmpegs']} ffmpeg children for {count} cameras")
            self.rows.append(row)
            log(
                f"bench: {count} cameras: box {row['box_cpu'] * 100:.1f}% "
                f"(python {row['box_python_cpu'] * 100:.1f}%), peer {row['peer_cpu'] * 100:.1f}%"
            )

    def ingest_stage(self) -> None:
        """With every camera pulled, a tus upload at full speed: its rate, the box's CPU, and
        whether any camera's stream dropped meanwhile."""
        if self.args.upload_mib <= 0:
            return
        serial, token = self.box.enroll("BENCH-TUS")
        uploader = TusUploader(f"{self.box.url}/tus/", self.box.cert, token, serial)
        size = self.args.upload_mib * MIB
        before = {c["name"]: c["state_since"] for c in self.cameras()}
        box = recorder_processes(self.box.proc.pid)
        cpu0, start = cpu_of(box), time.monotonic()
        try:
            uploader.upload(Pattern(8 * MIB), size, 8 * MIB)
        finally:
            uploader.close()
        elapsed = time.monotonic() - start
        after = {c["name"]: (c["state"], c["state_since"]) for c in self.cameras()}
        self.ingest = {
            "cameras": len(before),
            "mib": self.args.upload_mib,
            "seconds": elapsed,
            "mb_per_s": size / elapsed / 1e6,
            "box_cpu": (cpu_of(box) - cpu0) / elapsed,
            "drops": sorted(n for n, since in before.items() if after[n] != ("streaming", since)),
        }
        log(f"bench: upload while pulling: {self.ingest}")

    def triggers(self) -> None:
        """With full rings: trigger one camera, then all, and time the answers and the MP4s."""
        deadline = time.monotonic() + 60
        while min(c["buffered_seconds"] for c in self.cameras()) < 31:
            if time.monotonic() > deadline:
                raise RuntimeError("rings did not fill")
            time.sleep(1)
        for peer in self.peers:  # the peer is not part of this measurement
            peer.stop()
        self.peers.clear()
        for label, cameras in (("1 camera", ["cam1"]), ("all cameras", None)):
            samples = []
            for _ in range(self.args.trigger_reps):
                body = {"why": "bench", "post_event_seconds": 1}
                if cameras:
                    body["cameras"] = cameras
                before = len(self.recordings())
                start = time.monotonic()
                answer = self.session.post(
                    f"{self.box.url}/api/v1/rtsp/triggers", json=body, verify=self.box.cert
                )
                answered = time.monotonic() - start
                if answer.status_code != 201:
                    raise RuntimeError(f"trigger: {answer.status_code} {answer.text[:200]}")
                wanted = before + len(answer.json()["cameras"])
                while len(self.recordings()) < wanted:
                    if time.monotonic() - start > 180:
                        raise RuntimeError("recordings did not arrive")
                    time.sleep(0.1)
                samples.append((answered, time.monotonic() - start))
                time.sleep(self.args.settle)
            self.latency[label] = samples
            log(f"bench: trigger {label}: {samples}")

    def recordings(self) -> list[dict]:
        """The box's recordings (first page)."""
        answer = self.session.get(
            f"{self.box.url}/api/v1/recordings", params={"limit": 500}, verify=self.box.cert
        )
        return answer.json()["items"]


def report(bench: Bench) -> str:
    """The RESULTS.md section."""
    args = bench.args
    lines = [
        f"## {HEADING}",
        "",
        f"`{args.command}` on {machine()}; written by `bench/rtsp.py`. The clip: {args.size}, "
        f"25 fps, {bench.bitrate:.1f} Mbit/s H.264 (x264 ultrafast, keyframe every second), "
        f"served by GStreamer's RTSP server over TCP on loopback. Box and peer pull the same "
        f"streams at the same time; {args.reps} windows of {args.window:.0f} s per row "
        "(median, and the range). CPU is user+sys seconds per second (100% = one core).",
        "",
        "| cameras | box CPU (python + ffmpeg) | of which python | peer: ffmpeg -c copy to "
        "disk | box / peer | box CPU per camera | box RSS (python; total) | peer RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for count in args.cameras:
        rows = [r for r in bench.rows if r["cameras"] == count]

        def med(key, rows=rows):
            return statistics.median(r[key] for r in rows)

        def span(key, rows=rows):
            values = [r[key] * 100 for r in rows]
            return f"{statistics.median(values):.1f}% ({min(values):.1f}–{max(values):.1f})"

        ratio = f"{med('box_cpu') / med('peer_cpu'):.2f}" if count else "–"
        per_camera = f"{med('box_cpu') * 100 / count:.2f}%" if count else "–"
        lines.append(
            f"| {count} | {span('box_cpu')} | {span('box_python_cpu')} | {span('peer_cpu')} "
            f"| {ratio} | {per_camera} "
            f"| {med('box_python_rss') / MIB:.0f} MiB; {med('box_rss') / MIB:.0f} MiB "
            f"| {med('peer_rss') / MIB:.0f} MiB |"
        )
    if bench.ingest:
        ingest = bench.ingest
        lines += [
            "",
            f"While the box pulled {ingest['cameras']} cameras, one tus upload of "
            f"{ingest['mib']} MiB (8 MiB PATCHes over HTTPS) ran at {ingest['mb_per_s']:.0f} MB/s "
            f"({ingest['seconds']:.1f} s); the box (python + ffmpeg) used "
            f"{ingest['box_cpu'] * 100:.0f}% of a core meanwhile, and "
            + (
                "no camera's stream dropped."
                if not ingest["drops"]
                else f"these cameras' streams dropped: {', '.join(ingest['drops'])}."
            ),
        ]
    lines += [
        "",
        "Trigger to recording start (the API answers once each camera's event is open: from "
        "then on every new piece goes to it, and a thread copies its 30 s pre-event from the "
        "encrypted ring to the encrypted spool) and to the MP4s in the vault (spool complete, "
        "remux, upload service, vault, custody; one camera at a time), with every ring full "
        "(≥ 31 s) and a 1 s post-event:",
        "",
        "| trigger | answered (recording started) | MP4s in the vault |",
        "| --- | --- | --- |",
    ]
    for label, samples in bench.latency.items():
        answered = ", ".join(f"{a * 1000:.0f} ms" for a, _ in samples)
        done = ", ".join(f"{d:.1f} s" for _, d in samples)
        lines.append(f"| {label} | {answered} | {done} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run, print the section (and write it unless told not to)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2, help="measurement windows per row")
    parser.add_argument("--window", type=float, default=15.0, help="seconds per window")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--cameras", type=int, nargs="+", default=[0, 1, 4, 8])
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--bitrate", default="4M")
    parser.add_argument("--clip-seconds", type=int, default=300)
    parser.add_argument("--trigger-reps", type=int, default=2)
    parser.add_argument("--upload-mib", type=int, default=1024, help="tus upload while pulling")
    parser.add_argument("--quick", action="store_true", help="1 and 2 cameras, short windows")
    add_output_args(parser, json_help="also write the raw figures here")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        log(f"bench/rtsp.py: ignoring {' '.join(unknown)}")
    if args.quick:
        args.cameras, args.window, args.reps, args.trigger_reps = [0, 1, 2], 5.0, 2, 1
        args.upload_mib = 64
    args.command = "python bench/rtsp.py " + " ".join(argv)
    exit_on_sigterm()
    root = Path(tempfile.mkdtemp(prefix="bench-rtsp-", dir=args.workdir))
    try:
        bench = Bench(args, root)
        bench.run()
        raw = {"rows": bench.rows, "latency": bench.latency, "ingest": bench.ingest}
        publish(args, HEADING, report(bench), raw)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
