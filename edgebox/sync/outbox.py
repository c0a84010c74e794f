"""The durable outbox: metadata events wait in SQLite until central acknowledges them."""

from __future__ import annotations

import json

from edgebox.clock import iso
from edgebox.db import Store


def queue_meta(
    store: Store, body: dict, priority: int = 100, replace_kind: str | None = None
) -> None:
    """Queue a metadata event for central (optionally replacing a queued one of its type)."""
    with store.write() as db:
        if replace_kind:
            db.execute(
                "DELETE FROM outbox WHERE kind = 'meta' AND state = 'queued' AND ref = ?",
                [replace_kind],
            )
        db["outbox"].insert(
            {
                "kind": "meta",
                "ref": body["type"],
                "priority": priority,
                "payload": json.dumps(body),
                "created_at": iso(),
            }
        )
