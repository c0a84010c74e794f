"""Pictures benchmark: posters and thumbnail strips of a 10-minute 1080p recording, and the
recordings page (with its poster cards) over 100,000 recordings next to today's page.

1. A real box (in this process, HTTPS on a free port) takes a 10-minute 1080p H.264 clip over
   tus; the poster and the strip are then made again and again from the encrypted vault file
   exactly as the web layer makes them (`edgebox.pictures`: vault reader -> ffmpeg stdin ->
   JPEG on stdout), cold each time. Peer in the same run: ffmpeg drawing the same pictures
   from the plaintext file on disk (seekable: what a viewer without encryption does). A warm
   poster (held in the in-memory cache) is fetched over HTTPS by an unlocked supervisor.
2. Two real boxes (`edgebox run`) over copies of one database of 100,000 recordings: this
   tree's code, and the table list page before the cards (`git archive` of PEER_REV).
   The first page of /recordings is timed on both, interleaved, for a crew member.

Nothing is asserted: a benchmark reports.

    python bench/pictures.py                     # full run, rewrites "## Pictures" in RESULTS.md
    python bench/pictures.py --quick --no-write  # 1-minute clip, 5,000 recordings
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    Proc,
    add_output_args,
    edgebox_cmd,
    exit_on_sigterm,
    free_port,
    log,
    machine,
    publish,
    run_cli,
)
from bench.tus import plain_session, wait_ready  # noqa: E402
from bench.web_fixture import fill  # noqa: E402
from bench.web_report import percentile  # noqa: E402
from edgebox import pictures, vault  # noqa: E402
from edgebox.clips import ffmpeg_exe  # noqa: E402
from edgebox.recordings import data_key_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-pictures-secret"  # noqa: S105 - a throwaway box's review secret
PASSWORD = "bench-pictures-password"  # noqa: S105


def make_long_clip(path: Path, seconds: int) -> None:
    """A 1080p25 H.264 clip at about 6 Mbit/s, key frame every 2 s, index first (+faststart)."""
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi",
         "-i", "testsrc2=size=1920x1080:rate=25", "-t", str(seconds), "-c:v", "libx264",
         "-preset", "ultrafast", "-b:v", "6M", "-maxrate", "6M", "-bufsize", "12M", "-g", "50",
         "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)],
        check=True,
    )  # fmt: skip


def _peer_picture(path: Path, kind: str, seconds: float) -> bytes:
    """The same picture drawn by ffmpeg straight from the plaintext file (it may seek)."""
    if kind == "poster":
        args = ["-ss", "30", "-i", str(path), "-vf", f"scale={pictures.POSTER_WIDTH}:-2"]
    else:
        span = seconds / pictures.STRIP_TILES
        args = ["-skip_frame", "nokey", "-i", str(path), "-vf",
                f"select='isnan(prev_selected_t)+gte(t-prev_selected_t\\,{span:.3f})',"
                f"scale={pictures.STRIP_TILE_WIDTH}:-2,"
                f"tile={pictures.STRIP_COLUMNS}x{pictures.STRIP_ROWS}"]  # fmt: skip
    return subprocess.run(
        [ffmpeg_exe(), "-v", "error", *args, "-frames:v", "1", "-f", "image2pipe",
         "-c:v", "mjpeg", "-q:v", "5", "pipe:1"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip


def _timed(make) -> tuple[float, int]:
    started = time.perf_counter()
    picture = make()
    if not picture.startswith(b"\xff\xd8"):
        raise RuntimeError("not a JPEG")
    return (time.perf_counter() - started) * 1000, len(picture)


def bench_pictures(root: Path, args) -> dict:
    """Cold poster and strip latency from the vault, the plaintext peer, and a warm poster."""
    from edgebox.box import Box
    from edgebox.config import load_config
    from edgebox.provision import CONFIG_NAME, init_box

    root.mkdir(parents=True, exist_ok=True)
    clip = root / "long.mp4"
    log(f"bench: encoding a {args.seconds} s 1080p clip")
    make_long_clip(clip, args.seconds)
    init_box(root / "box", box_id="bench-pictures", organisation="Bench", site="Bench",
             listen=f"127.0.0.1:{free_port()}", supervisor="supervisor", review_secret=SECRET,
             demo=True)  # fmt: skip
    box = Box(load_config(root / "box" / CONFIG_NAME)).start(("127.0.0.1", 0))
    try:
        rid = _upload(box, clip)
        path = box.uploads.vault_path(rid)
        reader = vault.Reader(path, data_key_for(path, box.keys.unlock_review(SECRET)))
        series: dict[str, list[float]] = {}
        sizes: dict[str, int] = {}
        makers = {
            "box poster (vault -> pipe -> ffmpeg)": lambda: pictures.poster(reader, 30),
            "box strip (vault -> pipe -> ffmpeg)": lambda: pictures.strip(reader, args.seconds),
            "peer poster (ffmpeg on the plaintext file)": lambda: _peer_picture(
                clip, "poster", args.seconds
            ),
            "peer strip (ffmpeg on the plaintext file)": lambda: _peer_picture(
                clip, "strip", args.seconds
            ),
        }
        for round_ in range(args.reps):
            for name, make in makers.items():
                ms, size = _timed(make)
                series.setdefault(name, []).append(ms)
                sizes[name] = size
            log(f"bench: pictures round {round_ + 1}/{args.reps} done")
        series["box poster over HTTPS, held in memory"] = _warm_poster(box, rid, args.reps * 4)
        return {"series": series, "sizes": sizes, "clip_bytes": clip.stat().st_size}
    finally:
        box.stop()


def _upload(box, clip: Path) -> str:
    """Pair a camera through the API and send the clip over tus; the recording id."""
    session = plain_session()
    code = box.pairing.new_code("bench")["code"]
    cert = str(box.keys.tls_cert)
    camera = {"code": code, "serial": "CAM-LONG", "model": "bench"}
    enrolled = session.post(f"{box.url}/api/v1/cameras/enroll", verify=cert, json=camera).json()
    headers = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {enrolled['token']}"}
    size = clip.stat().st_size
    meta = "serial " + base64.b64encode(b"CAM-LONG").decode()
    created = session.post(f"{box.url}/tus/", verify=cert, headers={
        **headers, "Upload-Length": str(size), "Upload-Metadata": meta})  # fmt: skip
    location = f"{box.url}{created.headers['Location']}"
    offset = 0
    with clip.open("rb") as source:
        while offset < size:
            body = source.read(8 << 20)
            answer = session.patch(location, data=body, verify=cert, headers={
                **headers, "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream"})  # fmt: skip
            if answer.status_code != 204:
                raise RuntimeError(f"tus PATCH: {answer.status_code} {answer.text[:200]}")
            offset += len(body)
    return answer.headers["EdgeBox-Recording-Id"]


def _warm_poster(box, rid: str, count: int) -> list[float]:
    """A supervisor's poster requests once the poster is held in memory."""
    box.users.add("bench-sup", "supervisor", PASSWORD)
    session, cert = plain_session(), str(box.keys.tls_cert)
    who = {"username": "bench-sup", "password": PASSWORD}
    csrf = session.post(f"{box.url}/login", verify=cert, json=who).json()["csrf_token"]
    session.post(f"{box.url}/review/unlock", verify=cert,
                 data={"secret": SECRET, "csrf_token": csrf})  # fmt: skip
    url = f"{box.url}/api/v1/recordings/{rid}/poster.jpg"
    if session.get(url, verify=cert).status_code != 200:
        raise RuntimeError("poster over HTTPS failed")
    times = []
    for _ in range(count):
        started = time.perf_counter()
        answer = session.get(url, verify=cert)
        times.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(f"poster: {answer.status_code}")
    return times


# The last commit with the table list page: a fixed peer (main itself now has the cards).
PEER_REV = "08ce962c16265fd9a031e3e6570a09f1b5d5ca6a"


def _main_code(root: Path) -> Path:
    """The table list page's tree (PEER_REV), unpacked from git."""
    target = root / "main-code"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PEER_REV], capture_output=True,
                             check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def _serve(root: Path, name: str, env: dict) -> tuple[Proc, str, str, str, Path]:
    """`edgebox init --demo` + `edgebox run` with `env`; (process, url, cert, config, data)."""
    port = free_port()
    info = json.loads(run_cli("init", str(root), "--demo", "--box-id", name, "--listen",
                              f"127.0.0.1:{port}", "--json", env=env))  # fmt: skip
    cert = str(Path(info["data_dir"]) / "keys" / "tls.crt")
    proc = Proc(name, [*edgebox_cmd(), "run", "--config", info["config"]], root / "run.log", env)
    wait_ready(proc, f"https://127.0.0.1:{port}/tus/", cert, 60)
    return proc, f"https://127.0.0.1:{port}", cert, info["config"], Path(info["data_dir"])


def bench_list(root: Path, args) -> dict:
    """The first page of /recordings over `args.recordings` recordings: this tree and main."""
    import os

    root.mkdir(parents=True, exist_ok=True)
    main_code = _main_code(root)
    envs = {
        "this branch (poster cards)": {**os.environ},
        "before the cards (table)": {**os.environ, "PYTHONPATH": str(main_code)},
    }
    servers, procs = {}, []
    try:
        for index, (name, env) in enumerate(envs.items()):
            proc, url, cert, config, data = _serve(root / f"b{index}", f"bench-list-{index}", env)
            procs.append(proc)
            pair = json.loads(run_cli("cameras", "pair", "--config", config, "--json", env=env))
            camera = {"code": pair["code"], "serial": "CAM-01", "model": "b"}
            plain_session().post(f"{url}/api/v1/cameras/enroll", verify=cert, json=camera)
            fill(data / "box.db", args.recordings)
            secret = root / f"password{index}"
            secret.write_text(PASSWORD)
            run_cli("users", "add", "bench", "--role", "crew", "--password-file", str(secret),
                    "--config", config, env=env)  # fmt: skip
            session = plain_session()
            session.post(f"{url}/login", verify=cert,
                         json={"username": "bench", "password": PASSWORD})  # fmt: skip
            servers[name] = (session, url, cert)
        series: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(args.requests):
            for name, (session, url, cert) in servers.items():
                started = time.perf_counter()
                answer = session.get(f"{url}/recordings", verify=cert)
                series[name].append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200 or "/recordings/" not in answer.text:
                    raise RuntimeError(f"{name}: {answer.status_code}")
        return {"series": series}
    finally:
        for proc in procs:
            proc.stop()


def _row(name: str, values: list[float]) -> str:
    return (f"| {name} | {len(values)} | {percentile(values, 50):.0f} | "
            f"{percentile(values, 95):.0f} |")  # fmt: skip


def report(args, pics: dict, listing: dict) -> str:
    """The RESULTS.md section."""
    lines = [
        "## Pictures",
        "",
        f"`python bench/pictures.py` on {machine()}: a {args.seconds} s 1080p25 H.264 clip "
        f"({pics['clip_bytes'] / 1e6:.0f} MB, key frame every 2 s); every picture made cold "
        f"(no cache), {args.reps} rounds interleaved. Milliseconds.",
        "",
        "| picture | n | p50 ms | p95 ms |",
        "| --- | --- | --- | --- |",
        *(_row(name, values) for name, values in pics["series"].items()),
        "",
    ]
    box_p = percentile(pics["series"]["box poster (vault -> pipe -> ffmpeg)"], 50)
    peer_p = percentile(pics["series"]["peer poster (ffmpeg on the plaintext file)"], 50)
    box_s = percentile(pics["series"]["box strip (vault -> pipe -> ffmpeg)"], 50)
    peer_s = percentile(pics["series"]["peer strip (ffmpeg on the plaintext file)"], 50)
    lines += [
        f"Ratios (p50, box / peer): poster {box_p / peer_p:.2f}x, strip {box_s / peer_s:.2f}x.",
        "",
        f"The recordings page, first page (50 cards), {args.recordings:,} recordings, a crew "
        f"member, {args.requests} requests each, interleaved:",
        "",
        "| server | n | p50 ms | p95 ms |",
        "| --- | --- | --- | --- |",
        *(_row(name, values) for name, values in listing["series"].items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    """Run both parts and publish the section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_output_args(parser, "write the raw figures here")
    parser.add_argument("--seconds", type=int, default=600, help="clip length (600)")
    parser.add_argument("--reps", type=int, default=7, help="cold rounds (7)")
    parser.add_argument("--recordings", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="60 s clip, 5,000 recordings")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.reps, args.recordings, args.requests = 60, 3, 5000, 10
    exit_on_sigterm()
    root = Path(tempfile.mkdtemp(prefix="edgebox-bench-pictures-", dir=args.workdir))
    try:
        pics = bench_pictures(root / "pictures", args)
        listing = bench_list(root / "list", args)
        publish(args, "Pictures", report(args, pics, listing), {"pictures": pics, **listing})
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
