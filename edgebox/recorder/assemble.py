"""Turning an event's spooled MPEG-TS into one playable MP4 on the box's one ingest road.

ffmpeg remuxes (`-c copy`) from its standard input to fragmented MP4 on its standard
output; the MP4 goes into a second encrypted spool while its size and SHA-256 are counted
(the vault header needs the size before the first byte). Then the recording is handed to
the same upload service the tus endpoint uses (`Uploads.create` and `Uploads.append`), as
its camera's device: vault, catalogue, custody, outbox and retention treat it like any
camera's upload, and the SHA-256 counted here is checked against the vault's own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import threading
from collections import deque
from pathlib import Path

from edgebox.clips import quiet_ffmpeg
from edgebox.errors import EdgeboxError
from edgebox.recorder.spool import Spool

READ_BLOCK = 1 << 20


def remux_command(binary: str | None = None) -> list[str]:
    """ffmpeg: MPEG-TS on standard input to fragmented MP4 on standard output, streams copied."""
    return [
        *quiet_ffmpeg(binary),
        "-f",
        "mpegts",
        "-i",
        "pipe:0",
        "-map",
        "0",
        "-c",
        "copy",
        "-f",
        "mp4",
        "-movflags",
        "frag_keyframe+empty_moov+default_base_moof",
        "pipe:1",
    ]


def remux(source: Spool, target: Spool) -> tuple[int, str]:
    """Remux every record of `source` into `target`; returns (MP4 size, its SHA-256)."""
    proc = subprocess.Popen(
        remux_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    errors: deque[bytes] = deque(maxlen=20)
    failure: list[BaseException] = []

    def feed() -> None:
        try:
            for record in source.read():
                proc.stdin.write(record)
        except BrokenPipeError:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            failure.append(exc)
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass

    feeder = threading.Thread(target=feed, name="remux-feed", daemon=True)
    drain = threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)
    feeder.start()
    drain.start()
    digest = hashlib.sha256()
    size = 0
    while block := proc.stdout.read(READ_BLOCK):
        target.append(block)
        digest.update(block)
        size += len(block)
    proc.wait()
    feeder.join()
    drain.join()
    proc.stdout.close()
    proc.stderr.close()
    target.sync()
    if failure:
        raise failure[0]
    if proc.returncode != 0 or size == 0:
        text = b" ".join(errors).decode("utf-8", "replace").strip()
        raise EdgeboxError(f"remux to MP4 failed ({proc.returncode}): {text or 'no output'}")
    return size, digest.hexdigest()


class SpoolReader:
    """A read(n) stream over a spool's records, for the upload service."""

    def __init__(self, spool: Spool):
        self._records = spool.read()
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all that is left for -1)."""
        while size < 0 or len(self._buffer) < size:
            record = next(self._records, None)
            if record is None:
                break
            self._buffer += record
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def tus_metadata(values: dict) -> str:
    """`Upload-Metadata` text for these values (None ones left out)."""
    return ",".join(
        f"{key} {base64.b64encode(str(value).encode()).decode()}"
        for key, value in values.items()
        if value is not None
    )


def ingest(uploads, device: dict, mp4: Spool, size: int, metadata: dict) -> str:
    """Hand the MP4 to the upload service as `device`; returns the new recording's id."""
    progress = uploads.create(device, str(size), tus_metadata(metadata))
    if not progress.finished:
        progress = uploads.append(progress.upload_id, device, "0", size, SpoolReader(mp4))
    if not progress.finished:
        raise EdgeboxError(f"recording stopped at {progress.offset} of {size} bytes")
    return progress.recording_id


def spool_paths(folder: Path, event_id: str) -> tuple[Path, Path]:
    """Where an event's TS spool and its MP4 spool live."""
    return folder / f"{event_id}.ts.spool", folder / f"{event_id}.mp4.spool"


def json_text(value) -> str:
    """Compact JSON for a metadata value."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
