"""Where the running box serves: `<data>/serving.json`, written when its web server starts and
removed when it stops, so commands run beside it (`edgebox cameras pair`) print the URL the
box really answers on (e.g. after `edgebox run --listen` on another port)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgebox.lowlevel.durable import atomic_write

FILE_NAME = "serving.json"


def record(data_dir: Path, url: str) -> None:
    """Note that this process serves the box at `url`."""
    body = json.dumps({"url": url, "pid": os.getpid()}).encode()
    atomic_write(Path(data_dir) / FILE_NAME, body)


def clear(data_dir: Path) -> None:
    """Forget the note of this process (at stop); another process's note is left alone."""
    path = Path(data_dir) / FILE_NAME
    if (_read(path) or {}).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def running_url(data_dir: Path) -> str | None:
    """The URL of the box process serving this data folder, or None when none runs (a note
    left by a process that died, e.g. by kill -9, is ignored)."""
    note = _read(Path(data_dir) / FILE_NAME)
    if not note or not _alive(note.get("pid")):
        return None
    return note.get("url")


def _read(path: Path) -> dict | None:
    try:
        note = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
