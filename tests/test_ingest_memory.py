"""Bounded memory: a large upload streams through the box without growing the process."""

from __future__ import annotations

import hashlib
import json

from tests.conftest import enroll, run_cli

MIB = 1 << 20


def vm(pid: int, field: str) -> int:
    """A memory figure of a process in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def test_large_upload_does_not_grow_the_box(box_process):
    code = json.loads(run_cli("cameras", "pair", "--json", config=box_process.config).stdout)[
        "code"
    ]
    camera = enroll(box_process.url, box_process.cert, code)
    block = hashlib.sha256(b"seed").digest() * (MIB // 32)  # 1 MiB of bytes that are not zeros
    total = 768 * MIB
    chunk = 32 * MIB

    def body(size: int):
        for _ in range(size // MIB):
            yield block

    warm = camera.create(64 * MIB).headers["Location"]  # first upload warms caches and threads
    camera.patch(warm, 0, b"".join(body(64 * MIB)))
    pid = box_process.proc.pid
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM: start-up peaks (imports, first requests) do not count
    baseline = vm(pid, "VmRSS")
    location = camera.create(total).headers["Location"]
    digest = hashlib.sha256()
    offset = 0
    while offset < total:
        # A generator body goes out chunked, so the client never holds a chunk either.
        response = camera.session.patch(
            box_process.url + location,
            data=body(chunk),
            headers=camera.headers(
                Upload_Offset=str(offset), Content_Type="application/offset+octet-stream"
            ),
        )
        assert response.status_code == 204, response.text
        offset = int(response.headers["Upload-Offset"])
    for _ in range(total // MIB):
        digest.update(block)
    assert response.headers["EdgeBox-Evidence-Sha256"] == digest.hexdigest()
    peak = vm(pid, "VmHWM")
    # The whole 768 MiB passed through; the process may grow by a few segment buffers only.
    assert peak - baseline < 24 * 1024, f"grew from {baseline} KiB to a peak of {peak} KiB"
