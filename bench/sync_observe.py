"""Watching a box run from the broker: a passive observer, and a broker restart timed.

`Observer` counts what box and central publish (the protocol's overhead, resends, when segments
pass the broker); `time_restart` restarts the broker mid-transfer and times the reconnects and
the first new segment stored at central, from the broker's log and central's present marks.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.common import port_open
from bench.sync_wiring import BOX_ID, Wiring
from edgebox.central.files import segments_present
from edgebox.sync.protocol import is_replica_transfer
from tests.brokers import Mosquitto


class Observer:
    """A passive subscriber to `edgebox/v1/#` on the broker's plain listener; counts bytes.

    Persistent session (expiry 300 s, clean start only the first time) and a 50 ms reconnect
    delay, so across a broker restart it is back before the box and central and misses nothing.
    """

    def __init__(self, broker: Mosquitto, client_id: str = "bench-observer"):
        self.lock = threading.Lock()
        self.kinds: dict[str, list[int]] = {}  # kind -> [messages, topic bytes, payload bytes]
        self.topics: Counter = Counter()  # every segment/init/fin topic, to count resends
        self.seg_times: list[tuple[float, str]] = []
        self.box_times: list[tuple[float, str]] = []  # box → central messages (not status)
        self.seg_bytes = 0  # recordings' segment payloads (replica files are counted apart)
        self.complete: set[str] = set()
        self.connects: list[float] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect(
            "127.0.0.1",
            broker.port_plain,
            keepalive=30,
            clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self.client.loop_start()
        if not self.subscribed.wait(15):
            self.close()
            raise RuntimeError("observer: no SUBACK")

    def _connected(self, client, userdata, flags, reason_code, properties):
        self.connects.append(time.monotonic())
        client.subscribe("edgebox/v1/#", qos=1)

    def _message(self, client, userdata, message):
        now = time.monotonic()
        if message.retain:  # delivered from the retained store, not published during the run
            return
        topic = message.topic
        parts = topic.split("/")
        rest = parts[3:]
        kind = rest[0] if rest else "?"
        replica = False
        if kind == "file" and len(rest) >= 3:
            kind, replica = rest[2], is_replica_transfer(rest[1])  # init, seg, fin
        elif kind == "ack":
            with contextlib.suppress(ValueError, AttributeError):
                body = json.loads(message.payload)
                kind = f"ack:{body.get('re')}"
                replica = is_replica_transfer(str(body.get("tid")))
                done = body.get("re") in ("fin", "init") and body.get("status") == "complete"
                if done and not replica:
                    with self.lock:
                        self.complete.add(body.get("tid"))
        with self.lock:
            entry = self.kinds.setdefault(f"replica {kind}" if replica else kind, [0, 0, 0])
            entry[0] += 1
            entry[1] += len(topic.encode())
            entry[2] += len(message.payload)
            if kind in ("seg", "init", "fin"):
                self.topics[topic] += 1
                self.box_times.append((now, kind))
            if kind == "seg" and not replica:
                self.seg_bytes += len(message.payload)
                self.seg_times.append((now, topic))
            if kind == "meta":
                self.box_times.append((now, kind))

    def close(self) -> None:
        """Disconnect and stop paho's network thread."""
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def time_restart(wiring: Wiring, observer: Observer) -> dict:
    """`restart(kill=False)` mid-transfer; time the reconnects and the first new segment."""
    broker = wiring.broker
    log_offset = broker.log_path.stat().st_size
    seen_markers: dict[str, float] = {}
    connects: dict[str, float] = {}
    stop_watch = threading.Event()

    def markers() -> set:
        return segments_present(wiring.store)

    def watch() -> None:
        offset = log_offset
        while not stop_watch.is_set():
            now = time.monotonic()
            for name in markers():
                seen_markers.setdefault(name, now)
            with contextlib.suppress(OSError), open(broker.log_path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
                cut = chunk.rfind(b"\n") + 1
                offset += cut
                for line in chunk[:cut].decode(errors="replace").splitlines():
                    match = re.search(r"New client connected from \S+ as (\S+)", line)
                    if match:
                        connects.setdefault(match.group(1), now)
            time.sleep(0.005)

    before = markers()
    for name in before:
        seen_markers[name] = 0.0
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    port = broker.port_tls_cert
    t_stop = time.monotonic()
    restarter = threading.Thread(target=broker.restart, kwargs={"kill": False}, daemon=True)
    restarter.start()
    while port_open(port) and time.monotonic() - t_stop < 15:
        time.sleep(0.002)
    t_down = time.monotonic()
    while not port_open(port) and time.monotonic() - t_down < 30:
        time.sleep(0.002)
    t_listen = time.monotonic()
    restarter.join(30)
    # Central may still be storing segments it read before the broker went down; only a
    # marker that appears after central's worker is connected again can be a new segment.
    deadline = t_listen + 60
    first_marker = central_back = None
    while time.monotonic() < deadline:
        if central_back is None:
            central_back = min(
                (t for c, t in list(connects.items()) if c.startswith("edgebox-central-")),
                default=None,
            )
        fresh = [t for t in list(seen_markers.values()) if central_back and t > central_back]
        if fresh:
            first_marker = min(fresh)
            break
        time.sleep(0.01)
    time.sleep(0.1)
    stop_watch.set()
    watcher.join(5)
    with observer.lock:
        segs_after = [t for t, _ in observer.seg_times if t > t_listen]
    stale = sum(1 for t in seen_markers.values() if t > t_stop and (central_back or 1e18) >= t)

    def rel(t):
        return None if t is None else t - t_listen

    with observer.lock:
        orphans = Counter(
            kind
            for t, kind in observer.box_times
            if t > t_listen and (central_back is None or t < central_back)
        )
    return {
        "orphans": dict(orphans),
        "at_bytes": observer.seg_bytes,
        "stop_to_down": t_down - t_stop,
        "stop_to_listen": t_listen - t_stop,
        "box_connected": rel(connects.get(f"edgebox-{BOX_ID}")),
        "central_connected": rel(central_back),
        "observer_connected": rel(min((t for t in observer.connects if t > t_stop), default=None)),
        "first_seg_at_broker": rel(min(segs_after, default=None)),
        "first_marker_at_central": rel(first_marker),
        "stale_markers": stale,
    }
