"""The upstream link's paho client (`LeanClient`), against a real Mosquitto over TLS: every
payload arrives byte for byte as stock paho delivers it, whatever the QoS, size and MQTT 5
properties, whichever way LeanClient reads the packet."""

from __future__ import annotations

import os
import queue
import socket
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgebox.lowlevel import direct_io
from edgebox.sync.link import Link, LinkSettings
from edgebox.sync.paho_client import DIRECT, LeanClient, empty_in_packet
from tests.brokers import close_client, connect_client
from tests.sync_fixtures import wait_for


def test_lean_client_delivers_what_stock_paho_delivers(broker, pki):
    cert, key = pki.client_cert("lean")
    lean: queue.Queue = queue.Queue()
    stock: queue.Queue = queue.Queue()
    link = Link(
        LinkSettings(
            box_id="lean",
            broker=broker.url_tls_cert,
            ca=str(broker.ca_path),
            client_cert=str(cert),
            client_key=str(key),
            session_expiry_seconds=0,
            subscriptions=["lean/#"],
        ),
        lambda topic, payload: lean.put((topic, payload)),
    )
    assert isinstance(link.client, LeanClient)
    link.start()
    plain = _stock_into(broker, cert, key, "stock", stock)
    plain.subscribe("lean/#", qos=1)
    sender = connect_client(
        broker.url_tls_cert, client_id="sender", ca=broker.ca_path, cert=cert, key=key
    )
    try:
        wait_for(lambda: _probed(sender, lean, stock), what="both subscribed")
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("k", "v" * 300)]  # properties longer than 127 bytes
        props.MessageExpiryInterval = 60
        sent = []
        # Around DIRECT (64 KiB) a PUBLISH is read into its payload's own buffer.
        for n, size in enumerate([0, 1, 127, 128, 16384, 65_535, 65_536, 65_537, 700_000]):
            payload = os.urandom(size)
            for qos in (0, 1):
                topic = f"lean/{n}/{qos}/" + "t" * (n * 40)
                properties = props if n % 2 else None
                sender.publish(topic, payload, qos=qos, properties=properties).wait_for_publish(10)
                sent.append((topic, payload))
        huge = Properties(PacketTypes.PUBLISH)  # a head longer than DIRECT: read whole
        huge.UserProperty = [("k", "h" * 40_000), ("l", "i" * 40_000)]
        for size in (10, 200_000):
            payload = os.urandom(size)
            sender.publish("lean/huge", payload, qos=1, properties=huge).wait_for_publish(10)
            sent.append(("lean/huge", payload))
        got = [lean.get(timeout=10) for _ in sent]
        expected = [stock.get(timeout=10) for _ in sent]
        assert sorted(got) == sorted(expected) == sorted(sent)
        # read into its own buffer, aligned so that central can write it with O_DIRECT
        direct = [p for t, p in got if len(p) >= DIRECT and t != "lean/huge"]
        assert len(direct) == 6
        assert all(direct_io.address(p) % direct_io.ALIGN == 0 for p in direct)
    finally:
        close_client(sender)
        close_client(plain)
        link.stop()


def _probed(sender, *queues) -> bool:
    """Whether a probe reached every queue (then they are emptied): subscriptions hold."""
    sender.publish("lean/probe", b"probe", qos=1).wait_for_publish(10)
    try:
        for q in queues:
            q.get(timeout=0.5)
    except queue.Empty:
        return False
    for q in queues:
        while not q.empty():
            q.get()
    return True


def test_lean_client_leaves_qos2_to_paho(broker, pki):
    cert, key = pki.client_cert("lean2")
    got: queue.Queue = queue.Queue()
    client, subscribed = _subscribed_lean(
        broker, cert, key, "lean2", "q2/#", 2, on_message=lambda c, u, m: got.put(m.payload)
    )
    sender = connect_client(
        broker.url_tls_cert, client_id="sender2", ca=broker.ca_path, cert=cert, key=key
    )
    try:
        assert subscribed.wait(10)
        payloads = [os.urandom(600_000), b"small", b""]
        for data in payloads:
            sender.publish("q2/x", data, qos=2).wait_for_publish(10)
        assert [got.get(timeout=10) for _ in payloads] == payloads
    finally:
        close_client(sender)
        close_client(client)


class _CountingPair:
    """Stands in for paho's wake-up socket: counts the bytes written, passes everything on."""

    def __init__(self, sock):
        self.sock, self.sends = sock, 0

    def send(self, data):
        self.sends += 1
        return self.sock.send(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_lean_client_does_not_wake_its_own_network_thread(broker, pki):
    """Packets queued on the network thread (PUBACKs, replies from on_message) go out without
    the wake-up byte; a publish from another thread still wakes the loop."""
    cert, key = pki.client_cert("lean3")
    got: queue.Queue = queue.Queue()
    client, subscribed = _subscribed_lean(
        broker,
        cert,
        key,
        "lean3",
        "ask/#",
        1,
        # The reply is published from the network thread, as paho runs on_message there.
        on_message=lambda c, u, m: c.publish("answer/" + m.topic, m.payload, qos=1),
    )
    asker = _stock_into(broker, cert, key, "asker", got)
    asker.subscribe("answer/#", qos=1)
    try:
        assert subscribed.wait(10)
        pair = client._sockpairW = _CountingPair(client._sockpairW)
        questions = [(f"ask/{n}", os.urandom(n * 1000)) for n in range(30)]
        for topic, data in questions:
            asker.publish(topic, data, qos=1).wait_for_publish(10)
        answers = sorted(got.get(timeout=10) for _ in questions)
        assert answers == sorted((f"answer/{t}", d) for t, d in questions)
        assert pair.sends == 0  # 30 PUBACKs and 30 replies queued by the network thread
        client.publish("answer/from-outside", b"x", qos=1).wait_for_publish(10)
        assert got.get(timeout=10) == ("answer/from-outside", b"x") and pair.sends == 1
    finally:
        close_client(asker)
        close_client(client)


def test_lean_client_sends_what_stock_paho_receives_from_two_threads(broker, pki):
    """Large PUBLISHes go out as head and payload; from two threads at once, with and without
    properties, at QoS 0 and 1, every message reaches a stock subscriber whole."""
    cert, key = pki.client_cert("lean4")
    got: queue.Queue = queue.Queue()
    stock = _stock_into(broker, cert, key, "stock4", got)
    stock.subscribe("big/#", qos=1)
    stock.subscribe("lean/probe", qos=1)
    lean = _lean_client(broker, cert, key, "lean4")
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k", "v" * 300)]
    sent: list = []

    def send(name: str) -> None:
        for n, size in enumerate([65_535, 65_536, 65_537, 1_048_576, 300_000] * 3):
            payload = os.urandom(size)
            topic = f"big/{name}/{n}"
            properties = props if n % 2 else None
            lean.publish(topic, payload, qos=n % 2, properties=properties).wait_for_publish(10)
            sent.append((topic, payload))

    try:
        wait_for(lambda: _probed(lean, got), what="subscribed", timeout=20)
        threads = [threading.Thread(target=send, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        received = [got.get(timeout=10) for _ in sent]
        assert sorted(received) == sorted(sent) and len(sent) == 30
    finally:
        close_client(stock)
        close_client(lean)


def _stock_into(broker, cert, key, client_id: str, into: queue.Queue):
    """A connected stock paho client that files each message it gets as (topic, payload)."""
    return connect_client(
        broker.url_tls_cert,
        client_id=client_id,
        ca=broker.ca_path,
        cert=cert,
        key=key,
        on_message=lambda c, u, m: into.put((m.topic, m.payload)),
    )


def _lean_client(broker, cert, key, client_id: str, **callbacks) -> LeanClient:
    """A LeanClient with these callbacks, connected over TLS and looping in its thread."""
    client = LeanClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(broker.ca_path), certfile=str(cert), keyfile=str(key))
    for name, callback in callbacks.items():
        setattr(client, name, callback)
    client.connect("127.0.0.1", broker.port_tls_cert)
    client.loop_start()
    return client


def _subscribed_lean(
    broker, cert, key, client_id: str, topic: str, qos: int, on_message
) -> tuple[LeanClient, threading.Event]:
    """A LeanClient subscribing to `topic` on connect, and the event set once the broker
    has granted the subscription."""
    subscribed = threading.Event()
    client = _lean_client(
        broker,
        cert,
        key,
        client_id,
        on_message=on_message,
        on_connect=lambda c, u, f, rc, p: c.subscribe(topic, qos=qos),
        on_subscribe=lambda *a: subscribed.set(),
    )
    return client, subscribed


def _publish_packet(topic: str, payload: bytes) -> bytes:
    """An MQTT 5 QoS 0 PUBLISH packet (no properties), as a broker sends it."""
    body = len(topic).to_bytes(2, "big") + topic.encode() + b"\x00" + payload
    length, rest = bytearray(), len(body)
    while True:
        rest, digit = divmod(rest, 128)
        length.append(digit | (0x80 if rest else 0))
        if not rest:
            return bytes([0x30]) + bytes(length) + body


def test_a_packet_cut_short_by_a_reconnect_leaves_nothing_behind():
    """A large PUBLISH read halfway (its payload buffer started) and then dropped, as paho's
    reconnect drops it, must not lend that buffer to the next message. A real socket pair
    stands in for the broker's connection."""
    ours, broker_end = socket.socketpair()
    ours.setblocking(False)
    client = LeanClient(mqtt.CallbackAPIVersion.VERSION2, client_id="cut", protocol=mqtt.MQTTv5)
    client._sock = ours
    got = []
    client.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload)))
    try:
        broker_end.sendall(_publish_packet("x/big", os.urandom(200_000))[:100_000])
        assert client._packet_read() == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN
        client._in_packet = empty_in_packet()  # what paho's reconnect() puts there
        broker_end.sendall(_publish_packet("x/small", b"hello"))
        assert client._packet_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        assert got == [("x/small", b"hello")]
    finally:
        ours.close()
        broker_end.close()
