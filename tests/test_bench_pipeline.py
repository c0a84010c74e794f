"""The ingest bench's web-server-less pipeline: a real server process, real TLS, real vault."""

from __future__ import annotations

import hashlib
import socket
import ssl

import pytest

from bench.common import MIB
from bench.ingest_pipeline import PipelineServer
from bench.tus import Pattern


@pytest.fixture
def pipeline(tmp_path, box):
    server = PipelineServer(tmp_path, str(box.keys.tls_cert), str(box.keys.tls_key))
    yield server
    server.proc.stop()


def test_evidence_hash_is_that_of_the_bytes_sent_and_the_file_goes(pipeline):
    pattern = Pattern(8 * MIB)
    for size in (20 * MIB + 12345, 3 * MIB):  # a partial last segment, then whole ones
        evidence = pipeline.send(pattern, size, 8 * MIB)
        pipeline.settle()
        assert evidence == hashlib.sha256(pattern_bytes(pattern, size)).hexdigest()
        assert list(pipeline.folder.iterdir()) == []


def test_a_client_that_leaves_early_is_reported_and_changes_nothing(pipeline):
    context = ssl.create_default_context(cafile=pipeline.cert)
    context.check_hostname = False
    with context.wrap_socket(socket.create_connection(("127.0.0.1", pipeline.port))) as tls:
        tls.sendall((4 * MIB).to_bytes(8, "big") + b"x" * MIB)
    pattern = Pattern(8 * MIB)
    evidence = pipeline.send(pattern, 2 * MIB, MIB)  # served after the failed one
    pipeline.settle()
    assert evidence == hashlib.sha256(pattern_bytes(pattern, 2 * MIB)).hexdigest()
    assert "upload failed: client left after" in pipeline.proc.text()
    assert list(pipeline.folder.iterdir()) == []


def pattern_bytes(pattern: Pattern, size: int) -> bytes:
    """The first `size` bytes of the pattern, chunk by chunk."""
    step = pattern.max_chunk
    return b"".join(pattern.chunk(at, min(step, size - at)) for at in range(0, size, step))
