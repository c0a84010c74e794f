"""The directory containers: `System/` (one object per connected body worn system), `Users/`
(one per Axis user) and `Devices/` (one per body worn camera).

Their objects are metadata, not footage: they live in `axis_objects` (and, for cameras, as
`devices` rows with source "Axis BWS"), each change logged in custody. A camera registered
this way can never log in over tus: its token hash is not a hash of any token.
"""

from __future__ import annotations

import json
import uuid

from edgebox import custody
from edgebox.axis.documents import etag
from edgebox.axis.names import meta_get
from edgebox.clock import iso
from edgebox.db import Store

SOURCE = "Axis BWS"
EVENTS = {"system": "axis.system", "user": "axis.user", "device": "axis.device"}


def store_directory_object(
    db, container: str, kind: str, name: str, meta: dict, body: bytes | None, actor: str
) -> bool:
    """Create or replace a System/Users/Devices object inside the caller's transaction
    (`body` None: a POST, which replaces only the metadata); True when it is new."""
    now = iso()
    existing = db.execute(
        "SELECT metadata FROM axis_objects WHERE container = ? AND name = ?", [container, name]
    ).fetchone()
    row = {
        "container": container,
        "name": name,
        "kind": kind,
        "metadata": json.dumps(meta, sort_keys=True),
        "updated_at": now,
    }
    if body is not None:
        row.update(body=body, size=len(body), etag=etag(body))
    if existing is None:
        db["axis_objects"].insert({**row, "created_at": now})
    else:
        db["axis_objects"].update((container, name), row)
    if kind == "device":
        _register_camera(db, name, meta, actor)
    custody.append(
        db,
        f"{EVENTS[kind]}_{'registered' if existing is None else 'updated'}",
        actor,
        name,
        {"metadata": meta, **({"before": json.loads(existing[0])} if existing else {})},
    )
    return existing is None


def _register_camera(db, serial: str, meta: dict, actor: str) -> None:
    """The `devices` row of an Axis camera: created once, its name and model kept current."""
    name, model = meta_get(meta, "Name"), meta_get(meta, "Model") or "Axis body worn camera"
    row = db.execute(
        "SELECT id FROM devices WHERE serial = ? AND source = ?", [serial, SOURCE]
    ).fetchone()
    if row is None:
        device_id = uuid.uuid4().hex
        db["devices"].insert(
            {
                "id": device_id,
                "serial": serial,
                "model": model[:128],
                "token_hash": f"axis-no-token:{device_id}",
                "paired_at": iso(),
                "source": SOURCE,
                "name": name,
            }
        )
        custody.append(
            db, "camera.registered", actor, device_id, {"serial": serial, "source": SOURCE}
        )
    else:
        db.execute(
            "UPDATE devices SET model = ?, name = ? WHERE id = ?", [model[:128], name, row[0]]
        )


def axis_camera(store: Store, serial: str) -> dict | None:
    """The devices row of an Axis camera registered in Devices/, or None."""
    return store.one("SELECT * FROM devices WHERE serial = ? AND source = ?", (serial, SOURCE))


def axis_user(store: Store, user_uuid: str) -> dict | None:
    """An Axis user registered in Users/ as {uuid, name, user_id, active}, or None."""
    row = store.one(
        "SELECT name, metadata FROM axis_objects WHERE container = 'Users' AND name = ?",
        (user_uuid,),
    )
    return _user(row) if row else None


def _user(row: dict) -> dict:
    meta = json.loads(row["metadata"])
    return {
        "uuid": row["name"],
        "name": meta_get(meta, "Name"),
        "user_id": meta_get(meta, "UserID"),
        "active": (meta_get(meta, "Active") or "").lower() != "false",
    }


def known_users(store: Store) -> list[dict]:
    """Every Axis user registered by a body worn system, by name."""
    rows = store.query("SELECT name, metadata FROM axis_objects WHERE container = 'Users'")
    return sorted((_user(r) for r in rows), key=lambda u: (u["name"] or "", u["uuid"]))


def systems(store: Store) -> list[dict]:
    """Every connected body worn system (System/<SystemID>) with its name and connection id."""
    rows = store.query(
        "SELECT name, metadata, created_at, updated_at FROM axis_objects "
        "WHERE container = 'System' AND kind = 'system' ORDER BY created_at"
    )
    return [
        {
            "system_id": r["name"],
            "name": meta_get(json.loads(r["metadata"]), "SystemName"),
            "connection_id": meta_get(json.loads(r["metadata"]), "ConnectionId"),
            "registered_at": r["created_at"],
            "updated_at": r["updated_at"],
        }
        for r in rows
    ]
