"""The box's ingest without its web server: the vault Writer fed straight from a TLS socket.

A separate process (`python -m bench.ingest_pipeline FOLDER CERT KEY`) accepts raw TLS
connections on loopback. Each one says how many bytes follow (8 bytes, big-endian), then sends
them; the server reads them into fresh 1 MiB buffers and hands each to `edgebox.vault.Writer`
(SHA-256 of the plaintext, AES-256-GCM per 1 MiB segment into O_DIRECT staging buffers, SHA-256
of the stored bytes), syncs every 8 MiB as the box does at the end of a PATCH, finishes the file
(fsync, rename), answers with the evidence hash and deletes the file before it closes.

What this row leaves out of the box is exactly HTTP, tus and the database, so it is the
throughput this design could reach on these cores with a perfect web server; the client
(`send`) is as lean as a client can be in Python: `sendall` of slices of the pattern, no copies.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
from pathlib import Path

if __name__ == "__main__" and str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MIB, Proc  # noqa: E402
from bench.ingest_peers import new_writer  # noqa: E402
from bench.tus import Pattern  # noqa: E402

SYNC_EVERY = 8 * MIB  # what one PATCH of the bench's main rows carries


def receive(tls: ssl.SSLSocket, folder: Path) -> tuple[str, Path]:
    """Take one upload from `tls` into a vault file in `folder`: its evidence SHA-256, the file."""
    size = int.from_bytes(_exactly(tls, 8), "big")
    writer, final = new_writer(folder, size)
    try:
        received = 0
        while received < size:
            block = bytearray(min(MIB, size - received))
            view, filled = memoryview(block), 0
            while filled < len(block):
                count = tls.recv_into(view[filled:])
                if not count:
                    raise ConnectionError(f"client left after {received + filled} of {size}")
                filled += count
            writer.write(block, handed_over=True)  # a fresh buffer per read, as in the box
            received += filled
            if received % SYNC_EVERY == 0 or received == size:
                writer.sync()
        writer.finish(final)
        return writer.plaintext_sha256(), final
    finally:
        writer.close()


def _exactly(tls: ssl.SSLSocket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        more = tls.recv(count - len(data))
        if not more:
            raise ConnectionError("client left")
        data += more
    return data


def serve(folder: Path, cert: str, key: str) -> None:
    """Serve uploads one connection at a time until killed; prints the port first."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
    while True:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            try:
                evidence, final = receive(tls, folder)
                tls.sendall(evidence.encode())
            except (OSError, ValueError) as exc:
                print(f"upload failed: {exc}", file=sys.stderr, flush=True)
            for path in folder.iterdir():  # before the goodbye, outside the client's timing
                path.unlink()


class PipelineServer:
    """The server process, started from the bench; `send` is its client."""

    def __init__(self, root: Path, cert: str, key: str):
        self.folder = root / "pipeline-files"
        self.folder.mkdir()
        self.cert = cert
        argv = [sys.executable, "-m", "bench.ingest_pipeline", str(self.folder), cert, key]
        self.proc = Proc("ingest pipeline", argv, root / "pipeline.log")
        self._tls: ssl.SSLSocket | None = None
        self.port = self._port()

    def _port(self) -> int:
        for _ in range(200):
            for line in self.proc.text().splitlines():
                if line.startswith("{"):
                    return json.loads(line)["port"]
            if not self.proc.alive():
                break
            time.sleep(0.05)
        raise RuntimeError(f"pipeline server did not start: {self.proc.tail()}")

    def send(self, pattern: Pattern, size: int, chunk: int) -> str:
        """Send `size` bytes of `pattern` in `chunk`-byte sendall calls; the server's hash.

        The connection stays open for `settle`, which waits until the server has deleted
        the file (outside the timed part)."""
        context = ssl.create_default_context(cafile=self.cert)
        context.check_hostname = False
        self._tls = context.wrap_socket(socket.create_connection(("127.0.0.1", self.port)))
        self._tls.sendall(size.to_bytes(8, "big"))
        for offset in range(0, size, chunk):
            self._tls.sendall(pattern.view(offset, min(chunk, size - offset)))
        return _exactly(self._tls, 64).decode()

    def settle(self) -> None:
        """Wait for the server's goodbye: its file is deleted, the next upload starts clean."""
        if self._tls is not None:
            with self._tls:
                self._tls.recv(1)
            self._tls = None


if __name__ == "__main__":
    serve(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
