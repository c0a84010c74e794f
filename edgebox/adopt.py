"""Re-adopting orphan vault files: rebuild the rows of recordings whose vault file survived a
restore but whose rows did not (they were ingested after the replica's last position).

Each file is checked without a key first (header, size, file name), then decrypted whole
with the review key a supervisor's secret unlocks, one segment at a time in memory, so the
evidence hash (plaintext) and the stored hash (file bytes) are computed from the file and
checked against the camera's hash in the header, never taken on trust. Only then are its
rows written: device (if the restored database does not know the camera), upload, recording
and a custody entry, in one transaction. See docs/replication.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgebox import custody, vault
from edgebox.clock import iso, parse_rfc3339
from edgebox.errors import EdgeboxError, KeyAccessError
from edgebox.ingest.metadata import parse_recording_metadata
from edgebox.keys import Keyring
from edgebox.recordings import data_key_for
from edgebox.replication.litestream import refuse_if_running

ADOPTED_KEY = "edgebox:adopted"  # in `metadata`; no camera can send it (keys exclude ':')
UNKNOWN_SERIAL = "unknown"
LATER_STATE = ["incident", "notes", "legal_hold"]  # set after ingest; lost with the tail
FROM_FILE = [  # what adoption rebuilds from the vault file itself
    "id",
    "device_id",
    "serial",
    "camera_sha256",
    "size",
    "stored_size",
    "evidence_sha256",
    "stored_sha256",
    "vault_file",
    "received_at",
]
_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # what central accepts as a recording id


class AdoptionError(EdgeboxError):
    """One vault file cannot be adopted; the message says why. Nothing was written for it."""

    status = 409


@dataclass
class Candidate:
    """A vault file that passed every check, with the facts its rows are built from."""

    path: Path
    core: dict
    evidence_sha256: str
    stored_sha256: str
    size: int
    stored_size: int


def unlock_supervisor(keys: Keyring, secret: str) -> tuple[str, X25519PrivateKey]:
    """The name of the supervisor slot that `secret` opens, and the review key; else
    KeyAccessError. The name is what the custody log records as the actor."""
    names = keys.review_slots()
    if not names:
        raise KeyAccessError(f"no supervisor slots in {keys.root}: put the box's keys/ back first")
    for name in names:
        try:
            return name, keys.unlock_review(secret, name)
        except KeyAccessError:
            continue
    raise KeyAccessError("wrong review secret; nothing was adopted")


def orphan_files(box) -> list[str]:
    """Names of vault files that no recording row accounts for (as `edgebox verify` sees it)."""
    known = {
        box.uploads.vault_path(row["id"]).name
        for row in box.store.query("SELECT id FROM recordings")
    }
    return sorted(p.name for p in box.uploads.vault_dir.glob("*.ebv") if p.name not in known)


def check_file(box, name: str, review_key: X25519PrivateKey) -> Candidate:
    """Check one vault file completely: keyless structure, header against its file name, then
    every segment decrypted and authenticated. Raises AdoptionError when it cannot be adopted."""
    path = box.uploads.vault_dir / name
    if Path(name).name != name or path.suffix != ".ebv" or not path.is_file():
        raise AdoptionError(f"not a vault file in {box.uploads.vault_dir}")
    if path.with_name(name + ".header-journal").exists():
        raise AdoptionError(
            "a header rewrite of this file was interrupted: start the box once (it finishes "
            "the rewrite), stop it, then adopt"
        )
    problems = vault.check_structure(path)
    if problems:
        raise AdoptionError(f"damaged: {'; '.join(problems)}")
    header = vault.read_header(path)
    core = header.core
    recording_id = core["recording_id"]
    if recording_id != path.stem:
        raise AdoptionError(
            f"its header names recording {recording_id!r}, its file name {path.stem!r}: "
            "a renamed or foreign file"
        )
    if not _RID.match(recording_id):
        raise AdoptionError(f"recording id {recording_id!r} is not 1-64 letters, digits or ._-")
    _refuse_existing(box.store.read.conn, recording_id)
    if not isinstance(core.get("device_id"), str) or not core["device_id"]:
        raise AdoptionError("its header names no camera (device_id)")
    data_key = _data_key(path, review_key)
    stored = vault.file_sha256(path)
    try:
        evidence = vault.Reader(path, data_key, header).verify()
    except EdgeboxError as exc:
        raise AdoptionError(f"damaged: {exc.message}") from None
    camera = core.get("camera_sha256")
    if camera and camera != evidence:
        raise AdoptionError(
            f"the decrypted content (sha256 {evidence}) differs from the camera's sha256 "
            f"{camera} in its header"
        )
    return Candidate(path, core, evidence, stored, header.plaintext_size, header.stored_size)


def _data_key(path: Path, review_key: X25519PrivateKey) -> bytes:
    try:
        return data_key_for(path, review_key)
    except EdgeboxError as exc:
        if exc.status == 403 and "no key stanza" in exc.message:
            raise AdoptionError(
                "sealed: the box dropped its review key from this file after central confirmed "
                "its copy, so the box cannot decrypt or adopt it; central holds it"
            ) from None
        raise AdoptionError(
            f"its data key does not open with the review key: {exc.message}"
        ) from None


def _refuse_existing(conn, recording_id: str) -> None:
    if conn.execute("SELECT 1 FROM recordings WHERE id = ?", [recording_id]).fetchone():
        raise AdoptionError(f"recording {recording_id} already exists in the database")


def _one(db, sql: str, value: str) -> dict | None:
    row = db.execute(sql, [value]).fetchone()
    return dict(row) if row is not None else None


def _received_at(core: dict, now: str) -> tuple[str, str]:
    """The header's created_at (when the upload began), else now; and which one it is."""
    try:
        return iso(parse_rfc3339(core.get("created_at") or "")), "header created_at"
    except ValueError:
        return now, "time of adoption (the header holds no creation time)"


def _columns(candidate: Candidate, upload: dict | None, device: dict | None) -> tuple[dict, dict]:
    """Recording columns and the camera's raw metadata: the camera's own, kept in the restored
    upload row, when there is one; else only what the header holds (the rest stays NULL)."""
    core = candidate.core
    if upload is not None:
        meta = json.loads(upload["metadata"])
        columns, raw = dict(meta["columns"]), dict(meta["raw"])
        if upload["device_id"] != core["device_id"] or upload["length"] != candidate.size:
            raise AdoptionError(
                f"the restored upload {upload['id']} (camera {upload['device_id']}, "
                f"{upload['length']} bytes) does not describe this file (camera "
                f"{core['device_id']}, {candidate.size} bytes)"
            )
        if columns.get("camera_sha256") != core.get("camera_sha256"):
            raise AdoptionError(f"the restored upload {upload['id']} names another camera sha256")
        return columns, raw
    serial = core.get("serial") or (device or {}).get("serial") or UNKNOWN_SERIAL
    columns, raw = parse_recording_metadata(None, serial)
    columns["camera_sha256"] = core.get("camera_sha256")
    return columns, raw


def _ensure_device(db, core: dict, serial: str, vault_file: str, now: str) -> str:
    """Keep a camera the restored database knows; else add one that can never authenticate."""
    if _one(db, "SELECT id FROM devices WHERE id = ?", core["device_id"]) is not None:
        return "known to the restored database"
    db["devices"].insert(
        {
            "id": core["device_id"],
            "serial": serial,
            "model": f"unknown (re-created by adopting {vault_file}; pair the camera again)",
            # Not a SHA-256 hex digest, so no bearer token can ever match it.
            "token_hash": f"none:adopted:{core['device_id']}",
            "paired_at": now,
            "revoked_at": now,
        }
    )
    return "re-created from the vault header, revoked (no token: pair the camera again)"


def _ensure_upload(db, upload: dict | None, candidate: Candidate, meta: dict, times) -> str:
    """Finish the restored upload row, or add one; returns the upload id."""
    received, now = times
    if upload is not None:
        db.execute(
            "UPDATE uploads SET state = 'finished', error = NULL, updated_at = ? WHERE id = ?",
            [now, upload["id"]],
        )
        return upload["id"]
    upload_id = f"adopted-{candidate.core['recording_id']}"
    db["uploads"].insert(
        {
            "id": upload_id,
            "device_id": candidate.core["device_id"],
            "recording_id": candidate.core["recording_id"],
            "length": candidate.size,
            "metadata": json.dumps(meta),
            "state": "finished",
            "created_at": received,
            "updated_at": now,
            "expires_at": now,
        }
    )
    return upload_id


def adopt(box, candidate: Candidate, supervisor: str) -> dict:
    """Write a checked file's rows and its custody entry in one transaction; returns a summary.

    The entry is a `recording.ingested` by `user:<supervisor>` whose details hold `adopted`:
    what was rebuilt and from what, and what stays unknown. `edgebox verify`, the upstream
    manifest and central's evidence packages all find a recording's hashes in that entry.
    """
    core, name = candidate.core, candidate.path.name
    recording_id, now = core["recording_id"], iso()
    received, received_from = _received_at(core, now)
    with box.store.write() as db:
        _refuse_existing(db, recording_id)
        upload = _one(db, "SELECT * FROM uploads WHERE recording_id = ?", recording_id)
        device = _one(db, "SELECT * FROM devices WHERE id = ?", core["device_id"])
        columns, raw = _columns(candidate, upload, device)
        camera = _ensure_device(db, core, columns["serial"], name, now)
        upload_id = _ensure_upload(
            db, upload, candidate, {"columns": columns, "raw": raw}, (received, now)
        )
        note = {
            "vault_file": name,
            "from": "vault header; content decrypted and hashed with the review key",
            "rebuilt": [k for k in FROM_FILE if columns.get(k, k) is not None],
            "camera": camera,
            "upload": f"restored row, was {upload['state']}" if upload else "new row",
            "camera_metadata": "from the restored upload" if upload else "unknown",
            "received_at": received_from,
            "unknown": sorted([k for k, v in columns.items() if v is None] + LATER_STATE),
        }
        db["recordings"].insert(
            {
                "id": recording_id,
                "upload_id": upload_id,
                "device_id": core["device_id"],
                **columns,
                "evidence_sha256": candidate.evidence_sha256,
                "stored_sha256": candidate.stored_sha256,
                "size": candidate.size,
                "stored_size": candidate.stored_size,
                "vault_file": name,
                "metadata": json.dumps({**raw, ADOPTED_KEY: note}, sort_keys=True),
                "received_at": received,
                "sync_state": "pending",
            }
        )
        entry = custody.append(
            db,
            "recording.ingested",
            f"user:{supervisor}",
            recording_id,
            {
                "upload_id": upload_id,
                "evidence_sha256": candidate.evidence_sha256,
                "stored_sha256": candidate.stored_sha256,
                "size": candidate.size,
                "camera_sha256": columns["camera_sha256"],
                "adopted": note,
            },
        )
    if upload is not None:  # a crash between rename and record can leave the resume key
        box.uploads._resume_path(upload_id).unlink(missing_ok=True)
    return {
        "file": name,
        "recording_id": recording_id,
        "upload_id": upload_id,
        "evidence_sha256": candidate.evidence_sha256,
        "stored_sha256": candidate.stored_sha256,
        "size": candidate.size,
        "custody_seq": entry["seq"],
        **{k: note[k] for k in ("camera", "upload", "unknown")},
    }


def adopt_orphans(
    box, supervisor: str, review_key: X25519PrivateKey, names: list[str] | None = None
) -> dict:
    """Adopt every orphan vault file (or only the vault files `names`), each on its own: a file
    that fails a check is reported under `skipped` and changes nothing. Refuses (changing
    nothing) while the box runs."""
    refuse_if_running(box.config)
    adopted, skipped = [], []
    for name in list(dict.fromkeys(names)) if names else orphan_files(box):
        try:
            adopted.append(adopt(box, check_file(box, name, review_key), supervisor))
        except AdoptionError as exc:
            skipped.append({"file": name, "problem": exc.message})
    return {
        "supervisor": supervisor,
        "adopted": adopted,
        "skipped": skipped,
        "orphans_left": orphan_files(box),
    }


def describe(result: dict) -> list[str]:
    """Lines for people: each adopted and skipped file, and what is still without a row."""
    lines = [
        f"adopted {a['file']}: {a['size']} B, evidence sha256 {a['evidence_sha256']}; "
        f"camera {a['camera']}; upload {a['upload']}"
        for a in result["adopted"]
    ]
    lines += [f"SKIPPED {s['file']}: {s['problem']}" for s in result["skipped"]]
    lines.append(
        f"{len(result['adopted'])} adopted, {len(result['skipped'])} skipped "
        f"(by supervisor {result['supervisor']})"
    )
    if result["orphans_left"]:
        lines.append(f"still without a recording: {', '.join(result['orphans_left'])}")
    return lines
