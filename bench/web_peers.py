"""The web benchmark's peer: Datasette serving a copy of the box's database, read-only.

The copy is taken with SQLite's backup API from the filled box (so it holds the same table,
the same indexes and whatever statistics the box keeps), switched to a rollback journal and
opened by Datasette with `-i` (immutable) and the `--inspect-file` of `datasette inspect`,
Datasette's documented set-up for a read-only database (unfiltered counts come from the
inspect file). It serves HTTPS with the box's own certificate and key, so both servers pay
for TLS; the client keeps its connection alive for both.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import requests

from bench.common import Proc, free_port

DATABASE = "edgebox"  # the copy's file stem: Datasette's URL path /edgebox/recordings


def copy_database(source: Path, target: Path) -> Path:
    """A consistent copy of the SQLite database `source` (live, WAL) as a plain file."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode = DELETE")
    finally:
        dst.close()
        src.close()
    return target


def datasette_cmd() -> list[str]:
    """argv prefix for the `datasette` command of this Python environment."""
    exe = Path(sys.executable).with_name("datasette")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "datasette"]


def datasette_version() -> str:
    """The installed Datasette's version."""
    from datasette.version import __version__

    return __version__


class Datasette:
    """`datasette serve` of a copy of `source` in `folder`, over HTTPS on a free port."""

    def __init__(self, folder: Path, source: Path, cert: str, key: str, log_path: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.db = copy_database(source, folder / f"{DATABASE}.db")
        self.inspect = folder / "inspect.json"
        with open(folder / "inspect.log", "wb") as out:
            subprocess.run(
                [*datasette_cmd(), "inspect", str(self.db), "--inspect-file", str(self.inspect)],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.cert = cert
        self.proc = Proc(
            "datasette",
            [
                *datasette_cmd(),
                "serve",
                "-i",
                str(self.db),
                "--inspect-file",
                str(self.inspect),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--ssl-certfile",
                cert,
                "--ssl-keyfile",
                key,
            ],
            log_path,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll `/-/versions.json` until Datasette answers 200."""
        deadline = time.monotonic() + timeout
        with requests.Session() as session:
            session.trust_env = False
            while time.monotonic() < deadline:
                if not self.proc.alive():
                    raise RuntimeError(f"datasette exited early:\n{self.proc.tail()}")
                with contextlib.suppress(requests.RequestException):
                    answer = session.get(f"{self.url}/-/versions.json", verify=self.cert, timeout=2)
                    if answer.status_code == 200:
                        return
                time.sleep(0.2)
        raise RuntimeError(f"datasette not ready after {timeout}s:\n{self.proc.tail()}")

    def stop(self) -> None:
        """Stop the server."""
        self.proc.stop()
