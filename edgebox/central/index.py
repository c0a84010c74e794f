"""Central's index: boxes, recordings, custody, checkpoints, alarms.

SQLite in the work folder for one node (`Index`, the default); PostgreSQL when several
nodes share the work (`edgebox.central.index_pg.PgIndex`), with the same migrations."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

from edgebox.clock import iso
from edgebox.db import connect, migrate

migrations = Migrations("edgebox-central")


@migrations()
def c001_index(db: sqlite_utils.Database) -> None:
    """The central index tables."""
    db.executescript(
        """
        CREATE TABLE boxes (
            box_id TEXT PRIMARY KEY,
            identity TEXT NOT NULL,
            first_seen TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            custody_seq INTEGER NOT NULL DEFAULT 0,
            custody_hash TEXT NOT NULL
        );
        CREATE TABLE recordings (
            box_id TEXT NOT NULL,
            recording_id TEXT NOT NULL,
            tid TEXT NOT NULL,
            evidence_sha256 TEXT NOT NULL,
            stored_sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            file TEXT NOT NULL,
            manifest TEXT NOT NULL,
            signature TEXT NOT NULL,
            received_at TEXT NOT NULL,
            PRIMARY KEY (box_id, recording_id)
        );
        CREATE TABLE custody (
            box_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts TEXT NOT NULL,
            event TEXT NOT NULL,
            actor TEXT NOT NULL,
            subject TEXT,
            details TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            PRIMARY KEY (box_id, seq)
        );
        CREATE INDEX custody_subject ON custody(box_id, subject);
        CREATE TABLE checkpoints (
            box_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts TEXT NOT NULL,
            head_hash TEXT NOT NULL,
            key_id TEXT NOT NULL,
            signature TEXT NOT NULL,
            PRIMARY KEY (box_id, seq)
        );
        CREATE TABLE events (
            box_id TEXT NOT NULL,
            id TEXT NOT NULL,
            type TEXT NOT NULL,
            body TEXT NOT NULL,
            received_at TEXT NOT NULL,
            PRIMARY KEY (box_id, id)
        );
        CREATE TABLE alarms (
            id INTEGER PRIMARY KEY,
            box_id TEXT,
            ts TEXT NOT NULL,
            message TEXT NOT NULL
        );
        CREATE TABLE rejections (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            topic TEXT NOT NULL,
            reason TEXT NOT NULL
        );
        """
    )


@migrations()
def c002_superseded_custody(db: sqlite_utils.Database) -> None:
    """Custody entries and checkpoints a restored box's chain replaced: kept, never deleted."""
    db.executescript(
        """
        CREATE TABLE custody_superseded (
            box_id TEXT NOT NULL,
            superseded_at TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts TEXT NOT NULL,
            event TEXT NOT NULL,
            actor TEXT NOT NULL,
            subject TEXT,
            details TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            PRIMARY KEY (box_id, superseded_at, seq)
        );
        CREATE TABLE checkpoints_superseded (
            box_id TEXT NOT NULL,
            superseded_at TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts TEXT NOT NULL,
            head_hash TEXT NOT NULL,
            key_id TEXT NOT NULL,
            signature TEXT NOT NULL,
            PRIMARY KEY (box_id, superseded_at, seq)
        );
        """
    )


class Notes:
    """The alarms and refusals every index kind writes the same way (`alarm`, `reject`)."""

    def alarm(self, box_id: str | None, message: str) -> None:
        """Raise an alarm that operators must look at."""
        alarm(self, box_id, message)

    def reject(self, topic: str, reason: str) -> None:
        """Log a refused message."""
        reject(self, topic, reason)


class Index(Notes):
    """Per-thread connections to `central.db`; writes use short IMMEDIATE transactions."""

    def __init__(self, store_dir: Path):
        self.path = Path(store_dir) / "central.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        migrate(self.path, migrations)
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect(self.path)
            with self._lock:
                self._all.append(db)
        return db

    def write(self):
        """A write transaction (BEGIN IMMEDIATE, so concurrent workers queue, never deadlock)."""
        return _Immediate(self.db)

    def query(self, sql: str, params=()) -> list[dict]:
        """Rows as dicts."""
        return [dict(r) for r in self.db.conn.execute(sql, params).fetchall()]

    def one(self, sql: str, params=()) -> dict | None:
        """The first row as a dict, or None."""
        row = self.db.conn.execute(sql, params).fetchone()
        return dict(row) if row else None

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            for db in self._all:
                db.close()
            self._all.clear()


def alarm(index, box_id: str | None, message: str) -> None:
    """Raise an alarm in `index` (either kind)."""
    with index.write() as db:
        db.execute(
            "INSERT INTO alarms (box_id, ts, message) VALUES (?, ?, ?)", [box_id, iso(), message]
        )


def reject(index, topic: str, reason: str) -> None:
    """Log a refused message in `index` (either kind)."""
    with index.write() as db:
        db.execute(
            "INSERT INTO rejections (ts, topic, reason) VALUES (?, ?, ?)",
            [iso(), topic[:300], reason[:500]],
        )


def open_index(spec: str, work_dir: Path):
    """The index `--index` names: `sqlite` (central.db in the work folder) or a
    `postgresql://USER@HOST:PORT/DB` URL (password from PGPASSWORD or ~/.pgpass)."""
    if spec in ("", "sqlite"):
        return Index(work_dir)
    from edgebox.central.index_pg import PgIndex

    return PgIndex(spec)


class _Immediate:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.conn.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, tb):
        self.db.conn.execute("COMMIT" if kind is None else "ROLLBACK")
        return False
