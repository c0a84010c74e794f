"""Starting real RTSP cameras (tests/rtsp_server.py under Debian's python3) and reading them."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from urllib.parse import quote

SYSTEM_PYTHON = "/usr/bin/python3"  # has python3-gst-1.0 and the GstRtspServer typelib
SERVER = Path(__file__).with_name("rtsp_server.py")
BARS = 8


class RtspCamera:
    """A GStreamer RTSP server on 127.0.0.1:`port` serving `mounts`; kill and restart it."""

    def __init__(self, port: int, mounts: list[str], source: str = "clock", **auth: str):
        self.port, self.mounts, self.source, self.auth = port, mounts, source, auth
        self.proc: subprocess.Popen | None = None

    def url(self, mount: str, user: str | None = None, password: str | None = None) -> str:
        """The camera's URL, with credentials when given."""
        login = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user else ""
        return f"rtsp://{login}127.0.0.1:{self.port}{mount}"

    def start(self) -> RtspCamera:
        """Start the server and wait until it listens."""
        command = [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), "--source", self.source]
        for mount in self.mounts:
            command += ["--mount", mount]
        if self.auth:
            command += ["--user", self.auth["user"], "--password", self.auth["password"]]
        # GStreamer's warnings go nowhere: an unread pipe would fill and stall the camera.
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"RTSP server on port {self.port} did not start ({line!r})")
        return self

    def kill(self) -> None:
        """Kill the server at once (a camera losing power)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc.stdout.close()

    def __enter__(self) -> RtspCamera:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def clock_of_frame(frame: bytes, width: int = 320, height: int = 240) -> int:
    """The half-second count (mod 256) a clock frame spells in its eight bars."""
    row = frame[(height // 2) * width : (height // 2 + 1) * width]
    bar = width // BARS
    value = 0
    for index in range(BARS):
        value = value << 1 | (row[index * bar + bar // 2] > 128)
    return value


def seconds_between(earlier_clock: int, later: float) -> float:
    """How long before the wall time `later` a frame spelling `earlier_clock` was made
    (the clock wraps every 128 s; the answer is within [0, 128))."""
    return ((int(later * 2) - earlier_clock) % 256) / 2


def decoded_frames(path: Path, width: int = 320, height: int = 240) -> list[bytes]:
    """Every frame of a video, decoded to grey pixels by ffmpeg (in memory)."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    size = width * height
    return [raw[i : i + size] for i in range(0, len(raw) - size + 1, size)]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.25):
    """Poll until `predicate()` is truthy; returns its value or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
