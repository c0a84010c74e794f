"""What the ingest bench compares the box with: a plain tus peer, plain disk writes, the vault.

The peer is tuspyserver on uvicorn (`bench/peer_server.py`), plain HTTP or HTTPS with the box's
own certificate; the disk rows write the same bytes with os.write(); the vault row feeds the
box's vault Writer in the bench process, without HTTP or TLS.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

from bench.common import HERE, MIB, Proc, free_port
from bench.tus import Pattern, wait_ready


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
        """Sizes of the uploaded files the peer holds, smallest first."""
        return sorted(
            p.stat().st_size
            for p in self.files_dir.iterdir()
            if p.is_file() and not p.name.endswith((".info", ".tmp"))
        )


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


def new_writer(folder: Path, size: int):
    """A vault Writer for `size` bytes in `folder` (a random key, no stanzas), and the path
    its `finish` should rename to. Uses edgebox.vault's public API."""
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
    name = uuid.uuid4().hex
    writer = vault.Writer.create(folder / f"{name}.partial", header, data_key)
    return writer, folder / f"{name}.ebv"


def vault_alone(folder: Path, pattern: Pattern, size: int, block: int) -> int:
    """The box's vault Writer fed directly (no HTTP, no TLS): encrypt + 2×SHA-256 + fsync per
    `block`, as one PATCH does."""
    writer, final = new_writer(folder, size)
    try:
        for offset in range(0, size, block):
            writer.write(pattern.chunk(offset, min(block, size - offset)))
            writer.sync()
        writer.finish(final)
    finally:
        writer.close()
    return size
