"""The sync bench's setting: a box filled offline, then per run broker + central + a box copy.

`fill_box` makes the backlog once (a real box over tus, stopped); `Wiring` starts a fresh
Mosquitto (`tests/brokers.py`), one `edgebox central run` and a copy of the filled box pointed
at them, and reads both ends' progress from their SQLite files and central's store.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sqlite3
import time
from pathlib import Path

from bench.common import MIB, Proc, clean_env, edgebox_cmd, free_port
from bench.tus import DemoBox, TusUploader
from edgebox.central.files import segments_present
from tests.brokers import Mosquitto

BOX_ID = "bench-sync"


def read_db(path: Path, sql: str, params: tuple = ()) -> list[dict]:
    """Rows from an SQLite file, read only (a running box or central may be writing it)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql, params)]
    finally:
        db.close()


# -- the box's backlog ------------------------------------------------------------------------


class Recording:
    """The bytes of recording `n`: slices of one seeded random block, shifted per PATCH."""

    def __init__(self, n: int, patch: int):
        self.patch = patch
        self.block = random.Random(n).randbytes(patch + 4099)

    def chunk(self, offset: int, size: int) -> bytes:
        """The `size` bytes at `offset` (a multiple of the PATCH size)."""
        start = (offset // self.patch) % 4099
        return self.block[start : start + size]


def fill_box(root: Path, recordings: int, size: int) -> dict:
    """`edgebox init --demo`, run it offline, upload `recordings` x `size` bytes over tus, stop."""
    box = DemoBox(root, BOX_ID, root.parent / "fill-box.log", env=clean_env())
    try:
        box.start(["BENCH-SYNC-CAM"], name="edgebox run (offline)", timeout=60)
        serial, token = box.cameras[0]
        client = TusUploader(f"{box.url}/tus/", box.cert, token, serial)
        patch = 8 * MIB
        try:
            for n in range(recordings):
                client.upload(Recording(n, patch), size, patch)
        finally:
            client.close()
    finally:
        box.stop()
    rows = read_db(box.data_dir / "box.db", "SELECT * FROM recordings")
    if len(rows) != recordings or any(r["sync_state"] != "pending" for r in rows):
        raise RuntimeError(f"unexpected recordings after fill: {rows}")
    return {
        "config": box.config,
        "stored_bytes": sum(r["stored_size"] for r in rows),
        "plain_bytes": sum(r["size"] for r in rows),
        "recordings": len(rows),
    }


# -- one run --------------------------------------------------------------------------------------


class Wiring:
    """Broker + central + a copy of the filled box for one run; everything stopped on exit."""

    def __init__(self, bench, name: str, workers: int = 1):
        self.bench, self.name = bench, name
        self.dir = bench.tmp / name
        self.dir.mkdir()
        self.stack = contextlib.ExitStack()
        self.stack.callback(shutil.rmtree, self.dir, ignore_errors=True)
        self.box: Proc | None = None
        try:
            self._start(workers)
        except BaseException:
            self.stack.close()
            raise

    def _start(self, workers: int) -> None:
        bench = self.bench
        self.broker = Mosquitto(self.dir / "broker", bench.pki)
        self.broker.start()
        self.stack.callback(self.broker.stop)
        self.store = self.dir / "central"
        self.transfers = self.store / "transfers" / BOX_ID
        cert, key = bench.pki.client_cert("central")
        self.central = Proc(
            "edgebox central run",
            [
                *edgebox_cmd(),
                "central",
                "run",
                "--broker",
                self.broker.url_tls_cert,
                "--store",
                str(self.store),
                "--workers",
                str(workers),
                "--ca",
                str(self.broker.ca_path),
                "--cert",
                str(cert),
                "--key",
                str(key),
            ],
            self.dir / "central.log",
            env=clean_env(),
        )
        self.stack.callback(self.central.stop)
        self.broker.wait_for_log("as edgebox-central-", count=workers, timeout=30)
        time.sleep(0.3)  # it subscribes in on_connect, right after the CONNACK
        self.box_dir = self.dir / "box"
        shutil.copytree(bench.source_box, self.box_dir)
        os.sync()  # the copy's dirty pages must not flush into the timed run
        self.box_db = self.box_dir / "data" / "box.db"

    def start_box(self) -> Proc:
        """Start the copy of the box, its upstream pointed at this run's broker."""
        cert, key = self.bench.pki.client_cert(BOX_ID)
        env = clean_env(
            EDGEBOX_UPSTREAM__BROKER=self.broker.url_tls_cert,
            EDGEBOX_UPSTREAM__CA=str(self.broker.ca_path),
            EDGEBOX_UPSTREAM__CLIENT_CERT=str(cert),
            EDGEBOX_UPSTREAM__CLIENT_KEY=str(key),
        )
        self.box = Proc(
            "edgebox run",
            [
                *edgebox_cmd(),
                "run",
                "--config",
                str(self.box_dir / "edgebox.toml"),
                "--listen",
                f"127.0.0.1:{free_port()}",
            ],
            self.dir / "box.log",
            env=env,
        )
        self.stack.callback(self.box.stop)
        return self.box

    def synced(self) -> tuple[int, int]:
        """(recordings synced, recordings rejected) in the box's database."""
        rows = read_db(
            self.box_db,
            "SELECT sync_state, COUNT(*) AS n FROM recordings GROUP BY sync_state",
        )
        states = {r["sync_state"]: r["n"] for r in rows}
        return states.get("synced", 0), states.get("rejected", 0)

    def central_progress(self) -> tuple[int, int]:
        """(recordings complete, segments present of transfers under way) at central."""
        done = self.store / "boxes" / BOX_ID / "recordings"
        complete = len(list(done.glob("*.ebv"))) if done.exists() else 0
        return complete, len(segments_present(self.store))

    def evidence(self) -> str:
        """What the box and central say, for a stall or failure report."""
        parts = []
        with contextlib.suppress(Exception):
            parts.append(
                "box recordings: "
                + json.dumps(
                    read_db(
                        self.box_db,
                        "SELECT id, sync_state, stored_size, sealed FROM recordings",
                    )
                )
            )
            parts.append(
                "box sync_state: "
                + json.dumps(read_db(self.box_db, "SELECT key, value, updated_at FROM sync_state"))
            )
        parts.append(f"central: complete, markers = {self.central_progress()}")
        with contextlib.suppress(Exception):
            parts.append(
                "central rejections: "
                + json.dumps(
                    read_db(self.store / "central.db", "SELECT * FROM rejections LIMIT 20")
                )
            )
        if self.box:
            parts.append("box log tail:\n" + self.box.tail(40))
        parts.append("central log tail:\n" + self.central.tail(40))
        parts.append("broker log tail:\n" + self.broker.log_tail(30))
        return "\n".join(parts)

    def check_central(self) -> str | None:
        """None if central's index holds every recording with the expected total size."""
        rows = read_db(self.store / "central.db", "SELECT size FROM recordings")
        total = sum(r["size"] for r in rows)
        if len(rows) != self.bench.fill["recordings"] or total != self.bench.fill["stored_bytes"]:
            return f"central holds {len(rows)} recordings, {total} bytes"
        return None

    def close(self) -> None:
        """Stop box, central and broker; remove the run's folder."""
        self.stack.close()
