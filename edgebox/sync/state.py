"""The upstream link's small persistent state (custody cursor, link status, transfer progress,
the replica set central holds)."""

from __future__ import annotations

import json

from edgebox.clock import iso
from edgebox.db import Store


def get(store: Store, key: str, default=None):
    """A value from sync_state (JSON-decoded), or `default`."""
    row = store.one("SELECT value FROM sync_state WHERE key = ?", (key,))
    return json.loads(row["value"]) if row else default


def put(store: Store, key: str, value) -> None:
    """Set a sync_state value (JSON-encoded)."""
    with store.write() as db:
        db.execute(
            "INSERT INTO sync_state (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at",
            [key, json.dumps(value), iso()],
        )


def backlog(store: Store) -> dict:
    """What still has to reach central (recordings, bytes, custody entries, metadata events),
    and how many recordings central confirmed that the box has yet to seal."""
    recordings = store.one(
        "SELECT COUNT(*) AS n, COALESCE(SUM(stored_size), 0) AS bytes FROM recordings "
        "WHERE sync_state NOT IN ('synced', 'deleted')"
    )
    head = store.one("SELECT COALESCE(MAX(seq), 0) AS seq FROM custody")["seq"]
    meta = store.one("SELECT COUNT(*) AS n FROM outbox WHERE state = 'queued' AND kind = 'meta'")
    unsealed = store.one(
        "SELECT COUNT(*) AS n FROM recordings WHERE sync_state = 'synced' AND sealed = 0"
    )
    return {
        "recordings": recordings["n"],
        "bytes": recordings["bytes"],
        "custody_entries": head - get(store, "custody_sent_seq", 0),
        "metadata_events": meta["n"],
        "awaiting_seal": unsealed["n"],
    }


def report(store: Store) -> dict:
    """Link state, last transfer progress, backlog and the replica's copy at central, for
    `edgebox status`."""
    return {
        "link": get(store, "link", {"state": "offline", "detail": "never connected"}),
        "transfer": get(store, "transfer"),
        "backlog": backlog(store),
        "replica": get(store, "replica"),
    }
