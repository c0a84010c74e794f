"""Ingest benchmark: how fast a real box takes footage over tus, against the disk and a plain peer.

Everything is real: `edgebox init --demo` makes a box in a temp dir, `edgebox run` serves it
over HTTPS (cheroot + TLS), cameras are paired and enrolled through the API, and the footage
goes in over tus 1.0.0. The same client code, bytes and chunk sizes then feed a plain,
non-encrypting tus server (tuspyserver on uvicorn, `bench/peer_server.py`), over HTTP and
HTTPS, and the same filesystem is measured with plain writes. Each measurement runs at least
twice (interleaved, the machine is noisy); best and median are reported. Nothing is asserted:
a benchmark reports.

    python bench/ingest.py                    # full run, rewrites "## Ingest" of bench/RESULTS.md
    python bench/ingest.py --quick --no-write # small smoke run
    python bench/ingest.py --profile          # plus one box upload under py-spy, hot spots printed

MB/s are decimal (10^6 bytes per second); sizes are binary (MiB, GiB).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import psutil
import requests

MIB = 1 << 20
GIB = 1 << 30
MB = 1e6
HERE = Path(__file__).resolve().parent
TUS = "1.0.0"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the footage --------------------------------------------------------------------------


class Pattern:
    """Endless pseudo-footage: one seeded random block repeated, served chunk by chunk.

    The block length (1 MiB + 4099 bytes) lines up with neither the chunks nor the vault's
    1 MiB segments, so consecutive chunks differ. Memory: the block repeated once past the
    largest chunk (about 10 MiB), never the whole upload.
    """

    BLOCK = MIB + 4099

    def __init__(self, max_chunk: int, seed: int = 2024):
        block = random.Random(seed).randbytes(self.BLOCK)
        copies = max_chunk // self.BLOCK + 2
        self._buf = block * copies
        self._max = max_chunk
        self._digests: dict[int, str] = {}

    def chunk(self, offset: int, size: int) -> bytes:
        """The `size` bytes at `offset` of the endless stream (size <= max_chunk)."""
        if size > self._max:
            raise ValueError(f"chunk {size} larger than the pattern's {self._max}")
        start = offset % self.BLOCK
        return self._buf[start : start + size]

    def sha256(self, size: int) -> str:
        """SHA-256 of the first `size` bytes (what the box must report as evidence hash)."""
        if size not in self._digests:
            digest = hashlib.sha256()
            for offset in range(0, size, self._max):
                digest.update(self.chunk(offset, min(self._max, size - offset)))
            self._digests[size] = digest.hexdigest()
        return self._digests[size]


class PatternStream:
    """A seekable read-only file over the first `size` bytes of a Pattern (for tuspy)."""

    def __init__(self, pattern: Pattern, size: int):
        self.pattern, self.size, self.pos = pattern, size, 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(0, min(self.size, base + offset))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        out = bytearray()
        while len(out) < n:
            piece = self.pattern.chunk(self.pos, min(n - len(out), self.pattern._max))
            out += piece
            self.pos += len(piece)
        return bytes(out)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- the client ---------------------------------------------------------------------------


class TusUploader:
    """A minimal tus 1.0.0 client (creation + PATCH) on one requests.Session (keep-alive).

    Used unchanged for the box and the peer. `trust_env` is off so that a REQUESTS_CA_BUNDLE
    in the environment cannot override the pinned certificate (requests lets the environment
    win over `Session.verify`).
    """

    def __init__(self, create_url: str, verify, token: str | None, serial: str):
        self.create_url = create_url
        self.verify = verify
        self.session = requests.Session()
        self.session.trust_env = False
        self.headers = {"Tus-Resumable": TUS}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.metadata = "serial " + base64.b64encode(serial.encode()).decode()

    def upload(self, pattern: Pattern, size: int, chunk: int) -> dict:
        """Create an upload of `size` bytes and PATCH it in `chunk`-byte requests."""
        response = self.session.post(
            self.create_url,
            verify=self.verify,
            headers={**self.headers, "Upload-Length": str(size), "Upload-Metadata": self.metadata},
        )
        if response.status_code != 201:
            raise RuntimeError(f"tus creation: {response.status_code} {response.text[:300]}")
        url = urljoin(self.create_url, response.headers["Location"])
        offset = 0
        while offset < size:
            n = min(chunk, size - offset)
            headers = {
                **self.headers,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            }
            response = self.session.patch(
                url, data=pattern.chunk(offset, n), verify=self.verify, headers=headers
            )
            if response.status_code != 204:
                raise RuntimeError(
                    f"tus PATCH at {offset}: {response.status_code} {response.text[:300]}"
                )
            new = int(response.headers["Upload-Offset"])
            if new != offset + n:
                raise RuntimeError(f"server took {new - offset} of {n} bytes at offset {offset}")
            offset = new
        return {"url": url, "evidence": response.headers.get("EdgeBox-Evidence-Sha256")}

    def close(self) -> None:
        self.session.close()


def tuspy_upload(
    create_url: str,
    cert: str | None,
    token: str | None,
    serial: str,
    pattern: Pattern,
    size: int,
    chunk: int,
) -> dict:
    """The same upload with the third-party tuspy client (one new connection per request).

    tuspy coerces `verify` to a bool, so the pinned certificate goes in via REQUESTS_CA_BUNDLE.
    """
    from tusclient import client as tus_client

    saved = os.environ.get("REQUESTS_CA_BUNDLE")
    if cert:
        os.environ["REQUESTS_CA_BUNDLE"] = cert
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        uploader = tus_client.TusClient(create_url, headers=headers).uploader(
            file_stream=PatternStream(pattern, size),
            chunk_size=chunk,
            metadata={"serial": serial},
        )
        uploader.upload()
        if uploader.offset != size:
            raise RuntimeError(f"tuspy stopped at {uploader.offset} of {size}")
        return {
            "url": uploader.url,
            "evidence": uploader.request.response_headers.get("edgebox-evidence-sha256"),
        }
    finally:
        if saved is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = saved


# -- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A subprocess in its own process group, logged to a file, stopped by its own pid."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # Children left in the group (e.g. a supervised litestream) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()


def wait_ready(proc: Proc, url: str, verify, timeout: float = 30.0) -> None:
    """Poll `OPTIONS url` until the server answers 204."""
    deadline = time.monotonic() + timeout
    session = requests.Session()
    session.trust_env = False
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
        with contextlib.suppress(requests.RequestException):
            if (
                session.options(
                    url, verify=verify, headers={"Tus-Resumable": TUS}, timeout=2
                ).status_code
                == 204
            ):
                session.close()
                return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready after {timeout}s:\n{proc.tail()}")


def edgebox_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("edgebox")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "edgebox"]


class Box:
    """A real box: `edgebox init --demo`, `edgebox run`, cameras paired and enrolled."""

    def __init__(self, root: Path):
        self.root = root / "box"
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.proc: Proc | None = None
        self.cameras: list[tuple[str, str]] = []  # (serial, token)

    def start(self, cameras: int) -> None:
        out = subprocess.run(
            [
                *edgebox_cmd(),
                "init",
                str(self.root),
                "--demo",
                "--box-id",
                "bench",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--json",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"edgebox init failed:\n{out.stdout}\n{out.stderr}")
        info = json.loads(out.stdout)
        self.config = info["config"]
        self.data_dir = Path(info["data_dir"])
        self.cert = str(self.data_dir / "keys" / "tls.crt")
        self.key = str(self.data_dir / "keys" / "tls.key")
        # The source the box runs, to name profiled lines even if the files change meanwhile.
        self.sources = source_snapshot()
        self.proc = Proc(
            "edgebox run",
            [*edgebox_cmd(), "run", "--config", self.config],
            self.root.parent / "edgebox-run.log",
        )
        wait_ready(self.proc, f"{self.url}/tus/", self.cert)
        for n in range(cameras):
            self.cameras.append(self._enroll(f"BENCH-CAM-{n + 1}"))

    def _enroll(self, serial: str) -> tuple[str, str]:
        out = subprocess.run(
            [*edgebox_cmd(), "cameras", "pair", "--config", self.config, "--json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"edgebox cameras pair failed:\n{out.stdout}\n{out.stderr}")
        code = json.loads(out.stdout)["code"]
        session = requests.Session()
        session.trust_env = False
        response = session.post(
            f"{self.url}/api/v1/cameras/enroll",
            verify=self.cert,
            json={"code": code, "serial": serial, "model": "bench"},
        )
        session.close()
        if response.status_code != 201:
            raise RuntimeError(f"enroll {serial}: {response.status_code} {response.text[:300]}")
        return serial, response.json()["token"]


class Peer:
    """tuspyserver on uvicorn, plain HTTP or HTTPS with the box's own certificate and key."""

    def __init__(self, root: Path, name: str, tls: tuple[str, str] | None, fsync: bool):
        self.name = name
        self.files_dir = root / f"{name}-files"
        self.files_dir.mkdir()
        self.port = free_port()
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = tls[0] if tls else True
        self.cert = tls[0] if tls else None
        argv = [
            sys.executable,
            str(HERE / "peer_server.py"),
            "--port",
            str(self.port),
            "--files-dir",
            str(self.files_dir),
        ]
        if tls:
            argv += ["--ssl-certfile", tls[0], "--ssl-keyfile", tls[1]]
        if fsync:
            argv.append("--fsync")
        self.proc = Proc(name, argv, root / f"{name}.log")
        try:
            wait_ready(self.proc, f"{self.url}/files/", self.verify)
        except BaseException:
            self.proc.stop()
            raise

    def clear(self) -> None:
        """Drop the uploaded files (outside the timed section; the peer keeps no other state)."""
        for path in self.files_dir.iterdir():
            if path.is_file():
                path.unlink()

    def stored_sizes(self) -> list[int]:
        return sorted(
            p.stat().st_size
            for p in self.files_dir.iterdir()
            if p.is_file() and not p.name.endswith((".info", ".tmp"))
        )


# -- measuring ----------------------------------------------------------------------------


class Watch:
    """Server-side figures for one measurement: peak RSS (VmHWM and 50 ms psutil samples), CPU."""

    def __init__(self, pid: int | None):
        self.pid = pid
        self.sampled_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.hwm_reset = False

    def _procs(self) -> list[psutil.Process]:
        main = psutil.Process(self.pid)
        return [main, *main.children(recursive=True)]

    def _cpu(self) -> float:
        total = 0.0
        for proc in self._procs():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(self.pid).memory_info().rss
                self.sampled_peak = max(self.sampled_peak, rss)
            self._stop.wait(0.05)

    def __enter__(self):
        if self.pid is None:
            return self
        # Writing 5 to clear_refs resets VmHWM to the current RSS: a per-measurement peak.
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.cpu0 = self._cpu()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.pid is None:
            return False
        self._stop.set()
        self._thread.join()
        self.cpu = self._cpu() - self.cpu0
        self.hwm = vm_hwm(self.pid)
        return False


def vm_hwm(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM), 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Sample:
    seconds: float
    nbytes: int
    server_cpu: float | None = None
    client_cpu: float | None = None
    hwm: int | None = None
    sampled_peak: int | None = None

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / MB


@dataclass
class Measurement:
    key: str
    label: str
    means: str
    group: str
    samples: list[Sample] = field(default_factory=list)

    def best(self) -> float:
        return max(s.mbps for s in self.samples)

    def median(self) -> float:
        return statistics.median(s.mbps for s in self.samples)

    def cpu_per_gib(self) -> float | None:
        values = [s.server_cpu / (s.nbytes / GIB) for s in self.samples if s.server_cpu is not None]
        return statistics.median(values) if values else None

    def client_cpu_per_gib(self) -> float | None:
        values = [s.client_cpu / (s.nbytes / GIB) for s in self.samples if s.client_cpu is not None]
        return statistics.median(values) if values else None

    def peak_rss(self) -> int | None:
        values = [max(s.hwm or 0, s.sampled_peak or 0) for s in self.samples]
        return max(values) if any(values) else None


def timed(pid: int | None, body) -> Sample:
    """Run `body()` (which returns the bytes it moved) under a Watch of server `pid`."""
    os.sync()  # start clean: no dirty pages of an earlier measurement flushing into this one
    client0 = resource.getrusage(resource.RUSAGE_SELF)
    with Watch(pid) as watch:
        start = time.perf_counter()
        nbytes = body()
        seconds = time.perf_counter() - start
    client1 = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (client1.ru_utime - client0.ru_utime) + (client1.ru_stime - client0.ru_stime)
    if pid is None:
        return Sample(seconds, nbytes, client_cpu=client_cpu)
    return Sample(seconds, nbytes, watch.cpu, client_cpu, watch.hwm, watch.sampled_peak)


def disk_write(path: Path, pattern: Pattern, size: int, block: int, fsync_each: bool) -> int:
    """Plain writes of `size` bytes in `block`-byte writes, fsync at the end (or after each)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for offset in range(0, size, block):
            data = pattern.chunk(offset, min(block, size - offset))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync_each:
                os.fsync(fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


def vault_alone(folder: Path, pattern: Pattern, size: int, block: int) -> int:
    """The box's vault Writer fed directly (no HTTP, no TLS): encrypt + 2×SHA-256 + fsync per
    `block`, as one PATCH does. Uses edgebox.vault's public API; skipped if that changes."""
    import secrets
    import uuid

    from edgebox import vault

    data_key = secrets.token_bytes(32)
    header = vault.new_header(
        recording_id=uuid.uuid4().hex,
        device_id="bench",
        plaintext_size=size,
        data_key=data_key,
        stanzas=[],
        suite="AES-256-GCM",
        segment_size=MIB,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
        extra={},
    )
    partial = folder / "vault-alone.partial"
    final = folder / "vault-alone.ebv"
    writer = vault.Writer.create(partial, header, data_key)
    try:
        for offset in range(0, size, block):
            writer.write(pattern.chunk(offset, min(block, size - offset)))
            writer.sync()
        writer.finish(final)
    finally:
        writer.close()
    return size


# -- the run ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.size = args.size_mib * MIB
        self.streams = args.streams
        self.part = self.size // self.streams
        self.pattern = Pattern(max(8 * MIB, args.chunk_mib * MIB))
        self.chunk = args.chunk_mib * MIB
        self.small_chunk = args.small_chunk_mib * MIB
        self.measurements: dict[str, Measurement] = {}
        self.order: list[str] = []
        self.skipped: dict[str, str] = {}

    def add(self, key, label, means, group):
        self.measurements[key] = Measurement(key, label, means, group)
        self.order.append(key)

    def record(self, key: str, pid: int | None, body) -> None:
        m = self.measurements[key]
        try:
            sample = timed(pid, body)
        except Exception as exc:  # noqa: BLE001 - report and carry on with the others
            self.skipped[key] = f"{type(exc).__name__}: {exc}"[:300]
            log(f"  {m.label}: FAILED {self.skipped[key]}")
            return
        m.samples.append(sample)
        extra = ""
        if sample.hwm:
            extra = f", server CPU {sample.server_cpu:.1f}s, peak RSS {sample.hwm / MB:.0f} MB"
        log(f"  {m.label}: {sample.mbps:7.1f} MB/s ({sample.seconds:.2f}s{extra})")

    # uploads --------------------------------------------------------------------------
    def single(self, create_url, verify, camera, check, chunk) -> int:
        client = TusUploader(create_url, verify, camera[1], camera[0])
        try:
            result = client.upload(self.pattern, self.size, chunk)
        finally:
            client.close()
        check(result, self.size)
        return self.size

    def multi(self, create_url, verify, cameras, check, chunk) -> int:
        clients = [TusUploader(create_url, verify, token, serial) for serial, token in cameras]
        results: list = [None] * len(clients)
        errors: list = []

        def run(i):
            try:
                results[i] = clients[i].upload(self.pattern, self.part, chunk)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in clients:
            c.close()
        if errors:
            raise errors[0]
        for r in results:
            check(r, self.part)
        return self.part * len(clients)

    def tuspy(self, create_url, cert, camera, check, chunk) -> int:
        serial, token = camera
        result = tuspy_upload(create_url, cert, token, serial, self.pattern, self.size, chunk)
        check(result, self.size)
        return self.size

    def run(self) -> None:
        args = self.args
        root = Path(tempfile.mkdtemp(prefix="edgebox-bench-", dir=args.workdir))
        self.root = root
        procs: list[Proc] = []
        started = time.monotonic()
        try:
            log(f"bench: workdir {root}")
            box = Box(root)
            try:
                box.start(cameras=self.streams)
            finally:
                if box.proc:
                    procs.append(box.proc)
            self.box = box
            self.fs = filesystem_of(box.data_dir)
            log(f"bench: box {box.url} (pid {box.proc.pid}), data on {self.fs}")
            peers: dict[str, Peer] = {}
            for name, tls, fsync in (
                ("peer-http", None, False),
                ("peer-https", (box.cert, box.key), False),
                ("peer-https-fsync", (box.cert, box.key), True),
            ):
                if name in args.skip:
                    continue
                try:
                    peers[name] = Peer(root, name, tls, fsync)
                    procs.append(peers[name].proc)
                except Exception as exc:  # noqa: BLE001 - e.g. HTTPS peer not feasible
                    self.skipped[name] = f"{type(exc).__name__}: {exc}"[:300]
                    log(f"bench: {name} unavailable: {self.skipped[name]}")
            self.plan(box, peers)
            log(
                f"bench: hashing the reference data ({self.size // MIB} MiB, "
                f"{self.part // MIB} MiB)"
            )
            self.pattern.sha256(self.size)
            self.pattern.sha256(self.part)
            self.box_lifetime_hwm_start = vm_hwm(box.proc.pid)
            for rep in range(1, args.reps + 1):
                log(f"bench: round {rep}/{args.reps}")
                for key, pid, body, after in self.steps:
                    self.record(key, pid, body)
                    after()
            self.box_lifetime_hwm = vm_hwm(box.proc.pid)
            if args.profile:
                self.profile(box)
            self.elapsed = time.monotonic() - started
        finally:
            for proc in reversed(procs):
                proc.stop()
            if args.keep:
                log(f"bench: kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)

    def plan(self, box: Box, peers: dict[str, Peer]) -> None:
        size_txt = (
            f"1 × {self.size // MIB} MiB" if self.size < GIB else f"1 × {self.size // GIB} GiB"
        )
        multi_txt = f"{self.streams} × {self.part // MIB} MiB concurrent"
        chunk_txt = f"{self.chunk // MIB} MiB PATCH"
        small_txt = f"{self.small_chunk // MIB} MiB PATCH"
        noop = lambda: None  # noqa: E731
        steps = []
        scratch = box.data_dir / "bench-scratch"
        scratch.mkdir()

        def wipe():  # after (outside) the timed section: deleting 1 GiB takes a while
            for path in scratch.iterdir():
                path.unlink()

        self.add(
            "disk",
            f"disk: {size_txt}, {self.chunk // MIB} MiB writes, fsync at end",
            "plain os.write() of the same bytes to the box's filesystem, one fsync at the "
            "end: the limit",
            "disk",
        )
        steps.append(
            (
                "disk",
                None,
                lambda: disk_write(
                    scratch / "disk.bin", self.pattern, self.size, self.chunk, False
                ),
                wipe,
            )
        )
        self.add(
            "disk-each",
            f"disk: {size_txt}, {self.chunk // MIB} MiB writes, fsync each",
            "the same with an fsync after every write (the box fsyncs once per PATCH)",
            "disk",
        )
        steps.append(
            (
                "disk-each",
                None,
                lambda: disk_write(scratch / "disk.bin", self.pattern, self.size, self.chunk, True),
                wipe,
            )
        )
        if "vault" not in self.args.skip:
            self.add(
                "vault",
                f"vault Writer alone: {size_txt}, {self.chunk // MIB} MiB writes",
                "edgebox.vault.Writer in the bench process, no HTTP/TLS: AES-256-GCM per "
                "1 MiB segment, SHA-256 of plaintext and ciphertext, fsync per write",
                "disk",
            )
            steps.append(
                (
                    "vault",
                    None,
                    lambda: vault_alone(scratch, self.pattern, self.size, self.chunk),
                    wipe,
                )
            )

        targets = [("box", box.url + "/tus/", box.cert, box.cert, box.proc.pid, None)]
        for name, peer in peers.items():
            targets.append(
                (name, f"{peer.url}/files/", peer.verify, peer.cert, peer.proc.pid, peer)
            )
        cam = box.cameras[0]
        for name, create_url, verify, cert, pid, peer in targets:
            where = {
                "box": "EdgeBox over HTTPS (cheroot, TLS), encrypting",
                "peer-http": "tuspyserver/uvicorn, plain HTTP, no encryption, no fsync",
                "peer-https": "tuspyserver/uvicorn, HTTPS (same cert), no encryption, no fsync",
                "peer-https-fsync": "tuspyserver/uvicorn, HTTPS, LocalFileStorage "
                "(fsync per PATCH), no encryption",
            }[name]
            check = self.check_box if peer is None else self.check_peer(peer)
            after = noop if peer is None else peer.clear
            u, v, c = create_url, verify, check
            variants = [
                (
                    "single",
                    f"{size_txt}, {chunk_txt}, Session",
                    lambda u=u, v=v, c=c: self.single(u, v, cam, c, self.chunk),
                )
            ]
            if name != "peer-https-fsync":
                variants += [
                    (
                        "multi",
                        f"{multi_txt}, {chunk_txt}",
                        lambda u=u, v=v, c=c: self.multi(u, v, box.cameras, c, self.chunk),
                    ),
                    (
                        "small",
                        f"{size_txt}, {small_txt}, Session",
                        lambda u=u, v=v, c=c: self.single(u, v, cam, c, self.small_chunk),
                    ),
                    (
                        "tuspy",
                        f"{size_txt}, {chunk_txt}, tuspy (new connection per request)",
                        lambda u=u, ce=cert, c=c: self.tuspy(u, ce, cam, c, self.chunk),
                    ),
                ]
            for variant, text, body in variants:
                key = f"{name}/{variant}"
                if key in self.args.skip or variant in self.args.skip:
                    continue
                self.add(key, f"{name}: {text}", where, name)
                steps.append((key, pid, body, after))
        self.steps = steps

    def check_box(self, result: dict, size: int) -> None:
        expected = self.pattern.sha256(size)
        if result["evidence"] != expected:
            raise RuntimeError(f"box evidence hash {result['evidence']} != sent data {expected}")

    def check_peer(self, peer: Peer):
        def check(result: dict, size: int) -> None:
            if size not in peer.stored_sizes():
                raise RuntimeError(f"{peer.name} holds {peer.stored_sizes()}, expected {size}")

        return check

    # profiling ------------------------------------------------------------------------
    def profile(self, box: Box) -> None:
        """One more box upload (not counted) under py-spy; prints the hottest frames."""
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(pyspy).exists():
            log("bench: --profile needs py-spy (pip install py-spy); skipped")
            return
        out = self.root / "box.pyspy.txt"
        chunk = (self.args.profile_chunk_mib or self.args.chunk_mib) * MIB
        self.profile_chunk = chunk
        done = [m for k, m in self.measurements.items() if k.startswith("box/") and m.samples]
        rate = min(m.median() for m in done) if done else 50.0
        seconds = max(4, int(self.size / (rate * MB) * (8 * MIB / chunk) ** 0.5) + 4)
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "-p",
                str(box.proc.pid),
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                str(out),
                "-d",
                str(seconds),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)
        try:
            self.single(box.url + "/tus/", box.cert, box.cameras[0], self.check_box, chunk)
        finally:
            spy.wait(timeout=seconds + 60)
        if not out.exists():
            log(f"bench: py-spy wrote nothing: {spy.stderr.read().decode(errors='replace')[-500:]}")
            return
        self.hotspots = summarize_pyspy(out.read_text(), self.box.sources)
        keep = HERE / "ingest-profile.txt"
        shutil.copy(out, keep)
        log(f"bench: py-spy collapsed stacks kept in {keep}")


def source_snapshot() -> dict[str, list[str]]:
    """Lines of every edgebox module, keyed like py-spy names them (`edgebox/vault.py`)."""
    import edgebox

    package = Path(edgebox.__file__).resolve().parent
    return {
        f"edgebox/{p.relative_to(package)}": p.read_text(errors="replace").splitlines()
        for p in package.rglob("*.py")
    }


def source_line(frame: str, sources: dict[str, list[str]]) -> str:
    """`func (file:line)` plus the text of that line, when it can be found."""
    match = re.search(r"\((.+):(\d+)\)$", frame)
    if not match:
        return frame
    name, number = match.group(1), int(match.group(2))
    lines = sources.get(name)
    if lines is None:
        for base in (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]):
            path = Path(base) / name
            if path.is_file():
                lines = path.read_text(errors="replace").splitlines()
                break
    if lines and 0 < number <= len(lines):
        return f"{frame}: `{lines[number - 1].strip()}`"
    return frame


def summarize_pyspy(raw: str, sources: dict | None = None, top: int = 15) -> dict:
    """Self and inclusive sample shares from py-spy's collapsed-stack output."""
    own, incl, total = Counter(), Counter(), 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n  # with file:line, to tell e.g. hashing from encrypting apart
        for f in {re.sub(r" \(.*?\)$", "", f) for f in frames}:
            incl[f] += n
    return {
        "total": total,
        "self": [(source_line(f, sources or {}), n / total) for f, n in own.most_common(top)]
        if total
        else [],
        "inclusive": [(f, n / total) for f, n in incl.most_common(top * 2)] if total else [],
    }


# -- reporting ----------------------------------------------------------------------------


def filesystem_of(path: Path) -> str:
    path = path.resolve()
    best = None
    for part in psutil.disk_partitions(all=True):
        if str(path).startswith(part.mountpoint) and (
            best is None or len(part.mountpoint) > len(best.mountpoint)
        ):
            best = part
    return f"{best.device} ({best.fstype}) on {best.mountpoint}" if best else "?"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def fmt(value, spec=".0f", none="–") -> str:
    return none if value is None else format(value, spec)


def report(bench: Bench) -> str:
    m = bench.measurements
    have = {k: v for k, v in m.items() if v.samples}
    reps = bench.args.reps
    now = dt.datetime.now().astimezone()
    lines = [
        "## Ingest",
        "",
        f"Run {now:%Y-%m-%d %H:%M %Z} with `bench/run` ({reps} interleaved rounds; "
        f"{bench.elapsed:.0f} s in all). Machine: nproc={os.cpu_count()}, {cpu_model()}, "
        f"{psutil.virtual_memory().total / GIB:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}; box data, peer files and disk test on "
        f"{bench.fs}. Client and servers share the same {os.cpu_count()} cores.",
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


def write_section(path: Path, section: str) -> None:
    """Replace the `## Ingest` section of `path` (up to the next `## ` heading), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nWritten by `bench/run`.\n"
    pattern = re.compile(r"^## Ingest\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def print_table(bench: Bench, section: str) -> None:
    print(section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2, help="rounds of every measurement (>= 2)")
    parser.add_argument("--size-mib", type=int, default=1024, help="bytes per measurement")
    parser.add_argument("--streams", type=int, default=4, help="concurrent uploads")
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--small-chunk-mib", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="64 MiB, for a smoke test")
    parser.add_argument("--workdir", help="parent of the temp dir (default: system temp)")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--json", help="also write raw samples here")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help="skip a server (peer-http, peer-https, peer-https-fsync), a variant "
        "(multi, small, tuspy), vault, or KEY like box/tuspy",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one extra box upload under py-spy; hot spots in the report",
    )
    parser.add_argument(
        "--profile-chunk-mib",
        type=int,
        help="PATCH size of the profiled upload (default: --chunk-mib)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib = 64
    args.reps = max(2, args.reps)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(args)
    bench.run()
    section = report(bench)
    print_table(bench, section)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {k: [s.__dict__ for s in v.samples] for k, v in bench.measurements.items()},
                indent=1,
            )
        )
    if not args.no_write and not args.quick:
        write_section(Path(args.results), section)
        log(f"bench: wrote the Ingest section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
