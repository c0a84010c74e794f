"""A local Mosquitto for the demo: TLS with client certificates on a free port, in one folder."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from edgebox.pki import LabCA


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LabBroker:
    """Mosquitto with one TLS listener requiring client certificates (CN = user name)."""

    def __init__(self, folder: Path, max_packet_size: int = 2 * 1024 * 1024):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca = LabCA(self.folder / "pki")
        self.server_cert, self.server_key = self.ca.issue("broker", server=True)
        self.port = _free_port()
        self.max_packet_size = max_packet_size
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> str | None:
        """Path of the mosquitto binary, or None."""
        return shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
            None,
        )

    @property
    def url(self) -> str:
        """The broker's mqtts:// URL."""
        return f"mqtts://127.0.0.1:{self.port}"

    def client(self, name: str) -> tuple[Path, Path]:
        """A client certificate and key for `name`."""
        return self.ca.issue(name)

    def _config(self) -> str:
        lines = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"listener {self.port} 127.0.0.1",
            f"cafile {self.ca.ca_path}",
            f"certfile {self.server_cert}",
            f"keyfile {self.server_key}",
            "require_certificate true",
            "use_identity_as_username true",
            f"max_packet_size {self.max_packet_size}",
            "max_queued_messages 100000",
            "persistence true",
            f"persistence_location {self.folder}/",
            f"log_dest file {self.folder / 'mosquitto.log'}",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")  # else mosquitto drops privileges before reading the key
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10) -> LabBroker:
        """Start mosquitto and wait until it accepts connections."""
        binary = self.available()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed")
        conf = self.folder / "mosquitto.conf"
        conf.write_text(self._config())
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited; see {self.folder / 'mosquitto.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("mosquitto did not start in time")

    def stop(self) -> None:
        """Stop mosquitto."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
