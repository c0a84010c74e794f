"""The metadata database: connection setup, recorded migrations and the single-writer discipline.

All writes go through `Store.write()`, which serialises them on one connection
under a lock, so the box never fights itself for SQLite's write lock. Readers
get their own connection per thread. Checkpointing is left to SQLite's
defaults and to Litestream: nothing here truncates or vacuums the WAL.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

BUSY_TIMEOUT_MS = 30_000  # Litestream locks the database briefly for its checkpoints
# SQLite's memory in a process that opens a Store (the box, its commands), a soft limit: page
# caches recycle their pages once it is reached. Each thread reads through a connection of its
# own, and each connection's page cache grows to 2 MiB by default: some 30 threads of a box
# would slowly fill 60 MiB of them. The file's pages stay in the kernel's page cache, shared
# by all connections. (A SQLite built without memory statistics ignores it.)
SQLITE_SOFT_HEAP_LIMIT = 16 << 20
migrations = Migrations("edgebox")


@migrations()
def m001_core(db: sqlite_utils.Database) -> None:
    """Devices, pairing codes, uploads, recordings, custody, checkpoints, users, outbox."""
    db.executescript(
        """
        CREATE TABLE devices (
            id TEXT PRIMARY KEY,
            serial TEXT NOT NULL,
            model TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            paired_at TEXT NOT NULL,
            revoked_at TEXT,
            last_seen_at TEXT
        );
        CREATE INDEX devices_serial ON devices(serial);
        CREATE TABLE pairing_codes (
            code_hash TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT,
            device_id TEXT REFERENCES devices(id)
        );
        CREATE TABLE uploads (
            id TEXT PRIMARY KEY,
            device_id TEXT NOT NULL REFERENCES devices(id),
            recording_id TEXT NOT NULL UNIQUE,
            length INTEGER NOT NULL,
            metadata TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN
                ('receiving', 'finished', 'failed', 'terminated', 'expired')),
            resume_key TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            error TEXT
        );
        CREATE INDEX uploads_state ON uploads(state, expires_at);
        CREATE TABLE recordings (
            id TEXT PRIMARY KEY,
            upload_id TEXT NOT NULL UNIQUE REFERENCES uploads(id),
            device_id TEXT NOT NULL REFERENCES devices(id),
            serial TEXT NOT NULL,
            filename TEXT,
            user_id TEXT,
            started_at TEXT,
            stopped_at TEXT,
            trigger_on TEXT,
            trigger_off TEXT,
            pre_event_seconds REAL,
            gps TEXT,
            category TEXT,
            warned INTEGER,
            exemption TEXT,
            camera_sha256 TEXT,
            evidence_sha256 TEXT NOT NULL,
            stored_sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            stored_size INTEGER NOT NULL,
            vault_file TEXT NOT NULL,
            metadata TEXT NOT NULL,
            received_at TEXT NOT NULL,
            incident TEXT,
            notes TEXT,
            legal_hold INTEGER NOT NULL DEFAULT 0,
            sync_state TEXT NOT NULL DEFAULT 'pending',
            sealed INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX recordings_started ON recordings(started_at);
        CREATE INDEX recordings_device ON recordings(device_id, started_at);
        CREATE INDEX recordings_category ON recordings(category, started_at);
        CREATE INDEX recordings_sync ON recordings(sync_state, started_at);
        CREATE TABLE custody (
            seq INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            event TEXT NOT NULL,
            actor TEXT NOT NULL,
            subject TEXT,
            details TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX custody_subject ON custody(subject, seq);
        CREATE TABLE checkpoints (
            seq INTEGER PRIMARY KEY REFERENCES custody(seq),
            ts TEXT NOT NULL,
            head_hash TEXT NOT NULL,
            key_id TEXT NOT NULL,
            signature TEXT NOT NULL
        );
        CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('crew', 'supervisor', 'admin')),
            password_hash TEXT NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL
        );
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            ref TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 100,
            payload TEXT NOT NULL,
            created_at TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'queued',
            attempts INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX outbox_queue ON outbox(state, priority, id);
        """
    )


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")


def connect(path: Path) -> sqlite_utils.Database:
    """Open the database file with WAL, foreign keys, a busy timeout and full fsync."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    _configure(conn)
    db = sqlite_utils.Database(conn)
    if db.journal_mode != "wal":
        db.enable_wal()
    return db


def migrate(path: Path, migration_set: Migrations = migrations) -> list[str]:
    """Apply pending migrations, backing up a database that already has data first.

    A lock file serialises processes that open the same database at once (two
    central workers starting together must not both create the tables).
    """
    path = Path(path)
    with open(path.with_name(path.name + ".migrate-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        db = connect(path)
        try:
            pending = [m.name for m in migration_set.pending(db)]
            if pending and migration_set.applied(db):
                with sqlite3.connect(path.with_name(path.name + ".pre-migration")) as backup:
                    db.conn.backup(backup)
            migration_set.apply(db)
            return pending
        finally:
            db.close()


class Store:
    """The box's database: one serialised writer, per-thread readers."""

    def __init__(self, path: Path):
        self.path = Path(path)
        migrate(self.path)
        self._writer = connect(self.path)
        self._write_lock = threading.RLock()
        self._writer.conn.execute(f"PRAGMA soft_heap_limit = {SQLITE_SOFT_HEAP_LIMIT}")
        self._local = threading.local()
        # Each reading thread's connection, closed by the next thread that opens one once its
        # own has ended: threads that come and go (a camera's puller, a job's worker) leave
        # no file open and no page cache behind.
        self._readers: dict[threading.Thread, sqlite_utils.Database] = {}
        self._readers_lock = threading.Lock()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction on the single writer connection; nested calls join it.

        BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that reads
        and then writes fails at once (SQLITE_BUSY_SNAPSHOT, no busy wait) whenever another
        process, such as Litestream, committed in between.
        """
        with self._write_lock:
            conn = self._writer.conn
            if conn.in_transaction:
                with self._writer.atomic():  # a savepoint inside the outer transaction
                    yield self._writer
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @property
    def read(self) -> sqlite_utils.Database:
        """This thread's reader connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.path)
            self._local.db = db
            with self._readers_lock:
                for ended in [t for t in self._readers if not t.is_alive()]:
                    self._readers.pop(ended).close()
                self._readers[threading.current_thread()] = db
        return db

    def query(self, sql: str, params: tuple | dict = ()) -> list[dict]:
        """Run a read query and return plain dict rows."""
        return [dict(row) for row in self.read.conn.execute(sql, params).fetchall()]

    def one(self, sql: str, params: tuple | dict = ()) -> dict | None:
        """Run a read query and return the first row as a dict, or None."""
        row = self.read.conn.execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._readers_lock:
            for db in self._readers.values():
                db.close()
            self._readers.clear()
        self._writer.close()


@migrations()
def m002_sync_state(db: sqlite_utils.Database) -> None:
    """Small key-value state of the upstream link (cursor of custody sent, link status)."""
    db.executescript(
        """
        CREATE TABLE sync_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        """
    )


@migrations()
def m003_user_security(db: sqlite_utils.Database) -> None:
    """Login throttling and lockout, and a session epoch that logs a user out everywhere."""
    db.executescript(
        """
        ALTER TABLE users ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE users ADD COLUMN locked_until TEXT;
        ALTER TABLE users ADD COLUMN session_epoch INTEGER NOT NULL DEFAULT 0;
        """
    )


@migrations()
def m004_recordings_listing(db: sqlite_utils.Database) -> None:
    """Indexes for the recordings list (`edgebox.catalog.search_sql`): newest first
    (received_at, id), alone or after one equality filter (camera, user, category, sync state,
    incident), and the compliance gap "no warned/exemption answer". Each serves a filtered
    page and its cursor in index order, with no sort and no scan of the table. A time filter
    (started_at) sorts only index entries: (started_at, received_at, id) covers it."""
    db.executescript(
        """
        CREATE INDEX recordings_received ON recordings(received_at, id);
        CREATE INDEX recordings_serial_received ON recordings(serial, received_at, id);
        CREATE INDEX recordings_user_received ON recordings(user_id, received_at, id);
        CREATE INDEX recordings_category_received ON recordings(category, received_at, id);
        CREATE INDEX recordings_sync_received ON recordings(sync_state, received_at, id);
        CREATE INDEX recordings_incident ON recordings(incident, received_at, id);
        CREATE INDEX recordings_started_received ON recordings(started_at, received_at, id);
        CREATE INDEX recordings_gap_warning ON recordings(received_at, id)
            WHERE warned IS NULL AND exemption IS NULL;
        """
    )


@migrations()
def m005_awaiting_seal(db: sqlite_utils.Database) -> None:
    """The recordings central confirmed that the box has yet to seal (sealing waits until the
    uplink has nothing left to send): found and counted without a scan of the synced ones."""
    db.executescript(
        """
        CREATE INDEX recordings_awaiting_seal ON recordings(received_at, id)
            WHERE sync_state = 'synced' AND sealed = 0;
        """
    )


@migrations()
def m120_security_web_sessions(db: sqlite_utils.Database) -> None:
    """Web sessions held by the box, so a logout ends one on the server: the cookie carries a
    random session id, the table its SHA-256 (a replica or a stolen database holds no usable
    id). A session row ends at logout, logout everywhere, a disabled account or a changed
    password; a cookie whose row has ended is refused."""
    db.executescript(
        """
        CREATE TABLE web_sessions (
            id TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),
            source TEXT,
            created_at TEXT NOT NULL,
            ended_at TEXT
        );
        CREATE INDEX web_sessions_user ON web_sessions(user_id) WHERE ended_at IS NULL;
        """
    )


@migrations()
def m120_security_deferred_length(db: sqlite_utils.Database) -> None:
    """An upload's length may be unknown (tus creation-defer-length): `uploads.length` is NULL
    until a PATCH declares it with Upload-Length."""
    db["uploads"].transform(not_null={"length": False})


@migrations()
def m120_security_upload_concat(db: sqlite_utils.Database) -> None:
    """tus concatenation: `uploads.concat` is NULL for an upload that becomes a recording by
    itself, 'partial' for a part still taking bytes, 'partial-done' for a complete part
    (sealed, waiting for its final upload; never a recording), 'final' for the upload that
    joins parts into one recording."""
    db.execute("ALTER TABLE uploads ADD COLUMN concat TEXT")


@migrations()
def m116_compliance_indexes(db: sqlite_utils.Database) -> None:
    """Indexes of the compliance report (`edgebox.compliance`): recordings by pre-event length,
    recordings with no valid warning answer (unanswered, or not warned without a reason), and
    recordings on legal hold, each carrying the report's filter columns so a check is counted,
    grouped and filtered from its index alone; and a camera's recordings by evidence hash (an
    upload the box already holds is answered with that recording, not stored twice)."""
    db.executescript(
        """
        CREATE INDEX recordings_pre_event ON recordings(
            pre_event_seconds, received_at, id, serial, user_id, category, started_at);
        CREATE INDEX recordings_gap_answer ON recordings(
            received_at, id, serial, user_id, category, started_at)
            WHERE exemption IS NULL AND COALESCE(warned, 0) = 0;
        CREATE INDEX recordings_held ON recordings(
            received_at, id, serial, user_id, category, started_at) WHERE legal_hold = 1;
        CREATE INDEX recordings_serial_evidence ON recordings(serial, evidence_sha256);
        """
    )


@migrations()
def m114_axis_content_destination(db: sqlite_utils.Database) -> None:
    """The Axis body-worn content destination (docs/axis.md): its accounts, the Swift
    containers and objects an Axis system controller created, cameras registered by it
    (`devices.source`, `controller_serial`), and the grouping of one Axis recording's vault
    files: each object is its own recording row, `axis_recording` names its container, and
    only the lead clip is `listed` (the recordings list shows the group once)."""
    db.executescript(
        """
        ALTER TABLE devices ADD COLUMN source TEXT;
        ALTER TABLE devices ADD COLUMN controller_serial TEXT;
        ALTER TABLE devices ADD COLUMN name TEXT;
        ALTER TABLE recordings ADD COLUMN axis_recording TEXT;
        ALTER TABLE recordings ADD COLUMN listed INTEGER NOT NULL DEFAULT 1;
        CREATE INDEX recordings_axis ON recordings(axis_recording)
            WHERE axis_recording IS NOT NULL;
        CREATE TABLE axis_accounts (
            username TEXT PRIMARY KEY,
            key_hash TEXT NOT NULL,
            created_at TEXT NOT NULL,
            disabled_at TEXT
        );
        CREATE TABLE axis_containers (
            name TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('system', 'users', 'devices', 'recording')),
            account TEXT NOT NULL,
            user_uuid TEXT,
            serial TEXT,
            device_id TEXT REFERENCES devices(id),
            status TEXT NOT NULL DEFAULT 'Transferring',
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            completed_at TEXT
        );
        CREATE INDEX axis_containers_kind ON axis_containers(kind, created_at);
        CREATE TABLE axis_objects (
            container TEXT NOT NULL REFERENCES axis_containers(name),
            name TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN
                ('system', 'user', 'device', 'clip', 'key', 'bookmark', 'gnss')),
            recording_id TEXT REFERENCES recordings(id),
            metadata TEXT NOT NULL DEFAULT '{}',
            etag TEXT NOT NULL,
            size INTEGER NOT NULL,
            body BLOB,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (container, name)
        );
        """
    )


@migrations()
def m119_ui_user_language(db: sqlite_utils.Database) -> None:
    """Each user's language for the web UI (NULL: follow the browser)."""
    db["users"].add_column("language", str)


@migrations()
def m115_rtsp_cameras(db: sqlite_utils.Database) -> None:
    """Cameras the box pulls from over RTSP (edgebox/recorder): one row per camera, tied to
    its `devices` row (so its recordings name a device like uploaded ones). The credentials
    are sealed (AES-GCM under a key derived from the box's ingest key), the URL holds none.
    `state`, `state_since` and `error` are the puller's live state, written on each change;
    `onvif_xaddr` is the device service of a camera added by ONVIF (its events trigger)."""
    db.executescript(
        """
        CREATE TABLE rtsp_cameras (
            device_id TEXT PRIMARY KEY REFERENCES devices(id),
            name TEXT NOT NULL UNIQUE,
            url TEXT NOT NULL,
            credentials TEXT,
            pre_event_seconds REAL NOT NULL,
            post_event_seconds REAL NOT NULL,
            added_at TEXT NOT NULL,
            added_by TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'starting',
            state_since TEXT,
            streaming_since TEXT,
            offline_since TEXT,
            error TEXT,
            onvif_xaddr TEXT
        );
        """
    )


@migrations()
def m121_header_changes(db: sqlite_utils.Database) -> None:
    """Header rewrites (seal, re-wrap) recorded before they reach the file: the new stored
    hash, the sealed flag and the custody entry to log once the file carries it. A row
    left by a crash is finished or dropped at the next start, by the file's own hash
    (`header_changes.settle`)."""
    db.executescript(
        """
        CREATE TABLE header_changes (
            recording_id TEXT PRIMARY KEY REFERENCES recordings(id),
            stored_sha256 TEXT NOT NULL,
            sealed INTEGER NOT NULL,
            event TEXT NOT NULL,
            actor TEXT NOT NULL,
            details TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        """
    )
