"""A real PostgreSQL (Debian's `postgresql` package) started by the tests: initdb and pg_ctl on a
free loopback port, as the `postgres` user when the tests run as root (root cannot run the
server). Its data lives in a fresh folder under the system's temp dir (owned by that user,
since pytest's tmp_path is private to root) and is removed at the end."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.brokers import _free_port

USER = "edgebox"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        raise RuntimeError(f"{name} not found: apt-get install postgresql")
    return found[-1]


class PostgresServer:
    """One server with trust authentication on 127.0.0.1 only (a test server, no password)."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="edgebox-pg-"))
        self.port = _free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        """initdb, then start and wait until it accepts connections."""
        if self.as_root:
            shutil.chown(self.folder, "postgres", "postgres")
        data = self.folder / "data"
        self._run(_bin("initdb"), "-D", str(data), "-A", "trust", "-U", USER, "--no-sync")
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=on "
            "-c max_connections=200 -c shared_buffers=64MB"
        )
        self._run(
            _bin("pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(self.folder / "log"),
            "-w",
            "start",
        )
        return self

    def url(self, database: str = "postgres") -> str:
        """A URL without a password (trust on loopback)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        try:
            self._run(_bin("pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the session."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()
