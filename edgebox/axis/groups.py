"""One Axis recording as a group of vault files: closing it (`Status: Complete`) and reading
it back for the recordings list, its page, the cameras page and `edgebox axis status`.

Every object of a recording container is its own recording row; the rows share
`axis_recording` (the container name) and the lead clip is the only `listed` one.
"""

from __future__ import annotations

import json

from edgebox import custody
from edgebox.axis import directory, mapping
from edgebox.axis.names import bad
from edgebox.clock import iso
from edgebox.sync.outbox import queue_meta

COMPLETE = "Complete"


def lead_id(store, container: str) -> str | None:
    """The recording id of the group's lead (listed) row, or None before its first clip."""
    row = store.one(
        "SELECT id FROM recordings WHERE axis_recording = ? AND listed = 1", (container,)
    )
    return row["id"] if row else None


def complete(store, account: str, container: str, merged: dict) -> None:
    """`Status: Complete`: the lead row takes the recording's metadata, every member its
    category, custody lists the members and their evidence hashes, central is told; 400 for
    a recording without a clip (then nothing changes)."""
    members = store.query(
        "SELECT o.name, o.kind, o.metadata, o.etag, o.recording_id, r.evidence_sha256 "
        "FROM axis_objects o JOIN recordings r ON r.id = o.recording_id "
        "WHERE o.container = ? ORDER BY o.kind, o.name",
        (container,),
    )
    clips = [json.loads(m["metadata"]) for m in members if m["kind"] == "clip"]
    if not clips:
        raise bad("a recording holds at least one clip; none was stored", "Status")
    bookmarks = [json.loads(m["metadata"]) for m in members if m["kind"] == "bookmark"]
    columns = mapping.recording_columns(merged, clips, bookmarks)
    tags = mapping.tags(bookmarks)
    lead = lead_id(store, container)
    summary = [
        {
            "object": m["name"],
            "kind": m["kind"],
            "recording_id": m["recording_id"],
            "evidence_sha256": m["evidence_sha256"],
            "md5": m["etag"],
        }
        for m in members
    ]
    now = iso()
    with store.write() as db:
        db.execute(
            "UPDATE axis_containers SET status = ?, metadata = ?, updated_at = ?, "
            "completed_at = ? WHERE name = ?",
            [COMPLETE, json.dumps(merged, sort_keys=True), now, now, container],
        )
        db["recordings"].update(lead, columns)
        if columns["category"]:
            db.execute(
                "UPDATE recordings SET category = ? WHERE axis_recording = ?",
                [columns["category"], container],
            )
        custody.append(
            db,
            "axis.recording_completed",
            f"axis:{account}",
            lead,
            {"container": container, "columns": columns, "tags": tags, "members": summary},
        )
    queue_meta(
        store,
        {
            "type": "axis.recording",
            "recording_id": lead,
            "container": container,
            "metadata": merged,
            "columns": columns,
            "tags": tags,
            "members": summary,
        },
    )


def open_recordings(store) -> list[dict]:
    """Axis recordings not (yet) Complete: kept, shown as incomplete, never dropped."""
    return store.query(
        "SELECT c.name, c.serial, c.user_uuid, c.status, c.created_at, c.updated_at, "
        "(SELECT COUNT(*) FROM axis_objects o WHERE o.container = c.name) AS objects, "
        "(SELECT id FROM recordings r WHERE r.axis_recording = c.name AND r.listed = 1) "
        "AS recording_id FROM axis_containers c "
        "WHERE c.kind = 'recording' AND c.status != ? ORDER BY c.created_at",
        (COMPLETE,),
    )


def overview(store) -> dict:
    """Connected systems, Axis users and recordings still transferring (cameras page,
    `edgebox axis status`)."""
    return {
        "systems": directory.systems(store),
        "users": directory.known_users(store),
        "open_recordings": open_recordings(store),
    }


def recording_group(store, container: str) -> dict | None:
    """One Axis recording as people see it: its status and metadata, and every vault file
    in it (clips, key objects, bookmarks, GNSS track) with its evidence hash."""
    row = store.one("SELECT * FROM axis_containers WHERE name = ?", (container,))
    if row is None:
        return None
    members = store.query(
        "SELECT o.name AS object, o.kind, o.etag AS md5, o.size, o.metadata, o.recording_id, "
        "r.evidence_sha256, r.started_at, r.stopped_at, r.sync_state "
        "FROM axis_objects o JOIN recordings r ON r.id = o.recording_id "
        "WHERE o.container = ? ORDER BY o.kind = 'clip' DESC, o.name",
        (container,),
    )
    for member in members:
        member["metadata"] = json.loads(member["metadata"])
    device = store.one(
        "SELECT serial, name, model, source, controller_serial FROM devices WHERE id = ?",
        (row["device_id"],),
    )
    return {
        "container": container,
        "status": row["status"],
        "complete": row["status"] == COMPLETE,
        "source": directory.SOURCE,
        "camera": device,
        "user": directory.axis_user(store, row["user_uuid"]),
        "metadata": json.loads(row["metadata"]),
        "created_at": row["created_at"],
        "completed_at": row["completed_at"],
        "members": members,
    }


def group_summaries(store, containers: list[str]) -> dict[str, dict]:
    """For the recordings list: each Axis recording's status, clip count and bytes in all."""
    if not containers:
        return {}
    marks = ",".join("?" * len(containers))
    rows = store.query(
        "SELECT c.name, c.status, "  # noqa: S608 - only placeholders are pasted
        "COALESCE(SUM(o.kind = 'clip'), 0) AS clips, COALESCE(SUM(o.size), 0) AS size "
        f"FROM axis_containers c LEFT JOIN axis_objects o ON o.container = c.name "
        f"WHERE c.name IN ({marks}) GROUP BY c.name",
        tuple(containers),
    )
    return {
        r["name"]: {
            "status": r["status"],
            "complete": r["status"] == COMPLETE,
            "clips": r["clips"],
            "size": r["size"],
        }
        for r in rows
    }
