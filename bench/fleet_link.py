"""A simulated box's uplink: one paho MQTT 5 client per box, speaking the sync protocol to
central as a box's uplink does (custody first, then each recording: init, segments by offset
with a window, fin; resend on timeout or on central's request), and going offline at random.

Over TLS each box presents its own client certificate (CN = box id, the MQTT user name), so the
broker's ACL holds it to its own topics, as in a deployment; `--plain` in bench/fleet.py drops
TLS to show what the handshakes and records cost on the same two cores.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.fleet_box import SimBox, SimRecording
from edgebox.sync import protocol


@dataclass
class FleetStats:
    """What the fleet saw, shared by every box's thread."""

    fin_to_ack: list[float] = field(default_factory=list)
    completed: dict[tuple[str, str], dict] = field(default_factory=dict)
    offline_spells: int = 0
    resends: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class BoxUplink:
    """One box's MQTT client and central's answers to it."""

    def __init__(
        self, box: SimBox, host: str, port: int, ack_timeout: float, ca: Path | None = None
    ):
        self.box = box
        self.host, self.port = host, port
        self.ack_timeout = ack_timeout
        self.answers: list[dict] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=box.box_id, protocol=mqtt.MQTTv5
        )
        self.client.max_inflight_messages_set(64)
        if ca is not None:  # mutual TLS with the box's own certificate
            cert, key = box.certificate
            self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.client.on_message = self._message
        self.client.on_connect = self._connected

    def _connected(self, client, userdata, flags, reason, properties) -> None:
        client.subscribe(protocol.ack_topic(self.box.box_id), qos=1)

    def _message(self, client, userdata, message) -> None:
        try:
            answer = json.loads(message.payload)
        except ValueError:
            return
        with self.cond:
            self.answers.append(answer)
            self.cond.notify_all()

    def connect(self) -> None:
        """Connect (clean start: a box back from offline asks central what it holds)."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        self.client.connect(self.host, self.port, keepalive=30, clean_start=True, properties=props)
        self.client.loop_start()

    def drop(self) -> None:
        """Go offline (the link drops; answers in flight are lost)."""
        self.client.disconnect()
        self.client.loop_stop()
        # paho leaves its sockets (and the wake-up pair loop_start made) open until it is
        # collected; close them now, so the next connect starts clean
        self.client._reset_sockets()
        with self.cond:
            self.answers.clear()

    def publish(self, message: tuple[str, bytes]) -> None:
        """Publish at QoS 1."""
        self.client.publish(message[0], message[1], qos=1)

    def wait(self, match, timeout: float) -> dict | None:
        """The first answer `match` accepts (taken out), or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for n, answer in enumerate(self.answers):
                    if match(answer):
                        return self.answers.pop(n)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def request(self, message: tuple[str, bytes], match, stats: FleetStats) -> dict:
        """Publish and wait for the answer, resending after each timeout."""
        while True:
            self.publish(message)
            answer = self.wait(match, self.ack_timeout)
            if answer is not None:
                return answer
            with stats.lock:
                stats.resends += 1


def _is(re: str, tid: str | None = None, offset: int | None = None):
    def match(answer: dict) -> bool:
        return (
            answer.get("re") == re
            and (tid is None or answer.get("tid") == tid)
            and (offset is None or answer.get("offset") == offset)
        )

    return match


class BoxRunner:
    """Drives one simulated box until its recordings are confirmed or the deadline passes."""

    def __init__(
        self,
        box: SimBox,
        uplink: BoxUplink,
        stats: FleetStats,
        rng: random.Random,
        chunk: int,
        window: int = 16,
        offline_chance: float = 0.0,
    ):
        self.box, self.uplink, self.stats, self.rng = box, uplink, stats, rng
        self.chunk, self.window, self.offline_chance = chunk, window, offline_chance

    def run(self, deadline: float) -> None:
        """Custody first, then every recording in turn."""
        self.uplink.connect()
        try:
            answer = self.uplink.request(self.box.custody_message(), _is("meta"), self.stats)
            if answer.get("status") != "ok":
                raise RuntimeError(f"{self.box.box_id}: custody {answer}")
            for rec in self.box.recordings:
                while time.monotonic() < deadline and not self._send(rec):
                    pass
        finally:
            self.uplink.drop()

    def _offline_spell(self) -> None:
        """Now and then the link drops for one to four seconds, mid-transfer."""
        if self.rng.random() < self.offline_chance:
            self.uplink.drop()
            with self.stats.lock:
                self.stats.offline_spells += 1
            time.sleep(self.rng.uniform(1, 4))
            self.uplink.connect()
            raise _Offline()

    def _send(self, rec: SimRecording) -> bool:
        """One attempt at a recording; True once central confirmed it."""
        try:
            answer = self.uplink.request(
                self.box.init(rec, self.chunk), _is("init", rec.tid), self.stats
            )
            if answer["status"] == "complete":
                return self._confirmed(rec, answer, None)
            if answer["status"] != "ok":
                raise RuntimeError(f"{self.box.box_id}: init {answer}")
            wanted = [
                o for o in protocol.offsets(rec.size, self.chunk) if o not in set(answer["have"])
            ]
            while True:
                self._segments(rec, wanted)
                started = time.monotonic()
                answer = self.uplink.request(self.box.fin(rec), _is("fin", rec.tid), self.stats)
                status = answer["status"]
                if status == "complete":
                    return self._confirmed(rec, answer, time.monotonic() - started)
                if status == "unknown":
                    return False
                if status == "resend_all":
                    wanted = protocol.offsets(rec.size, self.chunk)
                elif status == "resend":
                    wanted = answer["offsets"]
                else:
                    raise RuntimeError(f"{self.box.box_id}: fin {answer}")
        except _Offline:
            return False

    def _segments(self, rec: SimRecording, wanted: list[int]) -> None:
        """Send `wanted` with at most `window` unanswered; resend what times out."""
        pending = list(wanted)
        halfway = len(pending) // 2
        while pending:
            batch, pending = pending[: self.window], pending[self.window :]
            for offset in batch:
                self.uplink.publish(self.box.segment(rec, offset, self.chunk))
            for offset in batch:
                answer = self.uplink.wait(_is("seg", rec.tid, offset), self.uplink.ack_timeout)
                if answer is None or answer["status"] != "ok":
                    pending.append(offset)
                    with self.stats.lock:
                        self.stats.resends += 1
            if len(pending) <= halfway < len(pending) + len(batch):
                self._offline_spell()

    def _confirmed(self, rec: SimRecording, answer: dict, fin_seconds: float | None) -> bool:
        if (answer.get("sha256"), answer.get("size")) != (rec.sha256, rec.size):
            raise RuntimeError(f"{self.box.box_id}: central confirmed other bytes: {answer}")
        with self.stats.lock:
            self.stats.completed[(self.box.box_id, rec.id)] = answer
            if fin_seconds is not None:
                self.stats.fin_to_ack.append(fin_seconds)
        return True


class _Offline(Exception):
    """The link dropped: start the recording again from init."""
