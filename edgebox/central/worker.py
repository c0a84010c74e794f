"""`edgebox central run`: N receiver workers in one MQTT shared subscription."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from edgebox.central.blobs import open_store
from edgebox.central.index import open_index
from edgebox.central.lanes import Lanes
from edgebox.central.receiver import Receiver
from edgebox.lowlevel import allocator
from edgebox.sync import protocol
from edgebox.sync.link import Link, LinkSettings

log = logging.getLogger(__name__)
RELEASE_EVERY = 60.0  # seconds between hand-backs of the heaps' free memory, as on the box


class CentralWorker:
    """One shared-subscription member: its own MQTT client and store connection, a few
    threads (`Lanes`) for the costly part of each file message and one for metadata (its
    database commits, in arrival order), so paho's network thread keeps reading."""

    def __init__(
        self, work: Path, settings: LinkSettings, store: str | None = None, index: str = "sqlite"
    ):
        """`work` holds transfers under way (and by default everything); `store` names the
        blob store (`open_store`), `index` the index (`open_index`)."""
        blobs = open_store(store) if store is not None else None
        self.receiver = Receiver(work, self._publish, blobs, open_index(index, Path(work)))
        name = settings.client_id or "central"
        self.lanes = Lanes(name)
        self.in_order = Lanes(f"{name}-meta", threads=1)  # custody is applied in sequence
        self.link = Link(settings, self._message)

    def _message(self, topic: str, payload: bytes) -> None:
        self.receiver.handle(topic, payload, self.lanes.submit, self.in_order.submit)

    def _publish(self, topic: str, payload: bytes) -> None:
        self.link.client.publish(topic, payload, qos=1)

    def start(self) -> CentralWorker:
        """Connect and subscribe."""
        self.link.start()
        return self

    def stop(self) -> None:
        """Disconnect, finish the queued work and close the index."""
        self.link.stop()
        self.lanes.stop()
        self.in_order.stop()
        self.receiver.index.close()


def central_settings(
    broker: str,
    *,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    username: str = "",
    password: str = "",
) -> LinkSettings:
    """Link settings for a central worker (clean session, so a dead worker's share moves on)."""
    return LinkSettings(
        box_id="central",
        broker=broker,
        username=username,
        password=password,
        ca=ca,
        client_cert=cert,
        client_key=key,
        session_expiry_seconds=0,
        subscriptions=protocol.central_subscriptions(),
    )


def start_workers(
    work: Path,
    settings: LinkSettings,
    count: int,
    store: str | None = None,
    index: str = "sqlite",
) -> list[CentralWorker]:
    """Start `count` workers with unique client ids (on the work folder, blob store and
    index given; by default all in the work folder)."""
    Path(work).mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:8]
    return [
        CentralWorker(
            work, replace(settings, client_id=f"edgebox-central-{run}-{n}"), store, index
        ).start()
        for n in range(count)
    ]


def run_until(
    stop: threading.Event, workers: list[CentralWorker], release_every: float = RELEASE_EVERY
) -> None:
    """Serve until `stop` is set, then stop every worker. Every `release_every` seconds the
    free memory inside the heaps goes back to the kernel (`edgebox.lowlevel.allocator`): the
    workers' MiB-sized segment buffers leave holes that would otherwise stay resident."""
    next_release = time.monotonic() + release_every
    try:
        while not stop.wait(0.5):
            if time.monotonic() < next_release:
                continue
            next_release = time.monotonic() + release_every
            try:
                figures = allocator.release()
            except Exception:  # noqa: BLE001 - serving matters more than a hand-back
                log.exception("could not hand free memory back")
                continue
            if figures:
                log.debug(
                    "released %d KiB; resident %d KiB",
                    figures["released"] >> 10,
                    figures["resident_after"] >> 10,
                )
    finally:
        for worker in workers:
            worker.stop()
