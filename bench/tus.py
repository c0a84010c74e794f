"""Feeding a real box over tus: pseudo-footage, two tus clients, and the box itself.

`DemoBox` is a real box (`edgebox init --demo`, `edgebox run`, cameras paired and enrolled
through the API); `TusUploader` and `tuspy_upload` send it (or any tus 1.0.0 server) footage
from a `Pattern` without ever holding a whole upload in memory.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import time
from pathlib import Path
from urllib.parse import urljoin

import requests

from bench.common import MIB, Proc, edgebox_cmd, free_port, run_cli

TUS = "1.0.0"


# -- the footage ------------------------------------------------------------------------------


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
        self.max_chunk = max_chunk
        self._digests: dict[int, str] = {}

    def chunk(self, offset: int, size: int) -> bytes:
        """The `size` bytes at `offset` of the endless stream (size <= max_chunk)."""
        return self.view(offset, size).tobytes()

    def view(self, offset: int, size: int) -> memoryview:
        """`chunk(offset, size)` without the copy: a view into the pattern's buffer."""
        if size > self.max_chunk:
            raise ValueError(f"chunk {size} larger than the pattern's {self.max_chunk}")
        start = offset % self.BLOCK
        return memoryview(self._buf)[start : start + size]

    def sha256(self, size: int) -> str:
        """SHA-256 of the first `size` bytes (what the box must report as evidence hash)."""
        if size not in self._digests:
            digest = hashlib.sha256()
            for offset in range(0, size, self.max_chunk):
                digest.update(self.chunk(offset, min(self.max_chunk, size - offset)))
            self._digests[size] = digest.hexdigest()
        return self._digests[size]


class PatternStream:
    """A seekable read-only file over the first `size` bytes of a Pattern (for tuspy)."""

    def __init__(self, pattern: Pattern, size: int):
        self.pattern, self.size, self.pos = pattern, size, 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move to `offset` (clamped to the stream); the new position."""
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(0, min(self.size, base + offset))
        return self.pos

    def tell(self) -> int:
        """The current position."""
        return self.pos

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes from the current position (all that is left for n < 0)."""
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        out = bytearray()
        while len(out) < n:
            piece = self.pattern.chunk(self.pos, min(n - len(out), self.pattern.max_chunk))
            out += piece
            self.pos += len(piece)
        return bytes(out)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- the clients ------------------------------------------------------------------------------


def plain_session() -> requests.Session:
    """A requests.Session that ignores REQUESTS_CA_BUNDLE & co. (else they win over `verify`)."""
    session = requests.Session()
    session.trust_env = False
    return session


class TusUploader:
    """A minimal tus 1.0.0 client (creation + PATCH) on one requests.Session (keep-alive).

    Used unchanged for the box and the peer. `trust_env` is off so that a REQUESTS_CA_BUNDLE
    in the environment cannot override the pinned certificate (requests lets the environment
    win over `Session.verify`).
    """

    def __init__(self, create_url: str, verify, token: str | None, serial: str):
        self.create_url = create_url
        self.verify = verify
        self.session = plain_session()
        self.headers = {"Tus-Resumable": TUS}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.metadata = "serial " + base64.b64encode(serial.encode()).decode()

    def upload(self, pattern, size: int, chunk: int) -> dict:
        """Create an upload of `size` bytes and PATCH `pattern.chunk()`s of `chunk` bytes."""
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
        """Close the session's connections."""
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


# -- the servers ------------------------------------------------------------------------------


def wait_ready(proc: Proc, url: str, verify, timeout: float = 30.0) -> None:
    """Poll `OPTIONS url` until the server answers 204."""
    deadline = time.monotonic() + timeout
    session = plain_session()
    try:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
            with contextlib.suppress(requests.RequestException):
                response = session.options(
                    url, verify=verify, headers={"Tus-Resumable": TUS}, timeout=2
                )
                if response.status_code == 204:
                    return
            time.sleep(0.2)
    finally:
        session.close()
    raise RuntimeError(f"{proc.name} not ready after {timeout}s:\n{proc.tail()}")


class DemoBox:
    """A real box: `edgebox init --demo` in `root`, `edgebox run`, cameras paired and enrolled.

    `env` goes to every `edgebox` command (None: this process's environment); the server's
    output goes to `log_path`.
    """

    def __init__(self, root: Path, box_id: str, log_path: Path, env: dict | None = None):
        self.root, self.box_id, self.log_path, self.env = root, box_id, log_path, env
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.proc: Proc | None = None
        self.cameras: list[tuple[str, str]] = []  # (serial, token)

    def start(self, serials: list[str], name: str = "edgebox run", timeout: float = 30) -> None:
        """Initialise the box, serve it, wait until tus answers, enroll a camera per serial."""
        info = json.loads(
            run_cli(
                "init",
                str(self.root),
                "--demo",
                "--box-id",
                self.box_id,
                "--listen",
                f"127.0.0.1:{self.port}",
                "--json",
                env=self.env,
            )
        )
        self.config = info["config"]
        self.data_dir = Path(info["data_dir"])
        self.cert = str(self.data_dir / "keys" / "tls.crt")
        self.key = str(self.data_dir / "keys" / "tls.key")
        self.proc = Proc(
            name, [*edgebox_cmd(), "run", "--config", self.config], self.log_path, env=self.env
        )
        wait_ready(self.proc, f"{self.url}/tus/", self.cert, timeout)
        for serial in serials:
            self.cameras.append(self.enroll(serial))

    def enroll(self, serial: str) -> tuple[str, str]:
        """Pair a camera with the CLI and enroll it through the API: (serial, bearer token)."""
        out = run_cli(
            "cameras", "pair", "--config", self.config, "--json", timeout=60, env=self.env
        )
        session = plain_session()
        try:
            response = session.post(
                f"{self.url}/api/v1/cameras/enroll",
                verify=self.cert,
                json={"code": json.loads(out)["code"], "serial": serial, "model": "bench"},
            )
        finally:
            session.close()
        if response.status_code != 201:
            raise RuntimeError(f"enroll {serial}: {response.status_code} {response.text[:300]}")
        return serial, response.json()["token"]

    def stop(self) -> None:
        """Stop `edgebox run` (if it was started)."""
        if self.proc is not None:
            self.proc.stop()
