"""Posters and thumbnail strips of recordings, made on demand from the encrypted footage.

The vault reader decrypts the recording segment by segment into ffmpeg's stdin; ffmpeg writes
one JPEG to its stdout. Nothing is written to disk: the pictures live in a bounded in-memory
LRU cache, dropped first when it is full and gone when the process ends.

ffmpeg reads the pipe front to back, so the MP4 must carry its index (moov) before the media
(`-movflags +faststart`, as the cameras the box pairs write); for a file that does not, no
picture is made and the page says so.
"""

from __future__ import annotations

import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable

from edgebox.clips import quiet_ffmpeg
from edgebox.errors import N_, EdgeboxError

POSTER_WIDTH = 480
STRIP_COLUMNS, STRIP_ROWS = 4, 2
STRIP_TILES = STRIP_COLUMNS * STRIP_ROWS
STRIP_TILE_WIDTH = 240
_KEYFRAMES_ONLY_AFTER = 20  # seconds: longer recordings are sampled on key frames only
_TIMEOUT = 120


class NoPicture(EdgeboxError):
    """ffmpeg could not make a picture of this recording."""

    status = 422


class PictureCache:
    """A bounded LRU of JPEG bytes by key, in memory only; `make` runs outside the lock, at
    most `workers` at a time, so a list page of posters cannot start fifty ffmpegs."""

    def __init__(self, max_bytes: int, workers: int = 2):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._workers = threading.BoundedSemaphore(workers)

    def get(self, key: tuple, make: Callable[[], bytes]) -> bytes:
        """The cached picture of `key`, made by `make()` if it is not held."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        with self._workers:
            picture = make()
        with self._lock:
            if key not in self._items and len(picture) <= self.max_bytes:
                self._items[key] = picture
                self._bytes += len(picture)
                while self._bytes > self.max_bytes:
                    _, dropped = self._items.popitem(last=False)
                    self._bytes -= len(dropped)
        return picture

    def held(self) -> int:
        """Bytes held now."""
        with self._lock:
            return self._bytes


def poster(reader, at_seconds: float) -> bytes:
    """A JPEG of the first key frame at or after `at_seconds` (the trigger), else the first."""
    for at in (max(0.0, at_seconds), 0.0):
        picture = _ffmpeg_picture(
            reader,
            ["-skip_frame", "nokey"],
            f"select='gte(t\\,{at:.3f})',scale={POSTER_WIDTH}:-2",
        )
        if picture:
            return picture
    raise NoPicture(N_("no picture could be made of this recording"))


def strip(reader, duration: float | None) -> bytes:
    """One JPEG of STRIP_TILES frames spread evenly along the recording, in a grid of
    STRIP_COLUMNS x STRIP_ROWS read left to right, top to bottom (fits a phone and a desk)."""
    span = max(1.0, duration or 0.0) / STRIP_TILES
    skip = ["-skip_frame", "nokey"] if (duration or 0) > _KEYFRAMES_ONLY_AFTER else []
    picture = _ffmpeg_picture(
        reader,
        skip,
        f"select='isnan(prev_selected_t)+gte(t-prev_selected_t\\,{span:.3f})',"
        f"scale={STRIP_TILE_WIDTH}:-2,tile={STRIP_COLUMNS}x{STRIP_ROWS}",
    )
    if not picture:
        raise NoPicture(N_("no picture could be made of this recording"))
    return picture


def _ffmpeg_picture(reader, input_args: list[str], video_filter: str) -> bytes:
    """Run ffmpeg on the decrypted stream (stdin) and return the one JPEG it writes (stdout)."""
    command = [
        *quiet_ffmpeg(), *input_args,
        "-i", "pipe:0", "-map", "0:v:0", "-an", "-vf", video_filter, "-frames:v", "1",
        "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", "5", "pipe:1",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    feeder = threading.Thread(target=_feed, args=(reader, process.stdin), daemon=True)
    feeder.start()
    timer = threading.Timer(_TIMEOUT, process.kill)
    timer.start()
    try:
        picture = process.stdout.read()
        process.wait()
    finally:
        timer.cancel()
        process.stdout.close()
        feeder.join(timeout=5)
    return picture if process.returncode == 0 and picture.startswith(b"\xff\xd8") else b""


def _feed(reader, pipe) -> None:
    """Write the plaintext into ffmpeg until it has read enough (it may close early)."""
    try:
        for piece in reader.read_range(0, reader.header.plaintext_size):
            pipe.write(piece)
    except (BrokenPipeError, OSError, ValueError):
        pass  # ffmpeg had its frame and closed the pipe
    finally:
        try:
            pipe.close()
        except OSError:
            pass
