"""One camera's puller: ffmpeg copies the RTSP stream to a pipe, the box cuts it into pieces.

ffmpeg never writes a file: it reads the camera (RTSP over TCP), copies the video as it is
(`-c copy`, no re-encode) into MPEG-TS on its standard output, and the puller cuts that into
pieces (`edgebox.recorder.pieces`). Timestamps are offset by the time since the recorder
started, so the pieces of successive sessions (after a reconnect) keep rising and a gap
stays a gap in the recording's timeline.

States, written to the database on every change: `connecting`, `streaming`, `reconnecting`
(a stream that was up dropped; the box keeps trying), `offline` (it never came up), and
`unauthorized` (the camera refused the credentials: retried only every AUTH_BACKOFF seconds,
so a wrong password never becomes a retry storm that locks the camera's account).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import select
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable

from edgebox.clips import quiet_ffmpeg
from edgebox.recorder.cameras import CameraSpec
from edgebox.recorder.pieces import VIDEO_PID, Cutter, Piece

log = logging.getLogger("edgebox.recorder")

READ_SIZE = 188 * 5577  # ~1 MiB of whole TS packets
PIPE_SIZE = 1 << 20  # ffmpeg's pipe holds ~2 s of a 4 Mbit/s stream...
BATCH_SECONDS = 0.5  # ...so the box reads it twice a second, not at every frame
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), named in the fcntl module from Python 3.10
NO_DATA_SECONDS = 10.0  # a connected stream silent this long is dropped and reconnected
BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
AUTH_BACKOFF = 300.0
_AUTH = re.compile(r"\b401\b|Unauthorized|authoriz", re.IGNORECASE)
_CONTEXT = re.compile(r"\[[\w:-]+ @ 0x[0-9a-f]+\] ")  # ffmpeg's "[rtsp @ 0x55...] " prefixes


def ffmpeg_pull_command(url: str, offset_seconds: float, binary: str | None = None) -> list[str]:
    """The ffmpeg command that copies `url`'s first video (and audio, as AAC) to MPEG-TS on
    standard output, with timestamps shifted by `offset_seconds`."""
    return [
        *quiet_ffmpeg(binary),
        "-rtsp_transport",
        "tcp",
        "-timeout",
        str(int(NO_DATA_SECONDS * 1_000_000)),
        "-i",
        url,
        "-map",
        "0:v:0",
        "-map",
        "0:a:0?",
        "-c:v",
        "copy",
        "-c:a",
        "aac",  # G.711 and other camera audio cannot go into MP4 as it is
        "-f",
        "mpegts",
        "-mpegts_start_pid",
        str(VIDEO_PID),
        "-output_ts_offset",
        f"{offset_seconds:.3f}",
        "-muxdelay",
        "0",
        "-flush_packets",
        "1",
        "pipe:1",
    ]


class Puller:
    """Keeps one camera's ffmpeg running, reconnecting with back-off, and hands on pieces."""

    def __init__(
        self,
        spec: CameraSpec,
        epoch: float,
        on_piece: Callable[[str, Piece], None],
        on_state: Callable[[str, str, str | None], None],
        on_session_end: Callable[[str, int, str], None],
    ):
        self.spec = spec
        self.epoch = epoch
        self._on_piece = on_piece
        self._on_state = on_state
        self._on_session_end = on_session_end
        self.stop_event = threading.Event()
        self.state = "connecting"
        self.error: str | None = None
        self.session = 0
        self.sessions_started = 0
        self.ever_streamed = False
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, name=f"pull-{spec.name}", daemon=True)

    def start(self) -> Puller:
        """Start pulling."""
        self._set("connecting", None)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop pulling and end ffmpeg."""
        self.stop_event.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        self._thread.join(timeout=10)

    @property
    def pid(self) -> int | None:
        """ffmpeg's process id while it runs (for benchmarks)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _set(self, state: str, error: str | None) -> None:
        if (state, error) == (self.state, self.error) and self.sessions_started:
            return
        self.state, self.error = state, error
        try:
            self._on_state(self.spec.device_id, state, error)
        except Exception:  # noqa: BLE001 - a state write must never stop the puller
            log.exception("camera %s: state not recorded", self.spec.name)

    def _run(self) -> None:
        backoff = BACKOFF_START
        while not self.stop_event.is_set():
            try:
                streamed, reason = self._session()
            except Exception as exc:  # noqa: BLE001 - the camera is retried, never dropped
                log.exception("camera %s: puller failed", self.spec.name)
                streamed, reason = False, f"internal error: {exc}"
            if self.stop_event.is_set():
                return
            if _AUTH.search(reason):
                self._set(
                    "unauthorized",
                    "the camera refused the user name or password (401 Unauthorized); "
                    f"next try in {AUTH_BACKOFF:.0f} s",
                )
                wait = AUTH_BACKOFF
            elif streamed:
                self._set("reconnecting", f"stream dropped: {reason}")
                backoff = BACKOFF_START
                wait = backoff
            else:
                if self.ever_streamed:  # still trying to get a lost stream back
                    self._set("reconnecting", f"stream lost, no answer yet: {reason}")
                else:
                    self._set("offline", f"no stream: {reason}")
                wait = backoff
                backoff = min(BACKOFF_MAX, backoff * 2)
            self.stop_event.wait(wait)

    def _session(self) -> tuple[bool, str]:
        """Run ffmpeg once: (whether any piece came, why it ended)."""
        self.session += 1
        self.sessions_started += 1
        cutter = Cutter(self.session)
        command = ffmpeg_pull_command(self.spec.source_url(), time.time() - self.epoch)
        errors: deque[str] = deque(maxlen=20)
        try:
            proc = self._proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as exc:
            return False, f"ffmpeg could not start: {exc.strerror}"
        reader = threading.Thread(target=_collect, args=(proc.stderr, errors), daemon=True)
        reader.start()
        streamed = False
        reason = ""
        fd = proc.stdout.fileno()
        batch = 0.0  # with the default 64 KiB pipe, read at every frame
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", F_SETPIPE_SZ), PIPE_SIZE)
            batch = BATCH_SECONDS
        last_data = time.monotonic()
        try:
            while not self.stop_event.is_set():
                ready, _, _ = select.select([fd], [], [], 1.0)
                if not ready:
                    if time.monotonic() - last_data > NO_DATA_SECONDS:
                        reason = f"no data from the camera for {NO_DATA_SECONDS:.0f} s"
                        break
                    continue
                data = os.read(fd, READ_SIZE)
                if not data:
                    break
                last_data = time.monotonic()
                for piece in cutter.feed(data):
                    if not streamed:
                        streamed = self.ever_streamed = True
                        self._set("streaming", None)
                    self._on_piece(self.spec.device_id, piece)
                if batch:
                    self.stop_event.wait(batch)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            reader.join(timeout=5)
            proc.stdout.close()
            self._proc = None
        last = cutter.flush()
        if last is not None and streamed:
            self._on_piece(self.spec.device_id, last)
        if not reason:
            text = _CONTEXT.sub("", " ".join(errors))
            reason = self.spec.redact(text) or f"ffmpeg exited ({proc.returncode})"
        if streamed:
            self._on_session_end(self.spec.device_id, self.session, reason)
        return streamed, reason


def _collect(stream, lines: deque) -> None:
    """Keep ffmpeg's last error lines (they may name the URL: redacted before use)."""
    for raw in stream:
        text = raw.decode("utf-8", "replace").strip()
        if text:
            lines.append(text)
    stream.close()
