"""The test broker helper against a real mosquitto and real paho clients.

These tests also pin down Mosquitto 2.0 / paho 2.x behaviour the sync protocol relies on.
"""

from __future__ import annotations

import socket
import threading

import pytest

from tests.brokers import (
    ConnectRefused,
    Inbox,
    Mosquitto,
    TestPKI,
    close_client,
    connect_client,
)

BAD_CREDENTIALS = {134, 135}  # Bad user name or password / Not authorized
PACKET_TOO_LARGE = 149
CONNECTION_LOST = 128  # how paho reports a dropped socket: "Unspecified error"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path, pki):
    broker = Mosquitto(tmp_path / "broker", pki)
    broker.add_user("alice", "correct horse")  # before start: no reload needed
    with broker:
        yield broker


@pytest.fixture
def make_broker(tmp_path, pki):
    """Start brokers with custom settings; request it before `clients` so that clients are
    closed first (a client whose broker is gone waits up to 1 s in paho's reconnect delay)."""
    started = []

    def make(name: str, **kwargs) -> Mosquitto:
        broker = Mosquitto(tmp_path / name, pki, **kwargs)
        started.append(broker)
        return broker.start()

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def clients():
    """Collects clients to close at teardown, so a failing test leaks no thread or socket."""
    opened = []
    yield opened
    for client in opened:
        close_client(client)


def cert_client(broker, pki, name, clients, **kwargs):
    cert, key = pki.client_cert(name)
    client = connect_client(
        broker.url_tls_cert, client_id=name, ca=broker.ca_path, cert=cert, key=key, **kwargs
    )
    clients.append(client)
    return client


def subscribe(client, topic: str, qos: int = 1) -> None:
    """Subscribe and wait for the SUBACK; fail on a refused subscription."""
    acked = threading.Event()
    codes = []

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        codes.extend(reason_codes)
        acked.set()

    client.on_subscribe = on_subscribe
    result, _ = client.subscribe(topic, qos=qos)
    assert result == 0
    assert acked.wait(5), "no SUBACK"
    client.on_subscribe = None
    assert not codes[0].is_failure, codes


def test_urls_and_ports(broker):
    ports = broker.ports
    assert len(set(ports)) == 3
    assert broker.url_tls_cert == f"mqtts://127.0.0.1:{broker.port_tls_cert}"
    assert broker.url_tls_password == f"mqtts://127.0.0.1:{broker.port_tls_password}"
    assert broker.url_plain == f"mqtt://127.0.0.1:{broker.port_plain}"
    assert broker.ca_path.read_text().startswith("-----BEGIN CERTIFICATE-----")
    conf = broker.conf_path.read_text()
    for line in (
        "max_queued_messages 100000",
        "max_queued_bytes 0",
        "require_certificate true",
        "use_identity_as_username true",
        "autosave_interval 1",
    ):
        assert line in conf
    assert "mosquitto version" in broker.log_tail()


def test_client_certificate_round_trips_qos1(broker, pki, clients):
    inbox = Inbox()
    client = cert_client(broker, pki, "box-1", clients, on_message=inbox)
    assert not client.connack.session_present
    assert client.connack.properties.MaximumPacketSize == broker.max_packet_size
    subscribe(client, "boxes/box-1/#")
    info = client.publish("boxes/box-1/hello", b"evidence", qos=1)
    info.wait_for_publish(5)
    message = inbox.get(5)
    assert (message.topic, message.payload, message.qos) == ("boxes/box-1/hello", b"evidence", 1)
    # use_identity_as_username: the broker knows the box by its certificate's CN
    broker.wait_for_log("as box-1 (p5, c1, k30, u'box-1')")


def test_username_password(broker, clients):
    inbox = Inbox()
    client = connect_client(
        broker.url_tls_password,
        client_id="central",
        ca=broker.ca_path,
        username="alice",
        password="correct horse",
        on_message=inbox,
    )
    clients.append(client)
    subscribe(client, "t")
    client.publish("t", b"x", qos=1).wait_for_publish(5)
    assert inbox.get(5).payload == b"x"


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "wrong"), ("mallory", "correct horse"), (None, None)],
)
def test_bad_credentials_are_refused(broker, username, password):
    with pytest.raises(ConnectRefused) as refused:
        connect_client(
            broker.url_tls_password,
            client_id="intruder",
            ca=broker.ca_path,
            username=username,
            password=password,
        )
    # Mosquitto 2.0.11 answers 135 "Not authorized" for all three, never 134.
    assert refused.value.reason_code is not None
    assert refused.value.reason_code.value in BAD_CREDENTIALS, refused.value.reason_code


def test_add_user_on_running_broker_reloads(broker, clients):
    with pytest.raises(ConnectRefused):
        connect_client(
            broker.url_tls_password,
            client_id="bob",
            ca=broker.ca_path,
            username="bob",
            password="pw",
        )
    broker.add_user("bob", "pw")
    clients.append(
        connect_client(
            broker.url_tls_password,
            client_id="bob",
            ca=broker.ca_path,
            username="bob",
            password="pw",
        )
    )


def test_cert_listener_refuses_missing_or_foreign_certificate(broker, pki, tmp_path):
    # No client certificate. With TLS 1.3 the client's handshake finishes before the server
    # checks for a certificate, so paho sees the connection drop before any CONNACK.
    with pytest.raises(ConnectRefused):
        connect_client(broker.url_tls_cert, client_id="anon", ca=broker.ca_path)
    # Username/password do not help on the certificate listener.
    with pytest.raises(ConnectRefused):
        connect_client(
            broker.url_tls_cert,
            client_id="alice",
            ca=broker.ca_path,
            username="alice",
            password="correct horse",
        )
    # A certificate from another CA.
    foreign = TestPKI(tmp_path / "foreign")
    cert, key = foreign.client_cert("box-1")
    with pytest.raises(ConnectRefused):
        connect_client(
            broker.url_tls_cert, client_id="box-1", ca=broker.ca_path, cert=cert, key=key
        )
    broker.wait_for_log("peer did not return a certificate", count=2)
    log = broker.wait_for_log("certificate verify failed")
    assert "New client connected" not in log


def test_plain_listener_allows_anonymous(broker, clients):
    inbox = Inbox()
    client = connect_client(broker.url_plain, client_id="bench", on_message=inbox)
    clients.append(client)
    subscribe(client, "bench/#")
    client.publish("bench/1", b"1", qos=1).wait_for_publish(5)
    assert inbox.get(5).payload == b"1"


def test_oversized_publish_is_dropped_and_publisher_disconnected(make_broker, pki, clients):
    """A packet over max_packet_size: the broker disconnects the publisher and drops it.

    Mosquitto sends DISCONNECT 0x95 "Packet too large" and closes the socket; whether paho
    reads that DISCONNECT or first fails writing the rest of the big packet (reported as a
    lost connection, "Unspecified error") is a race. paho 2.x does not check the broker's
    Maximum Packet Size before sending and returns rc 0 from publish(); for QoS 1 it resends
    the unacknowledged message after every automatic reconnect, so the publisher is thrown
    out again about once a second, forever. Senders must bound their packet size themselves.
    """
    limit = 64 * 1024
    broker = make_broker("small", max_packet_size=limit)
    inbox = Inbox()
    subscriber = cert_client(broker, pki, "central", clients, on_message=inbox)
    assert subscriber.connack.properties.MaximumPacketSize == limit
    subscribe(subscriber, "big/#")

    publisher = cert_client(broker, pki, "box-1", clients)
    disconnects = []
    two = threading.Event()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        disconnects.append((flags.is_disconnect_packet_from_server, reason_code.value))
        if len(disconnects) >= 2:
            two.set()

    publisher.on_disconnect = on_disconnect
    info = publisher.publish("big/1", b"x" * limit, qos=1)
    assert info.rc == 0  # paho happily queues it
    assert two.wait(5), disconnects  # first send, then the resend after reconnecting
    for from_server, code in disconnects:
        assert (from_server, code) in {(True, PACKET_TOO_LARGE), (False, CONNECTION_LOST)}
    assert not info.is_published()
    close_client(publisher)

    broker.wait_for_log("Client box-1 disconnected due to oversize packet.", count=2)
    assert inbox.empty_for(0.3)
    # The broker still works for packets that fit.
    subscriber.publish("big/small", b"y" * (limit - 1024), qos=1).wait_for_publish(5)
    assert inbox.get(5).topic == "big/small"


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_restart_keeps_persistent_session_and_queued_qos1(broker, pki, clients, kill):
    inbox = Inbox()
    session = {"clean_start": False, "session_expiry": 3600, "on_message": inbox}
    a = cert_client(broker, pki, "central-a", clients, **session)
    assert not a.connack.session_present
    subscribe(a, "boxes/+/custody")
    close_client(a)

    b = cert_client(broker, pki, "box-7", clients)
    b.publish("boxes/box-7/custody", b"entry 1", qos=1).wait_for_publish(5)
    close_client(b)

    ports = broker.ports
    if kill:
        # SIGKILL: only what the 1 s autosave wrote survives, so wait for it. Mosquitto logs
        # a save as it begins: the second one after the disconnect means the first is whole.
        broker.wait_for_log("Saving in-memory database", count=2, after="Client box-7 disconnected")
    broker.restart(kill=kill)
    assert broker.ports == ports

    a = cert_client(broker, pki, "central-a", clients, **session)
    assert a.connack.session_present
    message = inbox.get(5)
    assert (message.topic, message.payload, message.qos) == (
        "boxes/box-7/custody",
        b"entry 1",
        1,
    )


def test_acl_lines_restrict_cert_clients(make_broker, pki, clients):
    """Mosquitto 2.0's acl_file grants any SUBSCRIBE and filters on delivery instead; a denied
    QoS 1 PUBLISH gets PUBACK 0x87 "Not authorized" and is not delivered."""
    acl = ["pattern readwrite boxes/%u/#"]
    broker = make_broker("acl", acl_lines=acl)
    assert f"acl_file {broker.acl_path}" in broker.conf_path.read_text()
    inbox = Inbox()
    central = connect_client(broker.url_plain, client_id="central", on_message=inbox)
    clients.append(central)
    subscribe(central, "boxes/#")

    box = cert_client(broker, pki, "box-1", clients)
    subscribe(box, "boxes/box-2/#")  # granted (QoS 1) even though box-1 may not read it
    acks = {}
    done = threading.Event()

    def on_publish(client, userdata, mid, reason_code, properties):
        acks[mid] = reason_code.value
        if len(acks) == 2:
            done.set()

    box.on_publish = on_publish
    denied = box.publish("boxes/box-2/custody", b"forged", qos=1).mid
    allowed = box.publish("boxes/box-1/custody", b"mine", qos=1).mid
    assert done.wait(5), acks
    assert acks == {denied: 135, allowed: 0}
    assert inbox.get(5).payload == b"mine"
    assert inbox.empty_for(0.2)


def test_stop_and_kill_free_the_ports(tmp_path, pki):
    broker = Mosquitto(tmp_path / "b", pki, persistence=False)
    try:
        broker.start()
        assert broker.running
        assert broker.stop() == 0  # at once after start: see Mosquitto._terminate
        broker.start()
        assert broker.kill() == -9
        assert not broker.running
        for port in broker.ports:
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", port)) != 0
    finally:
        broker.stop()
