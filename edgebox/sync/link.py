"""The MQTT 5 link: one paho client with TLS, a stable session, a retained status and will.

paho keeps its queue in memory only, so nothing is handed to it while the link is
down: the durable outbox in SQLite is the queue. A refused connection (bad
credentials, not authorized) stops the retries and says so in the status.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgebox.clock import iso
from edgebox.config import parse_broker_url
from edgebox.sync import protocol
from edgebox.sync.paho_client import LeanClient

log = logging.getLogger(__name__)
REFUSALS = {"Bad user name or password", "Not authorized", "Banned", "Client identifier not valid"}


@dataclass
class LinkSettings:
    """What the link needs to reach central's broker."""

    box_id: str
    broker: str
    username: str = ""
    password: str = ""
    ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    session_expiry_seconds: int = 7 * 24 * 3600
    keepalive: int = 30
    client_id: str = ""
    subscriptions: list[str] = field(default_factory=list)
    status_topic: str | None = None


class Link:
    """A reconnecting MQTT 5 client; `state` is offline, connecting, online or refused."""

    def __init__(
        self,
        settings: LinkSettings,
        on_message: Callable[[str, bytes], None],
        on_state: Callable[[str, str], None] | None = None,
    ):
        self.settings = settings
        self.state = "offline"
        self.detail = ""
        self.connected = threading.Event()
        self._on_message = on_message
        self._on_state = on_state or (lambda state, detail: None)
        scheme, self.host, self.port = parse_broker_url(settings.broker)
        self.client = LeanClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=settings.client_id or f"edgebox-{settings.box_id}",
            protocol=mqtt.MQTTv5,
        )
        if scheme == "mqtts":
            self.client.tls_set(
                ca_certs=settings.ca,
                certfile=settings.client_cert,
                keyfile=settings.client_key,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if settings.username:
            self.client.username_pw_set(settings.username, settings.password or None)
        if settings.status_topic:
            self.client.will_set(settings.status_topic, _status("offline"), qos=1, retain=True)
        # A quick first retry: after a broker restart both ends are back within ~0.2 s.
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=30)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_message = self._message
        self.client.on_connect_fail = self._connect_failed
        self.client.on_socket_open = _no_delay

    def _set(self, state: str, detail: str = "") -> None:
        if (state, detail) != (self.state, self.detail):
            self.state, self.detail = state, detail
            self._on_state(state, detail)

    def start(self) -> Link:
        """Connect in the background; paho reconnects with back-off after losses."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_seconds
        self._set("connecting")
        persistent = self.settings.session_expiry_seconds > 0
        self.client.connect_async(
            self.host,
            self.port,
            keepalive=self.settings.keepalive,
            clean_start=not persistent,
            properties=props,
        )
        self.client.loop_start()
        return self

    def stop(self) -> None:
        """Say offline (retained), disconnect and stop the network thread."""
        if self.connected.is_set() and self.settings.status_topic:
            info = self.client.publish(
                self.settings.status_topic, _status("offline"), qos=1, retain=True
            )
            info.wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()
        if self.state != "refused":
            self._set("offline", "stopped")

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            name = str(reason_code)
            if name in REFUSALS:
                self._set("refused", f"broker refused the connection: {name}")
                log.error("upstream refused: %s; not retrying until restarted", name)
                threading.Thread(target=client.disconnect, daemon=True).start()
                client.reconnect_delay_set(min_delay=3600, max_delay=3600)
                return
            self._set("connecting", f"connect failed: {name}")
            return
        for topic in self.settings.subscriptions:
            client.subscribe(topic, qos=1)
        if self.settings.status_topic:
            client.publish(self.settings.status_topic, _status("online"), qos=1, retain=True)
        self.connected.set()
        self._set("online", f"session present: {bool(flags.session_present)}")

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if self.state != "refused":
            self._set("connecting", f"disconnected: {reason_code}")

    def _connect_failed(self, client, userdata) -> None:
        self.connected.clear()
        if self.state != "refused":
            self._set("connecting", "broker unreachable")

    def _message(self, client, userdata, message) -> None:
        try:
            self._on_message(message.topic, message.payload)
        except Exception:  # noqa: BLE001 - one bad message must not kill the network thread
            log.exception("handling %s failed", message.topic)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> mqtt.MQTTMessageInfo | None:
        """Publish when online; None (nothing queued in paho) when the link is down."""
        if not self.connected.is_set():
            return None
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return info


def _no_delay(client, userdata, sock) -> None:
    """Send small messages (init, fin, acks) at once: with Nagle's algorithm a small publish
    right after a PUBACK waited for the broker's delayed TCP ACK, about 40 ms per exchange."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket: nothing to tune
        pass


def _status(state: str) -> bytes:
    return json.dumps({"state": state, "ts": iso()}).encode()


def settings_from_config(config, subscriptions: list[str]) -> LinkSettings:
    """The box's link settings from its [upstream] section."""
    from edgebox.config import resolve

    up = config.upstream
    password = ""
    if up.password_file:
        password = resolve(config, up.password_file).read_text().strip()
    return LinkSettings(
        box_id=config.box.box_id,
        broker=up.broker,
        username=up.username,
        password=password,
        ca=str(resolve(config, up.ca)) if up.ca else None,
        client_cert=str(resolve(config, up.client_cert)) if up.client_cert else None,
        client_key=str(resolve(config, up.client_key)) if up.client_key else None,
        session_expiry_seconds=up.session_expiry_hours * 3600,
        keepalive=up.keepalive_seconds,
        subscriptions=subscriptions,
        status_topic=protocol.status_topic(config.box.box_id),
    )
