"""The limits the sync bench measures the box against, on the same bytes and machine.

`raw_paho`: the helper processes of `bench/sync_roles.py` publish and count the bytes through a
fresh Mosquitto's TLS listener; `store_alone`: central's per-segment work without MQTT.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import time
from pathlib import Path

from bench.common import HERE, Proc, cpu_self, proc_cpu
from bench.sync_roles import CHUNK, WINDOW
from tests.brokers import Mosquitto, TestPKI


def raw_paho(run: Path, pki: TestPKI, nbytes: int) -> tuple[float, dict[str, float]]:
    """Raw paho QoS 1, `nbytes` from publisher to counting subscriber: (seconds, CPU by role).

    RuntimeError if a helper does not report in time.
    """
    run.mkdir()
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, run, ignore_errors=True)
        os.sync()
        broker = Mosquitto(run / "broker", pki)
        broker.start()
        stack.callback(broker.stop)
        tls = ["--url", broker.url_tls_cert, "--ca", str(broker.ca_path)]
        pub_cert, pub_key = pki.client_cert("bench-raw-pub")
        sub_cert, sub_key = pki.client_cert("bench-raw-count")
        me = [sys.executable, str(HERE / "sync_roles.py")]
        counter = Proc(
            "raw counter",
            [*me, "_raw-count", *tls, "--cert", str(sub_cert), "--key", str(sub_key)]
            + ["--bytes", str(nbytes)],
            run / "counter.log",
        )
        stack.callback(counter.stop)
        counter.wait_event("ready", 30)
        publisher = Proc(
            "raw publisher",
            [*me, "_raw-pub", *tls, "--cert", str(pub_cert), "--key", str(pub_key)]
            + ["--bytes", str(nbytes), "--chunk", str(CHUNK), "--window", str(WINDOW)],
            run / "publisher.log",
        )
        stack.callback(publisher.stop)
        start = publisher.wait_event("start", 30)
        broker_cpu0 = proc_cpu(broker.pid)
        done = counter.wait_event("done", 300)
        broker_cpu = proc_cpu(broker.pid) - broker_cpu0
        acked = publisher.wait_event("acked", 60)
        ready = counter.wait_event("ready", 1)
    cpu = {
        "sender": acked["cpu"] - start["cpu"],
        "receiver": done["cpu"] - ready["cpu"],
        "broker": broker_cpu,
    }
    return done["t"] - start["t"], cpu


def store_alone(root: Path, box_id: str, nbytes: int) -> tuple[float, dict[str, float]]:
    """Central's per-segment work without MQTT: SHA-256 check, pwrite, present mark.

    (seconds, {"receiver": CPU seconds of this process}).
    """
    from edgebox.central.files import Transfer
    from edgebox.lowlevel import direct_io
    from edgebox.sync import protocol

    transfer = Transfer(root, box_id, "store-bench")
    transfer.create({"size": nbytes, "sha256": "0" * 64, "chunk": CHUNK})
    block = random.Random(3).randbytes(CHUNK + 8 * 4099)
    segments = []  # in buffers like those central's MQTT client reads payloads into
    for n in range(8):
        segments.append(direct_io.aligned(CHUNK))
        segments[-1][:] = block[n * 4099 : n * 4099 + CHUNK]
    os.sync()
    cpu0, start = cpu_self(), time.perf_counter()
    for n, offset in enumerate(range(0, nbytes, CHUNK)):
        data = segments[n % 8]
        if nbytes - offset < CHUNK:
            data = data[: nbytes - offset]
        protocol.sha256_hex(data)
        transfer.put(offset, data, CHUNK)
    seconds, cpu = time.perf_counter() - start, cpu_self() - cpu0
    shutil.rmtree(root, ignore_errors=True)
    return seconds, {"receiver": cpu}
