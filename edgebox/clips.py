"""Real, playable camera clips made with ffmpeg: H.264/AAC MP4 with a burnt-in clock.

The clips stand in for body-worn camera footage in the demo, the camera simulator and
the tests. Each clip shows the camera serial and the wall-clock time of every frame
(``started_at`` + the frame's time), and a "PRE-EVENT" label during the pre-record
buffer, so a reviewer can see at a glance which part preceded the trigger.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
)
FONT_ROOT = Path("/usr/share/fonts")

# Characters that need a backslash at each of ffmpeg's parsing levels.
_DRAWTEXT_LITERAL = "\\%"  # drawtext's own text expansion
_FILTER_OPTION = "\\':"  # the value of one filter option
_FILTER_GRAPH = "\\'[],;"  # the whole filtergraph description


@dataclass(frozen=True)
class ClipInfo:
    """What was recorded: the file, its hash and the time span it covers."""

    path: Path
    size: int
    sha256: str
    duration: float
    started_at: dt.datetime
    stopped_at: dt.datetime
    pre_event_seconds: float

    @property
    def triggered_at(self) -> dt.datetime:
        """The moment the camera was activated: the end of the pre-event buffer."""
        return self.started_at + dt.timedelta(seconds=self.pre_event_seconds)


@dataclass(frozen=True)
class ClipProbe:
    """What ffmpeg reports about a media file: duration and the codec of each stream kind."""

    duration: float | None
    video_codecs: tuple[str, ...]
    audio_codecs: tuple[str, ...]


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: Debian's on PATH if present, else the imageio-ffmpeg wheel's."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def quiet_ffmpeg(binary: str | None = None) -> list[str]:
    """The start of an ffmpeg command that reads no keyboard and prints only errors."""
    return [binary or ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]


def find_font() -> Path | None:
    """A TrueType font for drawtext: DejaVuSans if installed, else any .ttf, else None."""
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    if FONT_ROOT.is_dir():
        for found in sorted(FONT_ROOT.rglob("*.ttf")):
            if found.is_file():
                return found
    return None


def make_clip(
    path: str | os.PathLike,
    *,
    seconds: float,
    pre_event_seconds: float = 30,
    width: int = 640,
    height: int = 360,
    fps: int = 15,
    serial: str = "CAM-1",
    started_at: dt.datetime,
) -> ClipInfo:
    """Record a synthetic clip of `seconds` (pre-event included) to `path` as H.264/AAC MP4."""
    _check_clip_args(seconds, pre_event_seconds, width, height, fps)
    if started_at.tzinfo is None:
        started_at = started_at.replace(tzinfo=dt.UTC)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    font = find_font()
    if font is None:
        log.warning(
            "no TrueType font under %s: clip %s is made without the burnt-in clock "
            "(install fonts-dejavu-core)",
            FONT_ROOT,
            target.name,
        )
    command = _ffmpeg_command(
        partial,
        font=font,
        seconds=seconds,
        pre_event_seconds=pre_event_seconds,
        width=width,
        height=height,
        fps=fps,
        serial=serial,
        started_at=started_at,
    )
    try:
        _run_ffmpeg(command, timeout=max(60.0, seconds * 10))
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    size, digest = _size_and_sha256(target)
    probed = probe_clip(target)
    return ClipInfo(
        path=target,
        size=size,
        sha256=digest,
        duration=probed.duration if probed.duration is not None else float(seconds),
        started_at=started_at,
        stopped_at=started_at + dt.timedelta(seconds=seconds),
        pre_event_seconds=float(pre_event_seconds),
    )


def probe_clip(path: str | os.PathLike) -> ClipProbe:
    """Read duration and stream codecs from `ffmpeg -i` (ffprobe is not always available)."""
    result = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", os.fspath(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return _parse_ffmpeg_info(result.stderr)


def decode_errors(path: str | os.PathLike) -> str:
    """Decode every frame of `path`; ffmpeg's error output, or "" when it decodes cleanly."""
    result = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", os.fspath(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0 and not result.stderr.strip():
        return f"ffmpeg exited with status {result.returncode}"
    return result.stderr.strip()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a whole file, read in 1 MiB blocks."""
    return _size_and_sha256(Path(path))[1]


def _check_clip_args(seconds, pre_event_seconds, width, height, fps) -> None:
    if not seconds or seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds!r}")
    if pre_event_seconds < 0 or pre_event_seconds > seconds:
        raise ValueError(
            f"pre_event_seconds must be between 0 and seconds ({seconds}), "
            f"got {pre_event_seconds!r}"
        )
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"width and height must be positive and even, got {width}x{height}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")


def _ffmpeg_command(
    partial: Path,
    *,
    font: Path | None,
    seconds,
    pre_event_seconds,
    width,
    height,
    fps,
    serial,
    started_at: dt.datetime,
) -> list[str]:
    duration = f"{seconds:.3f}"
    command = [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={width}x{height}:rate={fps}:duration={duration}",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:sample_rate=48000:duration={duration}",
    ]
    if font is not None:
        overlay = _overlay_filter(font, serial, started_at, pre_event_seconds, height)
        command += ["-vf", overlay]
    command += [
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-profile:v",
        "main",
        "-g",
        str(fps * 2),
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        "-ac",
        "1",
        "-t",
        duration,
        "-movflags",
        "+faststart",
        "-f",
        "mp4",
        os.fspath(partial),
    ]
    return command


def _overlay_filter(
    font: Path, serial: str, started_at: dt.datetime, pre_event_seconds: float, height: int
) -> str:
    """The drawtext chain: serial + running wall clock, PRE-EVENT then REC labels."""
    offset = started_at.utcoffset() or dt.timedelta(0)
    shown_epoch = started_at.timestamp() + offset.total_seconds()
    zone = "UTC" if not offset else _format_offset(offset)
    clock = "%{pts:gmtime:" + f"{shown_epoch:.3f}" + ":%Y-%m-%d %H\\:%M\\:%S}"
    size = max(10, height // 18)
    margin = max(4, size // 2)
    common = {
        "fontfile": str(font),
        "fontsize": str(size),
        "box": "1",
        "boxcolor": "black@0.55",
        "boxborderw": str(max(2, size // 5)),
    }
    pre = f"{pre_event_seconds:.3f}"
    parts = [
        {
            **common,
            "text": f"{_drawtext_literal(serial)}  {clock} {zone}",
            "fontcolor": "white",
            "x": str(margin),
            "y": f"h-th-{margin}",
        },
        {
            **common,
            "text": "PRE-EVENT",
            "fontcolor": "yellow",
            "x": f"w-tw-{margin}",
            "y": str(margin),
            "enable": f"lt(t,{pre})",
        },
        {
            **common,
            "text": "REC",
            "fontcolor": "red",
            "x": f"w-tw-{margin}",
            "y": str(margin),
            "enable": f"gte(t,{pre})",
        },
    ]
    return ",".join(_escape(_drawtext(options), _FILTER_GRAPH) for options in parts)


def _drawtext(options: dict[str, str]) -> str:
    return "drawtext=" + ":".join(f"{k}={_escape(v, _FILTER_OPTION)}" for k, v in options.items())


def _drawtext_literal(text: str) -> str:
    """Text shown as is by drawtext (no %{...} expansion, no control characters)."""
    printable = "".join(ch if ch.isprintable() else "?" for ch in text)
    return _escape(printable, _DRAWTEXT_LITERAL)


def _escape(text: str, special: str) -> str:
    return "".join("\\" + ch if ch in special else ch for ch in text)


def _format_offset(offset: dt.timedelta) -> str:
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def _run_ffmpeg(command: list[str], *, timeout: float) -> None:
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"ffmpeg did not finish within {timeout:.0f} s") from exc
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-10:])
        raise RuntimeError(f"ffmpeg failed with status {result.returncode}: {tail}")


def _size_and_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM = re.compile(r"Stream #\S+.*?:\s*(Video|Audio):\s*([A-Za-z0-9_]+)")


def _parse_ffmpeg_info(stderr: str) -> ClipProbe:
    duration = None
    match = _DURATION.search(stderr)
    if match:
        hours, minutes, secs = match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(secs)
    video, audio = [], []
    for kind, codec in _STREAM.findall(stderr):
        (video if kind == "Video" else audio).append(codec)
    return ClipProbe(duration=duration, video_codecs=tuple(video), audio_codecs=tuple(audio))
