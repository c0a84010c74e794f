"""The box: one object that owns the database writer, keys, ingest services and the web server."""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import ssl
import threading
import time
from pathlib import Path

from edgebox import custody, header_changes, retention, serving, storage, vault
from edgebox.clock import iso
from edgebox.config import Config
from edgebox.db import Store
from edgebox.errors import ConfigError, CustodyError
from edgebox.ingest.pairing import Pairing
from edgebox.ingest.uploads import IngestSettings, Uploads
from edgebox.keys import Keyring, certificate_fingerprint
from edgebox.replication.litestream import replication_status
from edgebox.review import ReviewKeys
from edgebox.sync import state as sync_state
from edgebox.users import Users

log = logging.getLogger("edgebox.box")


class Box:
    """A box opened from its config: services are ready; `start()` adds the server and jobs."""

    def __init__(self, config: Config):
        self.config = config
        data = config.data_dir
        if not (data / "box.db").exists() or not (data / "keys" / "identity.key").exists():
            raise ConfigError(f"no box at {data}; create one with `edgebox init`")
        self.store = Store(data / "box.db")
        self.keys = Keyring(data / "keys")
        self.pairing = Pairing(
            self.store, config.ingest.pairing_code_minutes, config.ingest.revoke_on_repair
        )
        self.users = Users(self.store)
        self.review = ReviewKeys(self)
        self.uploads = Uploads(
            self.store,
            self.keys,
            IngestSettings(
                data_dir=data,
                max_upload_bytes=config.ingest.max_upload_bytes,
                expire_hours=config.ingest.expire_hours,
                reserve_free_bytes=config.ingest.reserve_free_bytes,
                suite=config.vault.suite,
                segment_size=config.vault.segment_size,
            ),
        )
        from edgebox.axis import AxisDestination

        self.axis = AxisDestination(self)
        self._running: list = []
        self.recorder = None
        self.uplink = None
        self.replicator = None
        self.stop_event = threading.Event()

    @property
    def data_dir(self) -> Path:
        """The box's data folder."""
        return self.config.data_dir

    def start(self, listen: tuple[str, int] | None = None) -> Box:
        """Recover interrupted work, then start the HTTPS server and the scheduled jobs."""
        from edgebox.scheduler import start_scheduler
        from edgebox.server import WebServer

        report = self.uploads.recover()
        report["axis_dropped"] = self.axis.recover()
        with vault.header_change(self.uploads.vault_dir):  # after the journals were replayed
            settled = header_changes.settle(self)
            # A shred a crash cut short left its row live and its file aside: finished now,
            # not at the next sweep (until then `verify` found the file missing).
            shreds = retention.finish_interrupted(self)
        self._record_config()
        details = {"recovered": {k: len(v) for k, v in report.items()}}
        if any(settled.values()):  # which recordings, for the auditor
            details["header_changes"] = settled
        if shreds:
            details["shreds_completed"] = shreds
        custody.record(self.store, "box.started", "box", None, details)
        from edgebox.replication.litestream import Replicator

        # Not in _running: it must outlive the last checkpoint written by stop().
        self.replicator = Replicator(self.config).start()
        server = WebServer(self, listen or self.config.listen_address).start()
        self._running.append(server)
        serving.record(self.data_dir, server.url)
        self._running.append(start_scheduler(self))
        if self.config.recorder.enabled:
            from edgebox.recorder.service import Recorder

            self.recorder = Recorder(self).start()
            self._running.append(self.recorder)
        if self.config.upstream.broker:
            from edgebox.sync.uplink import Uplink

            self.uplink = Uplink(self).start()
            self._running.append(self.uplink)
        return self

    def _record_config(self) -> None:
        """Log the configuration in force, and which keys changed since the last start."""
        current = {
            f"{section}.{key}": value
            for section, values in self.config.to_dict().items()
            for key, value in values.items()
        }
        last = self.store.one(
            "SELECT details FROM custody WHERE event IN ('config.applied', 'config.changed') "
            "ORDER BY seq DESC LIMIT 1"
        )
        if last is None:
            custody.record(self.store, "config.applied", "box", None, {"config": current})
            return
        previous = json.loads(last["details"])["config"]
        changed = sorted(
            k for k in current.keys() | previous.keys() if current.get(k) != previous.get(k)
        )
        if changed:
            custody.record(
                self.store,
                "config.changed",
                "operator",
                None,
                {
                    "config": current,
                    "changed": changed,
                    "before": {k: previous.get(k) for k in changed},
                },
            )

    @property
    def url(self) -> str:
        """The base URL of the running web server."""
        return self._running[0].url

    def stop(self) -> None:
        """Stop what `start()` started, in reverse order, and close the database."""
        self.stop_event.set()
        try:
            try:
                self.checkpoint()
            except (CustodyError, sqlite3.DatabaseError) as exc:  # reported, not signed
                log.error("no checkpoint at shutdown: %s", getattr(exc, "message", exc))
            if self.uplink is not None and self.uplink.link.connected.is_set():
                self.uplink.flush_custody(timeout=5)  # the last signed head goes up too
            for part in reversed(self._running):
                part.stop()
            self._running.clear()
            serving.clear(self.data_dir)
            if self.replicator is not None:
                self.replicator.stop()
        finally:
            self.store.close()

    def checkpoint(self) -> dict | None:
        """Sign the custody chain's head now."""
        return custody.make_checkpoint(self.store, self.config.box.box_id, self.keys.identity())

    def recordings(self, limit: int = 50, before: str | None = None) -> list[dict]:
        """Recordings newest first, as plain rows."""
        sql = "SELECT * FROM recordings"
        params: list = []
        if before:
            sql += " WHERE received_at < ?"
            params.append(before)
        sql += " ORDER BY received_at DESC LIMIT ?"
        params.append(limit)
        return self.store.query(sql, tuple(params))

    def _answering(self) -> bool:
        """Whether the box's server answers on its listen address (a full TLS handshake)."""
        if self._running:
            return True
        host, port = self.config.listen_address
        if host in ("0.0.0.0", "::"):  # noqa: S104
            host = "127.0.0.1"
        try:
            with socket.create_connection((host, port), timeout=0.5) as sock:
                if self.config.server.tls:
                    context = ssl.create_default_context(cafile=str(self.keys.tls_cert))
                    context.check_hostname = False
                    with context.wrap_socket(sock):
                        pass
                return True
        except (OSError, ssl.SSLError):
            return False

    def status(self) -> dict:
        """What the box holds and how it is doing, for `edgebox status` and the API."""
        from edgebox.recorder.cameras import camera_alarms
        from edgebox.scheduler import job_alarms, jobs_report

        q = self.store.one
        head = q("SELECT seq, hash, ts FROM custody ORDER BY seq DESC LIMIT 1") or {}
        last_cp = q("SELECT seq, ts FROM checkpoints ORDER BY seq DESC LIMIT 1")
        central = None
        try:
            central = self.keys.central()[0]
        except Exception:  # noqa: BLE001 - reported as missing
            central = None
        return {
            "box_id": self.config.box.box_id,
            "organisation": self.config.box.organisation,
            "site": self.config.box.site,
            "time": iso(),
            "recordings": q(
                "SELECT COALESCE(SUM(sync_state != 'deleted'), 0) AS n, "
                "COALESCE(SUM(CASE WHEN sync_state != 'deleted' THEN size END), 0) AS bytes, "
                "COALESCE(SUM(sync_state = 'deleted'), 0) AS deleted FROM recordings"
            ),
            "cameras": q(
                "SELECT COUNT(*) AS paired, COALESCE(SUM(revoked_at IS NOT NULL), 0) AS revoked "
                "FROM devices"
            ),
            "uploads_in_progress": self.uploads.in_progress(),
            "custody": {
                "entries": head.get("seq", 0),
                "head_hash": head.get("hash"),
                "last_checkpoint": last_cp,
            },
            "storage": storage.report(self),
            "jobs": jobs_report(self),
            "alarms": [
                *storage.alarms(self),
                *job_alarms(self),
                *camera_alarms(self.store, time.time()),
            ],
            "rtsp_cameras": q(
                "SELECT COUNT(*) AS total, COALESCE(SUM(state = 'streaming'), 0) AS streaming "
                "FROM rtsp_cameras r JOIN devices d ON d.id = r.device_id "
                "WHERE d.revoked_at IS NULL"
            ),
            "replication": self.replicator.health()
            if self.replicator is not None
            else replication_status(self.config),
            "upstream": {
                "broker": self.config.upstream.broker or None,
                **sync_state.report(self.store),
            },
            "server": {"listen": self.config.server.listen, "answering": self._answering()},
            "keys": {
                "central_key_id": central,
                "box_certificate_sha256": certificate_fingerprint(self.keys.tls_cert.read_bytes()),
            },
        }
