"""The CPU floor of encrypted ingest on this machine: what the unavoidable steps cost per GiB.

Whatever the server, taking footage the way the box must (over TLS, SHA-256 of the plaintext
for the evidence hash, AES-256-GCM, SHA-256 of the stored file for custody) costs at least the
sum of those primitives; the sending client pays at least its TLS encryption. Measured here in
the bench process with the same libraries the box uses (OpenSSL through `ssl`, `hashlib`,
`cryptography`), each step's CPU time by itself, so the ingest figures can be compared with the
best that any implementation could do on these cores.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.common import GIB, MIB

BLOCK = MIB


@dataclass
class Floor:
    """CPU seconds per GiB of each unavoidable step, and the throughput ceiling they imply."""

    sha256: float
    aes_gcm: float
    tls_receive: float
    tls_send: float

    @property
    def box(self) -> float:
        """Server side: TLS receive, two SHA-256 passes (plaintext and stored file), AES-GCM."""
        return self.tls_receive + 2 * self.sha256 + self.aes_gcm

    @property
    def total(self) -> float:
        """Box and client together, as in the bench where both share the machine."""
        return self.box + self.tls_send

    def ceiling_mb_s(self, cores: int) -> float:
        """MB/s if every core did nothing but these steps (box and client on the same cores)."""
        return cores / self.total * GIB / 1e6


def _per_gib(seconds: float, size: int) -> float:
    return seconds * GIB / size


def sha256_cost(size: int) -> float:
    """CPU s/GiB of hashlib.sha256 over 1 MiB blocks."""
    block = os.urandom(BLOCK)
    digest = hashlib.sha256()
    start = time.thread_time()
    for _ in range(size // BLOCK):
        digest.update(block)
    return _per_gib(time.thread_time() - start, size)


def aes_gcm_cost(size: int) -> float:
    """CPU s/GiB of AES-256-GCM sealing 1 MiB segments (the vault's segment size)."""
    block = os.urandom(BLOCK)
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    start = time.thread_time()
    for index in range(size // BLOCK):
        aead.encrypt(index.to_bytes(12, "big"), block, b"aad")
    return _per_gib(time.thread_time() - start, size)


def tls_costs(size: int, cert: Path, key: Path) -> tuple[float, float]:
    """CPU s/GiB of receiving and of sending `size` bytes over loopback TLS (1 MiB writes,
    readinto one reused buffer): each side's own thread CPU time."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client_ctx.check_hostname = False
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    costs = {}

    def send():
        with client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) as tls:
            block = os.urandom(BLOCK)
            start = time.thread_time()
            for _ in range(size // BLOCK):
                tls.sendall(block)
            costs["send"] = _per_gib(time.thread_time() - start, size)
            tls.recv(1)  # wait for the receiver's goodbye so no byte is lost to a reset

    sender = threading.Thread(target=send)
    sender.start()
    conn, _ = listener.accept()
    with server_ctx.wrap_socket(conn, server_side=True) as tls:
        buffer = memoryview(bytearray(BLOCK))
        got, start = 0, time.thread_time()
        while got < size:
            count = tls.recv_into(buffer)
            if not count:
                break
            got += count
        costs["receive"] = _per_gib(time.thread_time() - start, got)
        tls.sendall(b"x")
    sender.join()
    listener.close()
    return costs["receive"], costs["send"]


def measure(cert: Path, key: Path, size: int = 256 * MIB, reps: int = 3) -> Floor:
    """The floor: the lowest of `reps` measurements of each step (the least disturbed)."""
    tls = [tls_costs(size, cert, key) for _ in range(reps)]
    return Floor(
        sha256=min(sha256_cost(size) for _ in range(reps)),
        aes_gcm=min(aes_gcm_cost(size) for _ in range(reps)),
        tls_receive=min(r for r, _ in tls),
        tls_send=min(s for _, s in tls),
    )
