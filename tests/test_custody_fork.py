"""A box restored from an older replica forks its custody chain at central: central takes the
restored history (signed) and keeps what it replaces; any other rewrite is still refused."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgebox import custody
from edgebox.central.index import Index
from edgebox.central.receiver import Receiver
from edgebox.cli import opened_box
from edgebox.config import load_config
from edgebox.db import Store
from edgebox.keys import Keyring
from edgebox.recordings import seal_recording
from edgebox.replication import config as lsconf
from edgebox.sync import protocol
from tests.conftest import SECRET, BoxProcess, make_box, run_cli
from tests.sync_fixtures import alarms, central_workers, upstream_env, wait_for
from tests.test_replication import ingest, pair, replicated_rows

NO_REPLICATION = {"EDGEBOX_REPLICATION__ENABLED": "false"}


def chain(rows) -> list[tuple[int, str]]:
    """(seq, hash) of custody rows."""
    return [(r["seq"], r["hash"]) for r in rows]


def box_chain(config_path: Path) -> list[tuple[int, str]]:
    """The box's custody chain, read from its database."""
    return box_chain_of(load_config(config_path).data_dir / "box.db")


def box_chain_of(db_path: Path) -> list[tuple[int, str]]:
    """The custody chain in a box database file."""
    store = Store(db_path)
    try:
        return chain(store.query("SELECT seq, hash FROM custody ORDER BY seq"))
    finally:
        store.close()


def central_chain(store: Path, box_id: str, table: str = "custody") -> list[tuple[int, str]]:
    """Central's custody rows for a box (current or superseded)."""
    index = Index(store)
    try:
        return chain(
            index.query(f"SELECT seq, hash FROM {table} WHERE box_id = ? ORDER BY seq", (box_id,))
        )
    finally:
        index.close()


def listed(config_path: Path) -> dict:
    """The box's recordings by id, through the CLI."""
    out = run_cli("recordings", "list", "--json", config=config_path).stdout
    return {row["id"]: row for row in json.loads(out)}


def test_a_box_restored_from_an_older_replica_goes_on_syncing(tmp_path, broker, pki):
    store = tmp_path / "central"
    config_path = make_box(tmp_path / "box", box_id="van-9")
    replica = lsconf.replica_dir(load_config(config_path))
    env = upstream_env(broker, pki, "van-9", bandwidth_bytes_per_second=256 * 1024)
    workers = central_workers(store, broker, pki)
    box = BoxProcess(config_path, env=env).start()
    try:
        camera = pair(box)
        first, _ = ingest(camera, 200_000)
        sealed = "SELECT sealed FROM recordings WHERE id = ?"
        wait_for(
            lambda: replicated_rows(config_path, tmp_path / "probe.db", sealed, (first,)) == [(1,)],
            what="the replica to hold the first recording confirmed and sealed",
        )
        older = tmp_path / "older-replica"
        shutil.copytree(replica, older)  # the second medium as it was at this moment
        # The second recording's custody entries reach central at once; its 4 MiB crawl behind.
        second, _ = ingest(camera, 4 << 20)
        wait_for(
            lambda: central_chain(store, "van-9")[-1:] == box_chain(config_path)[-1:],
            what="central to hold the whole chain",
        )
        assert listed(config_path)[second]["sync_state"] != "synced"
        box.kill9()
    finally:
        box.stop()
    before = central_chain(store, "van-9")

    restored = run_cli("restore", "--from", str(older), "--force", "--json", config=config_path)
    assert restored.returncode == 0, restored.stderr
    head = json.loads(restored.stdout)["restored_head"]["seq"]
    assert head < before[-1][0]  # central holds entries the restored box no longer has
    adopted = run_cli(
        "recordings", "adopt", "--json", config=config_path, env={"EDGEBOX_REVIEW_SECRET": SECRET}
    )
    assert adopted.returncode == 0, adopted.stderr

    box = BoxProcess(config_path, env={**env, **NO_REPLICATION}).start()
    try:
        wait_for(
            lambda: central_chain(store, "van-9") == box_chain(config_path),
            timeout=90,
            what="central to hold the restored box's chain",
        )
        wait_for(
            lambda: all(r["sync_state"] == "synced" for r in listed(config_path).values()),
            what="the adopted recording confirmed again",
        )
    finally:
        box.stop()
        for worker in workers:
            worker.stop()
    superseded = central_chain(store, "van-9", "custody_superseded")
    assert superseded == [entry for entry in before if entry[0] > head]
    assert any("restored" in message for message in alarms(store))


class Feed:
    """A box's custody sent straight into central's real Receiver (no broker needed for
    these refusals), with the answers it published."""

    def __init__(self, store_dir: Path, box_id: str, identity: str):
        self.receiver = Receiver(store_dir, lambda topic, payload: self.answers.append(payload))
        self.box_id, self.identity, self.answers = box_id, identity, []

    def send(self, entries: list[dict], checkpoints: list[dict]) -> dict | None:
        """One custody message; central's answer (None when it was refused as malformed)."""
        before = len(self.answers)
        message = {
            "id": f"custody:{len(self.answers)}:{entries[0]['seq']}-{entries[-1]['seq']}",
            "type": "custody",
            "box": self.box_id,
            "identity": self.identity,
            "entries": entries,
            "checkpoints": checkpoints,
        }
        self.receiver.handle(protocol.meta_topic(self.box_id), protocol.encode(message))
        return protocol.decode(self.answers[-1]) if len(self.answers) > before else None


def history(db_path: Path, after: int = 0) -> tuple[list[dict], list[dict]]:
    """Custody entries after `after`, and the checkpoints over them, from a box database."""
    store = Store(db_path)
    try:
        return (
            store.query("SELECT * FROM custody WHERE seq > ? ORDER BY seq", (after,)),
            store.query("SELECT * FROM checkpoints WHERE seq > ? ORDER BY seq", (after,)),
        )
    finally:
        store.close()


def fork_copy(db_path: Path, target: Path, event: str, sign_with=None) -> Path:
    """A copy of the database that goes on with `event` (and a checkpoint if a key is given)."""
    shutil.copy2(db_path, target)
    store = Store(target)
    try:
        custody.record(store, event, "operator", None, {"why": "test"})
        if sign_with is not None:
            custody.make_checkpoint(store, "van-3", sign_with)
    finally:
        store.close()
    return target


def test_only_a_signed_restore_may_fork_the_chain(tmp_path):
    config = load_config(make_box(tmp_path / "box", box_id="van-3"))
    db_path = config.data_dir / "box.db"
    keys = Keyring(config.data_dir / "keys")
    identity = keys.identity()
    public = identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    feed = Feed(tmp_path / "central", "van-3", base64.b64encode(public).decode())
    store = Store(db_path)
    custody.make_checkpoint(store, "van-3", identity)
    shared = store.one("SELECT MAX(seq) AS n FROM custody")["n"]
    store.close()
    # Forks branch off the history both sides share, before central heard of later entries.
    tagged = fork_copy(db_path, tmp_path / "tagged.db", "recording.tagged", identity)
    unsigned = fork_copy(db_path, tmp_path / "unsigned.db", "database.restored")
    forged = fork_copy(
        db_path, tmp_path / "forged.db", "database.restored", Ed25519PrivateKey.generate()
    )
    store = Store(db_path)
    for n in range(3):
        custody.record(store, "box.started", "box", None, {"n": n})
    custody.make_checkpoint(store, "van-3", identity)
    store.close()
    assert feed.send(*history(db_path))["status"] == "ok"
    held = central_chain(tmp_path / "central", "van-3")
    assert held == box_chain_of(db_path)

    answer = feed.send(*history(tagged, shared))
    assert answer["status"] == "rejected"
    assert answer["reason"] == f"fork at entry {shared + 1}: history rewritten"
    answer = feed.send(*history(unsigned, shared))
    assert answer["status"] == "rejected" and "checkpoint signed over it" in answer["reason"]
    assert feed.send(*history(forged, shared)) is None  # a bad signature: refused outright
    assert central_chain(tmp_path / "central", "van-3") == held
    assert central_chain(tmp_path / "central", "van-3", "custody_superseded") == []

    # The unsigned restore, once the box's own key signs a checkpoint over it, is taken.
    signed = fork_copy(tmp_path / "unsigned.db", tmp_path / "signed.db", "box.started", identity)
    assert feed.send(*history(signed, shared))["status"] == "ok"
    assert central_chain(tmp_path / "central", "van-3") == box_chain_of(signed)
    assert [s for s, _ in central_chain(tmp_path / "central", "van-3", "custody_superseded")] == [
        shared + 1, shared + 2, shared + 3,
    ]  # fmt: skip


def test_a_seal_after_the_replicas_position_is_found_not_called_damage(tmp_path):
    config_path = make_box(tmp_path / "box", box_id="van-4")
    replica = lsconf.replica_dir(load_config(config_path))
    box = BoxProcess(config_path).start()
    try:
        rid, _ = ingest(pair(box), 300_000)
        wait_for(
            lambda: (
                replicated_rows(config_path, tmp_path / "probe.db", "SELECT id FROM recordings")
                == [(rid,)]
            ),
            what="the replica to hold the recording",
        )
        older = tmp_path / "older-replica"
        shutil.copytree(replica, older)
    finally:
        box.stop()
    with opened_box(str(config_path)) as opened:  # central confirmed it; the box seals it
        before = opened.store.one("SELECT stored_sha256 FROM recordings")["stored_sha256"]
        seal_recording(opened, rid)
    vault_file = load_config(config_path).data_dir / "vault" / f"{rid}.ebv"
    sealed_bytes = vault_file.read_bytes()

    restored = run_cli("restore", "--from", str(older), "--force", "--json", config=config_path)
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["found_sealed"] == [rid]
    verified = run_cli("verify", "--json", config=config_path)
    assert verified.returncode == 0, verified.stdout
    row = listed(config_path)[rid]
    assert (row["sealed"], row["sync_state"]) == (1, "synced")
    assert row["stored_sha256"] != before and vault_file.read_bytes() == sealed_bytes
