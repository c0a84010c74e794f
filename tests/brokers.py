"""A real Mosquitto broker per test: throwaway PKI, three listeners on free ports, paho helpers.

Nothing here is mocked. `TestPKI` writes a CA, a server certificate and client certificates
with `cryptography`; `Mosquitto` writes a config and runs Debian's `/usr/sbin/mosquitto` on it;
`connect_client` returns a started, connected paho-mqtt 2.x client (callback API v2, MQTT 5).

Typical use::

    pki = TestPKI(tmp_path / "pki")
    with Mosquitto(tmp_path / "broker", pki) as broker:
        cert, key = pki.client_cert("box-1")
        client = connect_client(broker.url_tls_cert, client_id="box-1",
                                ca=broker.ca_path, cert=cert, key=key)
        try:
            ...
        finally:
            close_client(client)
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
DEFAULT_MAX_PACKET_SIZE = 2 * 1024 * 1024 + 4096
RUNNING = " running\n"  # end of the "mosquitto version X running" log line


# --------------------------------------------------------------------------- PKI


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by the owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class TestPKI:
    """A throwaway CA (EC P-256) with a server certificate for 127.0.0.1/localhost.

    Files under `folder`: `ca.crt`, `ca.key`, `server.crt`, `server.key`, and
    `client-<cn>.crt` / `client-<cn>.key` for each `client_cert(cn)` call.
    Certificates are valid from one day ago for `days` days.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, folder: Path | str, *, days: int = 30, name: str = "EdgeBox Test CA"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.days = days
        self._lock = threading.Lock()

        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key())
        self.ca_cert = (
            self._builder(ca_name, ca_name, self.ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_path = self.folder / "ca.crt"
        self.ca_key_path = self.folder / "ca.key"
        self.ca_path.write_bytes(_cert_pem(self.ca_cert))
        _write_private(self.ca_key_path, _key_pem(self.ca_key))

        self.server_cert_path, self.server_key_path = self._issue(
            "localhost",
            "server",
            ExtendedKeyUsageOID.SERVER_AUTH,
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
        )

    def _builder(
        self, subject: x509.Name, issuer: x509.Name, public_key
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=self.days))
        )

    def _issue(
        self,
        common_name: str,
        stem: str,
        usage: x509.ObjectIdentifier,
        san: x509.SubjectAlternativeName | None = None,
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            self._builder(subject, self.ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                critical=False,
            )
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        cert_path = self.folder / f"{stem}.crt"
        key_path = self.folder / f"{stem}.key"
        cert_path.write_bytes(_cert_pem(cert))
        _write_private(key_path, _key_pem(key))
        return cert_path, key_path

    def client_cert(self, common_name: str) -> tuple[Path, Path]:
        """Issue a client certificate (CN=`common_name`, clientAuth); return (cert, key) paths.

        With `use_identity_as_username true` the broker uses the CN as the MQTT username.
        Calling it again for the same CN issues a fresh certificate and overwrites the files.
        """
        if not common_name:
            raise ValueError("common_name must not be empty")
        stem = "client-" + re.sub(r"[^A-Za-z0-9._-]", "_", common_name)
        with self._lock:
            return self._issue(common_name, stem, ExtendedKeyUsageOID.CLIENT_AUTH)


PKI = TestPKI


# --------------------------------------------------------------------------- broker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class BrokerError(RuntimeError):
    """Mosquitto failed to start or stop; the message carries the log tail."""


class Mosquitto:
    """A real mosquitto process with three listeners on 127.0.0.1 and free ports.

    - `port_tls_cert` / `url_tls_cert`: TLS, client certificate required, CN = username.
    - `port_tls_password` / `url_tls_password`: TLS, username/password (`add_user`).
    - `port_plain` / `url_plain`: plain TCP, anonymous allowed (benchmarks, raw comparisons).

    `acl_lines` (if given) become an `acl_file` applied to both TLS listeners; the plain
    listener has no ACL. Ports stay the same across `restart()`. Persistence (the default)
    keeps sessions and queued QoS 1/2 messages across restarts; with `autosave_interval 1`
    even a `kill()` loses at most about one second of state.
    """

    def __init__(
        self,
        folder: Path | str,
        pki: TestPKI,
        *,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        persistence: bool = True,
        acl_lines: Iterable[str] | None = None,
        max_queued_messages: int = 100_000,
        max_inflight_messages: int = 0,
        extra_config: Iterable[str] = (),
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.max_packet_size = max_packet_size
        self.persistence = persistence
        self.acl_lines = list(acl_lines) if acl_lines is not None else None
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.extra_config = list(extra_config)

        self.conf_path = self.folder / "mosquitto.conf"
        self.log_path = self.folder / "mosquitto.log"
        self.stderr_path = self.folder / "mosquitto.stderr"
        self.password_path = self.folder / "passwords"
        self.acl_path = self.folder / "acl"
        self.persistence_dir = self.folder / "persistence"
        self.persistence_dir.mkdir(exist_ok=True)

        self._users: dict[str, str] = {}
        self._proc: subprocess.Popen | None = None
        self._started_once = False
        self._pick_ports()

    # ---- addresses

    def _pick_ports(self) -> None:
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(_free_port())
        self.port_tls_cert, self.port_tls_password, self.port_plain = sorted(ports)

    @property
    def ports(self) -> tuple[int, int, int]:
        """(tls_cert, tls_password, plain)."""
        return self.port_tls_cert, self.port_tls_password, self.port_plain

    @property
    def url_tls_cert(self) -> str:
        return f"mqtts://127.0.0.1:{self.port_tls_cert}"

    @property
    def url_tls_password(self) -> str:
        return f"mqtts://127.0.0.1:{self.port_tls_password}"

    @property
    def url_plain(self) -> str:
        return f"mqtt://127.0.0.1:{self.port_plain}"

    @property
    def ca_path(self) -> Path:
        return self.pki.ca_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ---- configuration

    def _listener_tls(self, port: int) -> list[str]:
        return [
            f"listener {port} 127.0.0.1",
            "protocol mqtt",
            f"cafile {self.pki.ca_path}",
            f"certfile {self.pki.server_cert_path}",
            f"keyfile {self.pki.server_key_path}",
            "allow_anonymous false",
        ]

    def _config(self) -> str:
        lines = [
            "# written by tests/brokers.py",
            "per_listener_settings true",
            "user root",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
            # Deliberate queue limits: the default (1000 queued per client) silently drops.
            f"max_queued_messages {self.max_queued_messages}",
            "max_queued_bytes 0",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"max_packet_size {self.max_packet_size}",
            f"message_size_limit {self.max_packet_size}",
            "set_tcp_nodelay true",
        ]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.persistence_dir}/",
                "persistence_file mosquitto.db",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        lines += self.extra_config
        acl = [f"acl_file {self.acl_path}"] if self.acl_lines is not None else []
        lines += [""]
        lines += self._listener_tls(self.port_tls_cert)
        lines += ["require_certificate true", "use_identity_as_username true", *acl, ""]
        lines += self._listener_tls(self.port_tls_password)
        lines += ["require_certificate false", f"password_file {self.password_path}", *acl, ""]
        lines += [f"listener {self.port_plain} 127.0.0.1", "protocol mqtt", "allow_anonymous true"]
        return "\n".join(lines) + "\n"

    def _write_passwords(self) -> None:
        if not self._users:
            _write_private(self.password_path, b"")
            return
        first = True
        for name, password in self._users.items():
            command = [MOSQUITTO_PASSWD, "-b"]
            if first:
                command.append("-c")
            command += [str(self.password_path), name, password]
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
            if result.returncode != 0:
                raise BrokerError(f"mosquitto_passwd failed: {result.stdout}{result.stderr}")
            first = False
        os.chmod(self.password_path, 0o600)

    def _write_files(self) -> None:
        self._write_passwords()
        if self.acl_lines is not None:
            self.acl_path.write_text("\n".join(self.acl_lines) + "\n")
        self.conf_path.write_text(self._config())

    def add_user(self, name: str, password: str) -> None:
        """Add (or change) a user for the password listener; reloads a running broker."""
        if not name or ":" in name:
            raise ValueError(f"invalid MQTT user name: {name!r}")
        self._users[name] = password
        if self.running:
            self._write_passwords()
            self.reload()

    def set_acl(self, acl_lines: Iterable[str]) -> None:
        """Replace the ACL; a running broker is reloaded only if it already had an acl_file."""
        had_acl = self.acl_lines is not None
        self.acl_lines = list(acl_lines)
        if self.running:
            if not had_acl:
                raise BrokerError("acl_file is not in the running config: restart() instead")
            self.acl_path.write_text("\n".join(self.acl_lines) + "\n")
            self.reload()

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP the broker and wait until it logs that it reloaded its config.

        Mosquitto's event loop is single threaded: once "Reloading config" is logged, the
        new password file/ACL apply to every packet it processes afterwards.
        """
        if not self.running:
            raise BrokerError("broker is not running")
        before = self._log_text().count("Reloading config")
        deadline = time.monotonic() + timeout
        next_signal = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_signal:  # repeated, in case one is lost at startup
                self._proc.send_signal(signal.SIGHUP)
                next_signal = time.monotonic() + 1.0
            if self._log_text().count("Reloading config") > before:
                time.sleep(0.05)  # the reload itself runs right after the log line
                return
            time.sleep(0.02)
        raise BrokerError("mosquitto did not reload:\n" + self.log_tail())

    # ---- process control

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Write config files, launch mosquitto and wait until all three ports accept TCP.

        On the very first start, if a port was taken in the meantime, new ports are picked
        (up to three attempts). Later starts (restart) always reuse the same ports.
        """
        if self.running:
            raise BrokerError("broker already running")
        attempts = 1 if self._started_once else 3
        for attempt in range(attempts):
            try:
                self._launch(timeout)
            except BrokerError as error:
                if attempt + 1 < attempts and "Address already in use" in str(error):
                    self._pick_ports()
                    continue
                raise
            self._started_once = True
            return self
        raise AssertionError("unreachable")

    def _launch(self, timeout: float) -> None:
        self._write_files()
        running_before = self._log_text().count(RUNNING)
        with open(self.stderr_path, "ab") as err:
            self._proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        pending = list(self.ports)
        # The ports accept TCP once mosquitto listens, slightly before it installs its signal
        # handlers and logs "running"; wait for both so an early stop() is not fatal to it.
        while pending or self._log_text().count(RUNNING) <= running_before:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise BrokerError(f"mosquitto exited with {code}:\n{self.log_tail()}")
            if pending and _port_open(pending[0]):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                self._terminate(signal.SIGKILL)
                raise BrokerError(
                    f"mosquitto did not start (ports not open: {pending}):\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _terminate(self, sig: int, timeout: float = 10.0) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        # Mosquitto 2.0 installs its handlers, logs "running", then sets run = 1 and enters
        # its main loop: a SIGTERM in between is lost. Repeat the signal until it exits.
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=timeout)
        return proc.returncode

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (mosquitto saves its persistence file) and wait; returns the exit code."""
        return self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL: no final save, connections drop without DISCONNECT."""
        return self._terminate(signal.SIGKILL)

    def restart(self, *, kill: bool = False, timeout: float = 10.0) -> Mosquitto:
        """Stop (or kill) and start again on the same ports with the same persistence."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout)

    def __enter__(self) -> Mosquitto:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- logs

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(
        self, text: str, *, count: int = 1, after: str | None = None, timeout: float = 5.0
    ) -> str:
        """Wait until `text` occurs `count` times in the log (after the last `after`, if given).

        Mosquitto writes log lines asynchronously to what clients observe (a TLS alert reaches
        the client before the broker logs why), so tests should wait rather than read once.
        Returns the log text; raises AssertionError with the log tail on timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            log = self._log_text()
            scope = log
            if after is not None:
                index = log.rfind(after)
                scope = log[index:] if index >= 0 else ""
            if scope.count(text) >= count:
                return log
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{text!r} not logged {count}x"
                    + (f" after {after!r}" if after else "")
                    + f" within {timeout} s:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def log_tail(self, lines: int = 40) -> str:
        """Last `lines` lines of the broker log (plus anything mosquitto wrote to stderr)."""
        text = self._log_text()
        if self.stderr_path.exists():
            stderr = self.stderr_path.read_text(errors="replace").strip()
            if stderr:
                text += "\n[stderr]\n" + stderr
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Mosquitto {state} cert={self.port_tls_cert} pw={self.port_tls_password} " + (
            f"plain={self.port_plain} folder={self.folder}>"
        )


# --------------------------------------------------------------------------- paho helpers


class ConnectRefused(ConnectionError):
    """The broker refused the connection (CONNACK failure) or dropped it before CONNACK.

    `reason_code` is the paho `ReasonCode` from CONNACK (e.g. 135 "Not authorized") or from
    the disconnect (paho reports a dropped socket, e.g. a TLS alert for a missing client
    certificate, as 128 "Unspecified error"), or None when `connect()` itself failed
    (TCP refused, TLS handshake error). `cause` is the underlying exception, if any.
    """

    def __init__(self, message: str, reason_code: ReasonCode | None = None, cause=None):
        super().__init__(message)
        self.reason_code = reason_code
        self.cause = cause


@dataclass
class Connack:
    """What the broker said in the CONNACK of `connect_client` (set as `client.connack`)."""

    session_present: bool
    reason_code: ReasonCode
    properties: Properties | None


class Inbox:
    """A thread-safe on_message callback that collects messages for `get()`."""

    def __init__(self) -> None:
        self._queue: queue.Queue[mqtt.MQTTMessage] = queue.Queue()

    def __call__(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        self._queue.put(message)

    def get(self, timeout: float = 5.0) -> mqtt.MQTTMessage:
        """Next message; raises queue.Empty after `timeout` seconds."""
        return self._queue.get(timeout=timeout)

    def empty_for(self, seconds: float) -> bool:
        """True if no message arrives within `seconds`."""
        try:
            self._queue.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


def connect_client(
    url: str,
    *,
    client_id: str,
    ca: Path | str | None = None,
    cert: Path | str | None = None,
    key: Path | str | None = None,
    username: str | None = None,
    password: str | None = None,
    protocol: int = mqtt.MQTTv5,
    clean_start: bool = True,
    session_expiry: int | None = None,
    keepalive: int = 30,
    on_message: Callable | None = None,
    setup: Callable[[mqtt.Client], None] | None = None,
    timeout: float = 10.0,
) -> mqtt.Client:
    """Connect a paho client (callback API v2) and return it started and connected.

    `mqtts://` URLs use TLS verified against `ca` (the server cert names 127.0.0.1 and
    localhost); `cert`/`key` present a client certificate. `session_expiry` sets the MQTT 5
    SessionExpiryInterval (needed for a session to outlive the connection) and
    `clean_start=False` resumes an existing session. `on_message` (and anything `setup` does
    to the client) is installed before CONNECT, so messages queued for a resumed session are
    not missed (they may be delivered in the calling thread, during this call). The CONNACK
    is recorded as `client.connack` (a `Connack`). The handshake runs in the calling thread;
    only after a successful CONNACK does `loop_start()` hand the client to paho's thread,
    which from then on reconnects automatically (reconnect_delay 1 s, doubling).

    Raises `ConnectRefused` (with `.reason_code`) if the broker refuses or drops the
    connection before a successful CONNACK; the client is then stopped and closed.
    Use `close_client()` when done.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or not parts.port:
        raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {url!r}")

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if protocol == mqtt.MQTTv5 else clean_start,
    )
    if parts.scheme == "mqtts":
        client.tls_set(
            ca_certs=str(ca) if ca else None,
            certfile=str(cert) if cert else None,
            keyfile=str(key) if key else None,
        )
    if username is not None:
        client.username_pw_set(username, password)
    if on_message is not None:
        client.on_message = on_message
    if setup is not None:
        setup(client)

    # Our callbacks wrap whatever `setup` installed and are replaced by those once connected.
    user_on_connect = client.on_connect
    user_on_disconnect = client.on_disconnect
    outcome: dict = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        outcome.setdefault("connack", Connack(bool(flags.session_present), reason_code, properties))
        if user_on_connect is not None:
            user_on_connect(client, userdata, flags, reason_code, properties)

    def on_disconnect(client, userdata, flags, reason_code, properties):
        outcome.setdefault("disconnect", reason_code)
        if user_on_disconnect is not None:
            user_on_disconnect(client, userdata, flags, reason_code, properties)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect

    connect_kwargs: dict = {"keepalive": keepalive}
    if protocol == mqtt.MQTTv5:
        connect_kwargs["clean_start"] = clean_start
        if session_expiry is not None:
            props = Properties(mqtt.PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
            connect_kwargs["properties"] = props

    def refuse(message: str, code: ReasonCode | None = None, cause=None) -> ConnectRefused:
        close_client(client)
        return ConnectRefused(message, code, cause)

    # Drive the handshake in this thread with client.loop(): paho's own loop thread would
    # retry a refused connection forever (reconnect_delay), which is not what a test wants.
    try:
        client.connect(parts.hostname, parts.port, **connect_kwargs)
    except OSError as error:
        raise refuse(f"cannot connect to {url}: {error!r}", None, error) from error
    deadline = time.monotonic() + timeout
    while "connack" not in outcome and "disconnect" not in outcome:
        rc = client.loop(0.05)
        if rc != mqtt.MQTT_ERR_SUCCESS and "disconnect" not in outcome:
            raise refuse(f"connection to {url} failed: {mqtt.error_string(rc)}")
        if time.monotonic() > deadline:
            raise refuse(f"no CONNACK from {url} within {timeout} s")

    connack = outcome.get("connack")
    if connack is None:
        code = outcome.get("disconnect")
        raise refuse(f"{url} dropped the connection before CONNACK: {code}", code)
    if connack.reason_code.is_failure:
        code = connack.reason_code
        raise refuse(f"{url} refused: {code} ({code.value})", code)

    client.on_connect = user_on_connect
    client.on_disconnect = user_on_disconnect
    client.connack = connack
    # client.loop() made a wake-up socket pair; loop_start() makes a new one without
    # closing the old, so close it here or it leaks (ResourceWarning).
    client._reset_sockets(sockpair_only=True)
    client.loop_start()
    return client


def cert_client(broker, pki, client_id: str, **kwargs) -> mqtt.Client:
    """`connect_client` on the broker's client-certificate TLS listener, with a certificate
    issued by `pki` for `client_id`."""
    cert, key = pki.client_cert(client_id)
    return connect_client(
        broker.url_tls_cert,
        client_id=client_id,
        ca=str(broker.ca_path),
        cert=str(cert),
        key=str(key),
        **kwargs,
    )


def close_client(client: mqtt.Client) -> None:
    """Disconnect (if connected), stop the network thread and close the client's sockets.

    Safe to call twice. If the broker is gone, paho's thread may be sleeping in its
    reconnect delay and this waits up to about a second: close clients before brokers.
    """
    try:
        if client.is_connected():
            client.disconnect()
    finally:
        client.loop_stop()
        # paho closes its sockets in __del__; close them now, deterministically.
        client._reset_sockets()
