"""A box's worth of recordings for the web benchmark, written straight into its database.

Each recording is what a camera of the box would have handed over: its tus metadata comes
from the camera simulator's own `clip_metadata` and is parsed by the box's own
`parse_recording_metadata`; the upload and recording rows then carry the columns
`edgebox.ingest.uploads` writes, and the tags crews add later (incident, notes, category
fixes), sync states as the uplink leaves them (synced copies sealed) and a few legal holds.
About one in twenty-five recordings has a compliance gap (no warned/exemption answer) and
about one in thirty a pre-event shorter than required. No vault files are written: rows only.

Everything is drawn from a seeded `random.Random`, so a given seed and count give the same
recordings (ids and hashes included) on every run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

from edgebox.camera.metadata import clip_metadata
from edgebox.camera.tus import encode_tus_metadata
from edgebox.clock import iso, utcnow
from edgebox.db import connect
from edgebox.ingest.metadata import parse_recording_metadata

CATEGORIES = {
    "traffic": 30,
    "medical": 22,
    "public-order": 14,
    "domestic": 10,
    "assault": 8,
    "theft": 6,
    "fire": 5,
    "unclassified": 5,
}
SPAN_DAYS = 28  # inside retention's 30-day floor: no sweep touches the fixture during a run
WEARERS_PER_CAMERA = 5
SEGMENT = 1 << 20  # the vault's default segment: 16 bytes of tag each, plus a header
HEADER_BYTES = 1536


def _hex(rng: random.Random) -> str:
    return rng.randbytes(32).hex()


def _sync_state(rng: random.Random, age_hours: float) -> str:
    """Old footage is at central; the last hours wait in the backlog; a few went wrong."""
    if age_hours < 6:
        return rng.choices(["pending", "sending", "synced"], [6, 1, 3])[0]
    roll = rng.random()
    if roll < 0.004:
        return "rejected"
    if roll < 0.006:
        return "damaged"
    return "synced"


def _given(rng: random.Random, camera: int) -> dict:
    """The camera-side fields: wearer, category and the warned/exemption answer (or none)."""
    given = {
        "user_id": f"FF-{1000 + camera * WEARERS_PER_CAMERA + rng.randrange(WEARERS_PER_CAMERA)}",
        "category": rng.choices(list(CATEGORIES), list(CATEGORIES.values()))[0],
        "trigger_on": rng.choice(["button", "button", "holster", "siren"]),
    }
    roll = rng.random()
    if roll < 0.04:
        given["warned"] = None  # a compliance gap: neither warned nor an exemption
    elif roll < 0.10:
        given["exemption"] = rng.choice(
            ["subject unconscious", "imminent danger", "covert situation"]
        )
    return given


def recordings(
    devices: list[dict], count: int, seed: int = 4, now: dt.datetime | None = None
) -> Iterator[tuple[dict, dict]]:
    """`count` (upload row, recording row) pairs spread over the last SPAN_DAYS, oldest first.

    `devices` are rows of the box's `devices` table. Received times are strictly increasing
    (the newest is a minute before `now`), so "newest first" is one well-defined order.
    """
    rng = random.Random(seed)
    random.seed(seed)  # clip_metadata's GPS jitter uses the module's generator
    now = now or utcnow()
    first = now - dt.timedelta(days=SPAN_DAYS)
    step = (now - first - dt.timedelta(minutes=1)) / count
    incident, incident_left = 0, 0
    for n in range(count):
        received = first + step * n + dt.timedelta(microseconds=rng.randrange(1000))
        camera = rng.randrange(len(devices))
        device = devices[camera]
        seconds = rng.uniform(40, 900)
        stopped = received - dt.timedelta(minutes=rng.uniform(2, 240))
        started = stopped - dt.timedelta(seconds=seconds)
        pre = rng.choice([30.0] * 28 + [10.0, 0.0])
        recording_id = uuid.UUID(int=rng.getrandbits(128), version=4).hex
        given = _given(rng, camera)
        metadata = clip_metadata(
            device["serial"],
            f"{started:%Y%m%d-%H%M%S}-{device['serial']}.mp4",
            _hex(rng),
            started,
            stopped,
            pre,
            given,
        )
        columns, raw = parse_recording_metadata(encode_tus_metadata(metadata), device["serial"])
        size = int(seconds * rng.uniform(0.6e6, 1.2e6))
        age_hours = (now - received).total_seconds() / 3600
        state = _sync_state(rng, age_hours)
        upload_id = hashlib.sha256(recording_id.encode()).hexdigest()[:24]
        tags: dict = {}
        if rng.random() < 0.3:  # a crew tagged it with an incident number (shared by a few)
            if incident_left == 0:
                incident, incident_left = incident + 1, rng.randint(1, 4)
            incident_left -= 1
            tags = {"incident": f"INC-2026-{incident:06d}", "notes": "tagged at the station"}
        created, finished = iso(received - dt.timedelta(seconds=seconds / 8)), iso(received)
        upload = {
            "id": upload_id,
            "device_id": device["id"],
            "recording_id": recording_id,
            "length": size,
            "metadata": json.dumps({"columns": columns, "raw": raw}),
            "state": "finished",
            "created_at": created,
            "updated_at": finished,
            "expires_at": iso(received + dt.timedelta(hours=24)),
        }
        recording = {
            "id": recording_id,
            "upload_id": upload_id,
            "device_id": device["id"],
            **columns,
            "evidence_sha256": _hex(rng),
            "stored_sha256": _hex(rng),
            "size": size,
            "stored_size": size + HEADER_BYTES + 16 * (size // SEGMENT + 1),
            "vault_file": f"{recording_id}.ebv",
            "metadata": json.dumps(raw, sort_keys=True),
            "received_at": finished,
            **tags,
            "legal_hold": int(rng.random() < 0.005),
            "sync_state": state,
            "sealed": int(state == "synced"),
        }
        yield upload, recording


def fill(db_path: Path, count: int, seed: int = 4, batch: int = 5000) -> dict:
    """Add `count` recordings for the cameras paired in the box at `db_path`; a summary.

    Writes in one transaction on a connection set up like the box's own (WAL, foreign
    keys, busy timeout), so the running box sees all of them or none.
    """
    db = connect(db_path)
    try:
        devices = [
            dict(r) for r in db.conn.execute("SELECT id, serial FROM devices ORDER BY serial")
        ]
        if not devices:
            raise RuntimeError("the box has no paired cameras to own the recordings")
        pairs = recordings(devices, count, seed)
        db.conn.execute("BEGIN IMMEDIATE")
        try:
            while chunk := list(itertools.islice(pairs, batch)):
                db["uploads"].insert_all([u for u, _ in chunk], batch_size=batch)
                db["recordings"].insert_all([r for _, r in chunk], batch_size=batch)
        except BaseException:
            db.conn.execute("ROLLBACK")
            raise
        db.conn.execute("COMMIT")
        return {
            "recordings": db.conn.execute("SELECT COUNT(*) FROM recordings").fetchone()[0],
            "cameras": len(devices),
        }
    finally:
        db.close()
