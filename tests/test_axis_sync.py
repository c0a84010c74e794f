"""An end-to-end encrypted Axis recording travels to central like any recording: every vault
file of it synced (real Mosquitto, real central workers), the group event applied, and central
opens the clips with its X25519 key and then the controller's RSA-wrapped AES keys."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

from cryptography.hazmat.primitives.asymmetric import rsa

from edgebox import vault
from edgebox.central.index import Index
from edgebox.keys import x25519_private_from_file
from edgebox.recordings import data_key_for
from tests.axis_controller import Controller, connect, decrypt, make_clips
from tests.sync_fixtures import box_and_central, central_holds, synced, wait_for

BOX_ID = "depot-7"


def _central_plaintext(store, recording_id: str, central_key) -> bytes:
    path = store / "boxes" / BOX_ID / "recordings" / f"{recording_id}.ebv"
    reader = vault.Reader(path, data_key_for(path, central_key, role="central"))
    return b"".join(reader.segment(i) for i in range(reader.header.segments))


def test_encrypted_axis_recording_reaches_central_and_opens_there(tmp_path, broker, pki):
    start = dt.datetime(2026, 11, 28, 16, 0, tzinfo=dt.UTC)
    clips = make_clips(tmp_path, 2, start)
    rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    store = tmp_path / "central"
    with box_and_central(tmp_path / "box", broker, pki, BOX_ID, store) as box:
        account = box.axis.accounts.add("depot")
        ctl = Controller(connect(box.url, "depot", account["key"], box.keys.tls_cert))
        ctl.register()
        sent = ctl.recording(clips, start, clips[-1].stop, public_key=rsa_private.public_key())
        wait_for(lambda: synced(box), timeout=90, what="every Axis vault file synced")
        rows = box.store.query(
            "SELECT r.id, o.name FROM recordings r JOIN axis_objects o ON o.recording_id = r.id"
        )
        by_name = {r["name"]: r["id"] for r in rows}
        wait_for(
            lambda: (
                box.store.one("SELECT state FROM outbox WHERE ref = 'axis.recording'")["state"]
                == "done"
            ),
            what="the group event acknowledged",
        )
    held = central_holds(store)
    assert set(by_name.values()) <= set(held)  # every vault file of it (the box may have
    # sealed some since: its stored hashes then differ from the copies central confirmed)
    index = Index(store)
    try:
        [event] = index.query("SELECT body FROM events WHERE type = 'axis.recording'")
    finally:
        index.close()
    members = json.loads(event["body"])["members"]
    assert {m["recording_id"] for m in members} == set(by_name.values())
    central_key = x25519_private_from_file(tmp_path / "box" / "central-demo" / "central.key")
    originals = {hashlib.sha256(c.path.read_bytes()).hexdigest() for c in clips}
    opened = set()
    for name, ciphertext in sent.clips.items():
        stored = _central_plaintext(store, by_name[name], central_key)
        assert stored == ciphertext
        key_object = _central_plaintext(
            store, by_name[name.rsplit(".", 1)[0] + ".key"], central_key
        )
        opened.add(hashlib.sha256(decrypt(stored, key_object, rsa_private)).hexdigest())
    assert opened == originals
