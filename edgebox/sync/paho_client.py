"""paho's MQTT client with one copy of each received payload instead of about eight.

paho 2.x decodes a PUBLISH by slicing the whole packet again at every field: the topic
length, the topic, the packet id and each step through the properties copy everything
after them, so a 512 KiB segment is copied some seven times before `on_message` sees it.
At central that was about 2.3 of the 4 CPU seconds paho spent per GiB received (measured
with a plain subscriber: 4.2 s/GiB with stock paho, 1.9 with this client).

`LeanClient` cuts the payload off the packet once (QoS 0 and 1) and lets paho decode the
short rest as usual, then hands the payload to `on_message`. Anything it cannot parse
goes through paho's own decoding untouched, so a malformed packet fails as paho fails it.

Outgoing packets are queued as memoryviews: paho hands `packet[pos:]` to the socket on
every try, and a TLS socket that is full answers "try again" several times per
segment, so slicing the bytearray copied the whole remaining segment each time. A large
PUBLISH goes as its head and then its payload object itself, not copied into one new
packet; a lock keeps the two together in paho's queue. (If the connection drops between
the two, the payload can lead the next connection's queue, as any packet queued during
paho's reconnect can with stock paho: the broker refuses it and paho connects again.)

It also spares the network thread a wake-up of itself: paho writes a byte to a socket
pair for every packet it queues (a PUBACK for each segment received, for instance), so
that a `select()` in the network thread returns. When the network thread queues the
packet itself, its loop looks for packets to write on its very next turn anyway.
"""

from __future__ import annotations

import ssl
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.exception import MalformedPacket

from edgebox.lowlevel import direct_io
from edgebox.lowlevel.tls_records import record_reader

DIRECT = 64 * 1024  # a QoS 0/1 PUBLISH this long or longer is read into its payload's buffer


class LeanClient(mqtt.Client):
    """A paho `Client` that reads a large payload straight into its own buffer, copies a small
    one once, and does not wake its own network thread."""

    _payload: bytes | bytearray | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Held while packets are queued, so a PUBLISH queued as head and payload (see
        # `_send_publish`) is never split by another packet.
        self._queue_lock = threading.RLock()

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        """Read (the rest of) one packet, then hand it to paho as `Client._packet_read` does.

        The body goes into a buffer of its final size with `recv_into` (paho appends each
        TLS record to a growing bytearray, reading into a fresh buffer as large as the rest
        of the packet every time). A QoS 0/1 PUBLISH of `DIRECT` bytes or more is read in
        two parts: its first `DIRECT` bytes, where the topic and properties are, then the
        rest straight into a bytearray that becomes the message's payload.
        """
        inp = self._in_packet
        with self._msgtime_mutex:  # paho's keep-alive: the broker's bytes are arriving
            self._last_bytes_received = time.monotonic()
        try:
            for _ in range(100):  # as paho: return to the loop now and then on a huge packet
                if not inp["have_remaining"]:
                    if self._read_fixed_header(inp) is not None:
                        return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
                elif _fill(self._sock, inp):
                    if not self._settle_body(inp):
                        return self._packet_done()
        except (BlockingIOError, ssl.SSLWantReadError):
            return mqtt.MQTTErrorCode.MQTT_ERR_AGAIN
        except ssl.SSLWantWriteError:
            self._call_socket_register_write()
            return mqtt.MQTTErrorCode.MQTT_ERR_AGAIN
        except (OSError, AttributeError) as err:  # AttributeError: the socket is gone
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST
        return mqtt.MQTTErrorCode.MQTT_ERR_AGAIN

    def _read_fixed_header(self, inp: dict) -> bool | None:
        """Read the command byte and the remaining length; None when done, True when the
        length is malformed. Raises OSError (ConnectionError at end of stream)."""
        if inp["command"] == 0:
            self._payload = None  # nothing of a packet cut short (by a reconnect) carries over
            inp["command"] = _byte(self._sock)
        while True:
            byte = _byte(self._sock)
            inp["remaining_count"].append(byte)
            if len(inp["remaining_count"]) > 4:
                return True
            inp["remaining_length"] += (byte & 127) * inp["remaining_mult"]
            inp["remaining_mult"] *= 128
            if not byte & 128:
                break
        inp["have_remaining"] = 1
        length = inp["remaining_length"]
        qos = (inp["command"] & 0x06) >> 1
        direct = inp["command"] & 0xF0 == mqtt.PUBLISH and qos < 2 and length >= DIRECT
        inp["packet"] = bytearray(DIRECT if direct else length)
        inp["got"], inp["direct"] = 0, direct
        return None

    def _settle_body(self, inp: dict) -> bool:
        """The buffer being read is full: True if more is to be read into a new one (the
        payload of a direct PUBLISH), False when the packet is whole."""
        if not inp.pop("direct", False):
            return False
        head = inp["packet"]
        qos = (inp["command"] & 0x06) >> 1
        start = _payload_start(head, qos, self._protocol == mqtt.MQTTv5)
        rest = inp["remaining_length"] - len(head)
        if start is None:  # not parsed here: read it whole and let paho decode it
            inp["packet"] = head + bytes(rest)
        else:
            self._payload = direct_io.aligned(inp["remaining_length"] - start)
            self._payload[: len(head) - start] = memoryview(head)[start:]
            inp["packet"], inp["target"] = head[:start], self._payload
        inp["got"] = len(head) - (start or 0)
        return True

    def _packet_done(self) -> mqtt.MQTTErrorCode:
        """The packet is read: handle it, then reset for the next one (as paho does)."""
        self._in_packet["pos"] = 0
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            self._payload = None
        self._in_packet = empty_in_packet()
        return rc

    def _handle_publish(self):
        direct = self._payload is not None and self._in_packet.get("target") is self._payload
        if not direct:  # cut the payload off with one copy
            self._payload = None
            packet = self._in_packet["packet"]
            qos = (self._in_packet["command"] & 0x06) >> 1
            v5 = self._protocol == mqtt.MQTTv5
            start = _payload_start(packet, qos, v5) if qos < 2 else None
            if start is not None:
                self._payload = bytes(memoryview(packet)[start:])
                self._in_packet["packet"] = packet[:start]
        try:
            return super()._handle_publish()
        finally:
            self._payload = None

    def _send_publish(
        self, mid, topic, payload=b"", qos=0, retain=False, dup=False, info=None, properties=None
    ):
        """Queue a PUBLISH of `DIRECT` bytes or more as two packets, its head and its payload
        as given (paho copies the payload into one new bytearray, holding the GIL)."""
        if len(payload) < DIRECT or not isinstance(topic, bytes) or self._sock is None:
            return super()._send_publish(mid, topic, payload, qos, retain, dup, info, properties)
        head = bytearray([mqtt.PUBLISH | ((dup & 1) << 3) | (qos << 1) | retain])
        props = b""
        if self._protocol == mqtt.MQTTv5:
            props = b"\x00" if properties is None else properties.pack()
        length = 2 + len(topic) + (2 if qos else 0) + len(props) + len(payload)
        self._pack_remaining_length(head, length)
        self._pack_str16(head, topic)
        if qos:
            head.extend(mid.to_bytes(2, "big"))
        head.extend(props)
        with self._queue_lock:
            self._out_packet.append(_out(0, head))  # command 0: nothing to do once written
            return self._packet_queue(mqtt.PUBLISH, payload, mid, qos, info)

    def _packet_queue(self, command, packet, mid, qos, info=None):
        packet = memoryview(packet)  # paho resends `packet[pos:]`: a view, not a copy of it
        with self._queue_lock:
            if self._thread is None or threading.current_thread() is not self._thread:
                return super()._packet_queue(command, packet, mid, qos, info)
            self._out_packet.append(_out(command, packet, mid, qos, info))
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_on_message(self, message) -> None:
        if self._payload is not None:  # QoS 0 and 1 call this from _handle_publish
            message.payload = self._payload
        super()._handle_on_message(message)


def empty_in_packet() -> dict:
    """paho's record of a packet not begun yet (what it sets after each packet and on
    reconnecting)."""
    return {
        "command": 0,
        "have_remaining": 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": 0,
        "packet": bytearray(b""),
        "to_process": 0,
        "pos": 0,
    }


def _out(command: int, packet, mid: int = 0, qos: int = 0, info=None) -> dict:
    """An entry of paho's queue of packets to write."""
    return {
        "command": command,
        "mid": mid,
        "qos": qos,
        "pos": 0,
        "to_process": len(packet),
        "packet": memoryview(packet),
        "info": info,
    }


def _byte(sock) -> int:
    """One byte from the socket (BlockingIOError or an SSL want-read if none is there yet)."""
    data = sock.recv(1)
    if not data:
        raise ConnectionError("connection closed by the broker")
    return data[0]


def _fill(sock, inp: dict) -> bool:
    """Read into the packet's current buffer (the payload's, once its head is parsed); True
    once it is full. Raises OSError at the end of the stream (ConnectionError, or ssl's
    SSLEOFError / SSLZeroReturnError from a TLS socket) and as `socket.recv_into` does."""
    target = inp.get("target", inp["packet"])
    read, got, size = record_reader(sock), inp["got"], len(target)
    with memoryview(target) as view:
        try:
            while got < size:
                n = read(size - got, view[got:])
                if not n:
                    raise ConnectionError("connection closed by the broker")
                got += n
        finally:
            inp["got"] = got
    return True


def _payload_start(packet: bytearray, qos: int, v5: bool) -> int | None:
    """Where the payload begins in a PUBLISH's variable part, or None if it does not parse."""
    if len(packet) < 2:
        return None
    pos = 2 + int.from_bytes(packet[0:2], "big") + (2 if qos else 0)
    if v5:  # the properties: a variable byte integer length, then that many bytes
        length, shift = 0, 0
        for n in range(4):
            if pos + n >= len(packet):
                return None
            byte = packet[pos + n]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                pos += n + 1 + length
                break
        else:
            return None
    return pos if pos <= len(packet) else None
