"""A central worker killed with SIGKILL while it completes a recording: between moving the file
into the store and indexing it, or between indexing it and dropping the transfer's folder.

The soak found the first: the folder kept its init and segment marks but no data, every later
fin of that transfer raised, central never answered, and the box's whole sync stalled. Now the
next init or fin of the transfer (in a worker that kept running) or the start of a receiver
settles what the crash left: the stored file is indexed when it is the transfer's whole file,
otherwise the transfer starts again; the folder goes either way.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bench.fleet_box import SimBox, SimRecording
from edgebox.central import files as central_files
from edgebox.central.blobs import local as local_blobs
from edgebox.central.receiver import Receiver
from edgebox.sync import protocol

CHUNK = 64 * 1024


class Central:
    """A receiver on a folder; answers collected in order."""

    def __init__(self, folder: Path):
        self.answers: list[dict] = []
        self.receiver = Receiver(
            folder, lambda _topic, payload: self.answers.append(json.loads(payload))
        )

    def send(self, message: tuple[str, bytes]) -> dict | None:
        before = len(self.answers)
        self.receiver.handle(*message)
        return self.answers[-1] if len(self.answers) > before else None

    def rows(self) -> list[dict]:
        return self.receiver.index.query("SELECT recording_id, stored_sha256 FROM recordings")


@pytest.fixture
def world(tmp_path):
    box = SimBox("van-9", tmp_path / "box")
    rec = box.make_recording(300_000, X25519PrivateKey.generate().public_key())
    central = Central(tmp_path / "central")
    yield box, rec, central, tmp_path / "central"
    central.receiver.index.close()


def send_all_but_fin(central: Central, box: SimBox, rec) -> None:
    assert central.send(box.init(rec, CHUNK))["status"] == "ok"
    for offset in protocol.offsets(rec.size, CHUNK):
        assert central.send(box.segment(rec, offset, CHUNK))["status"] == "ok"


def sent_again_whole(central: Central, box: SimBox, rec, store: Path) -> None:
    """The box starts the transfer again: central holds no segment of it (every one is sent
    again), then the fin completes it and the store holds the box's bytes."""
    answer = central.send(box.init(rec, CHUNK))
    assert answer["status"] == "ok" and answer["have"] == []
    for offset in protocol.offsets(rec.size, CHUNK):
        assert central.send(box.segment(rec, offset, CHUNK))["status"] == "ok"
    assert central.send(box.fin(rec))["status"] == "complete"
    assert stored_file(store, rec).read_bytes() == rec.path.read_bytes()


def fin_in_a_worker_killed_at(store: Path, box: SimBox, rec, module, name: str, when) -> None:
    """Send the fin to a receiver in another process that kills itself (SIGKILL) at the first
    call of `module.name` for which `when(*args)` holds, and check it died there."""

    def worker() -> None:
        central = Central(store)
        real = getattr(module, name)

        def killing(*args, **kwargs):
            if when(*args):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        setattr(module, name, killing)
        central.send(box.fin(rec))
        os._exit(0)  # not reached when the kill came

    process = multiprocessing.get_context("fork").Process(target=worker)
    process.start()
    process.join(60)
    assert process.exitcode == -signal.SIGKILL


def stored_file(store: Path, rec) -> Path:
    return store / "boxes" / "van-9" / "recordings" / f"{rec.id}.ebv"


def transfer_folder(store: Path, rec) -> Path:
    return store / "transfers" / "van-9" / protocol.transfer_id(rec.id, rec.sha256)


def into_recordings(path) -> bool:
    return Path(path).name == "recordings"


def test_a_kill_after_the_move_is_settled_by_the_next_fin_and_by_a_start(world):
    box, rec, central, store = world
    send_all_but_fin(central, box, rec)
    fin_in_a_worker_killed_at(store, box, rec, local_blobs, "fsync_dir", into_recordings)
    folder = transfer_folder(store, rec)
    assert (folder / "init.json").exists() and not (folder / "data").exists()
    assert stored_file(store, rec).read_bytes() == rec.path.read_bytes()
    assert central.rows() == []  # moved, not indexed: the state that stalled the box

    # The worker that kept running answers the box's next fin (it raised before).
    assert central.send(box.fin(rec))["status"] == "complete"
    assert central.rows() == [{"recording_id": rec.id, "stored_sha256": rec.sha256}]
    assert not folder.exists()
    assert central.send(box.fin(rec))["status"] == "complete"  # and again, the same

    # The same crash again, this time settled by a receiver as it starts.
    other = box.make_recording(200_000, X25519PrivateKey.generate().public_key())
    send_all_but_fin(central, box, other)
    fin_in_a_worker_killed_at(store, box, other, local_blobs, "fsync_dir", into_recordings)
    restarted = Central(store)
    assert not transfer_folder(store, other).exists()
    assert {r["recording_id"] for r in restarted.rows()} == {rec.id, other.id}
    assert restarted.send(box.init(other, CHUNK))["status"] == "complete"
    restarted.receiver.index.close()


def test_an_init_after_the_kill_hears_complete_without_a_resend(world):
    box, rec, central, store = world
    send_all_but_fin(central, box, rec)
    fin_in_a_worker_killed_at(store, box, rec, local_blobs, "fsync_dir", into_recordings)
    answer = central.send(box.init(rec, CHUNK))
    assert answer["status"] == "complete" and answer["sha256"] == rec.sha256
    assert len(central.rows()) == 1 and not transfer_folder(store, rec).exists()


def test_a_kill_after_the_index_leaves_a_folder_the_next_start_drops(world):
    box, rec, central, store = world
    send_all_but_fin(central, box, rec)
    fin_in_a_worker_killed_at(store, box, rec, central_files.shutil, "rmtree", lambda *a: True)
    assert transfer_folder(store, rec).exists() and len(central.rows()) == 1
    assert central.send(box.fin(rec))["status"] == "complete"
    Central(store).receiver.index.close()
    assert not transfer_folder(store, rec).exists()
    assert stored_file(store, rec).read_bytes() == rec.path.read_bytes()


def test_a_cut_short_transfer_whose_file_is_not_stored_starts_again(world):
    box, rec, central, store = world
    send_all_but_fin(central, box, rec)
    fin_in_a_worker_killed_at(store, box, rec, local_blobs, "fsync_dir", into_recordings)
    stored_file(store, rec).write_bytes(b"not the whole file")  # the store lost it meanwhile
    offset = protocol.offsets(rec.size, CHUNK)[1]
    assert central.send(box.segment(rec, offset, CHUNK))["status"] == "unknown"  # no raise
    assert central.send(box.fin(rec))["status"] == "unknown"
    assert central.rows() == [] and not transfer_folder(store, rec).exists()
    sent_again_whole(central, box, rec, store)


def test_marks_left_without_their_data_are_not_trusted(world):
    box, rec, central, store = world
    send_all_but_fin(central, box, rec)
    folder = transfer_folder(store, rec)
    (folder / "init.json").unlink()  # a kill while the folder was being dropped
    (folder / "data").unlink()
    sent_again_whole(central, box, rec, store)  # the same receiver, still serving


def test_a_start_settles_every_folder_it_can_and_raises_an_alarm_for_the_rest(world):
    box, rec, central, store = world
    other = box.make_recording(100_000, X25519PrivateKey.generate().public_key())
    send_all_but_fin(central, box, rec)
    send_all_but_fin(central, box, other)
    damaged = transfer_folder(store, rec)
    (damaged / "data").unlink()
    (damaged / "init.json").write_text("{")  # cut short, and its init damaged
    leftover = transfer_folder(store, other)
    (leftover / "init.json").unlink()  # a drop cut short
    restarted = Central(store)  # starts: neither folder stops it
    assert not leftover.exists() and damaged.exists()
    alarms = restarted.receiver.index.query("SELECT box_id, message FROM alarms")
    assert [a["box_id"] for a in alarms] == ["van-9"]
    assert alarms[0]["message"].startswith(f"transfer {damaged.name} left by a crash")
    restarted.receiver.index.close()


def other_bytes_same_id(box: SimBox, rec, folder: Path) -> SimRecording:
    """The same recording id with one byte flipped: what central must never put in its place."""
    data = bytearray(rec.path.read_bytes())
    data[-1] ^= 1
    path = folder / f"{rec.id}.other.ebv"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    manifest = {**rec.manifest, "stored_sha256": sha}
    signature = protocol.sign(manifest, box.identity)
    return SimRecording(rec.id, path, len(data), sha, rec.evidence_sha256, manifest, signature)


def test_other_bytes_in_flight_never_replace_a_held_recording(world, tmp_path):
    box, rec, central, store = world
    other = other_bytes_same_id(box, rec, tmp_path)
    send_all_but_fin(central, box, rec)
    send_all_but_fin(central, box, other)  # both in flight before either is complete
    assert central.send(box.fin(rec))["status"] == "complete"
    answer = central.send(box.fin(other))
    assert answer["status"] == "rejected" and "other bytes" in answer["reason"]
    assert stored_file(store, rec).read_bytes() == rec.path.read_bytes()
    assert central.rows() == [{"recording_id": rec.id, "stored_sha256": rec.sha256}]
    assert not transfer_folder(store, other).exists()
    alarms = [a["message"] for a in central.receiver.index.query("SELECT message FROM alarms")]
    assert alarms == [f"recording {rec.id} sent again with other bytes"]


def test_a_failure_of_central_s_own_raises_an_alarm_and_changes_nothing(world):
    box, rec, central, store = world
    send_all_but_fin(central, box, rec)
    init = transfer_folder(store, rec) / "init.json"
    init.write_text(init.read_text()[:40])  # damaged under central: no longer JSON
    for _ in range(3):  # not answered (the box tries again), no raise
        assert central.send(box.fin(rec)) is None
    alarms = central.receiver.index.query("SELECT box_id, message FROM alarms")
    assert len(alarms) == 1 and alarms[0]["box_id"] == "van-9"  # one for the three
    assert alarms[0]["message"].startswith(f"central failed on {box.fin(rec)[0]}: JSONDecodeError")
    assert central.rows() == [] and not stored_file(store, rec).exists()


def test_two_workers_deciding_other_bytes_at_once_never_split_store_and_index(world, tmp_path):
    """Two fins of one recording with other bytes, decided at the same moment by two workers:
    the first is paused inside its hand-over to the store (a wrapper around the real store's
    `keep`, the only stand-in) while the second decides. Without a lock per recording both
    passed the check for other bytes; the second's file took the key while the index kept
    the first's hash (or the other way round)."""
    box, rec, first, store = world
    other = other_bytes_same_id(box, rec, tmp_path)
    send_all_but_fin(first, box, rec)
    send_all_but_fin(first, box, other)
    second = Central(store)  # another worker on the same store and index
    in_keep, go = threading.Event(), threading.Event()
    real_keep = first.receiver.blobs.keep

    def paused_keep(*args, **kwargs):
        in_keep.set()
        go.wait(30)
        return real_keep(*args, **kwargs)

    first.receiver.blobs.keep = paused_keep
    answers: dict[str, dict | None] = {}
    deciding_first = threading.Thread(target=lambda: answers.update(a=first.send(box.fin(rec))))
    deciding_first.start()
    assert in_keep.wait(30)
    deciding_second = threading.Thread(target=lambda: answers.update(b=second.send(box.fin(other))))
    deciding_second.start()
    deciding_second.join(2)  # long enough for it to pass its checks when nothing stops it
    go.set()
    deciding_first.join(30)
    deciding_second.join(30)
    second.receiver.index.close()

    assert answers["a"]["status"] == "complete"
    assert answers["b"]["status"] == "rejected" and "other bytes" in answers["b"]["reason"]
    assert stored_file(store, rec).read_bytes() == rec.path.read_bytes()
    assert first.rows() == [{"recording_id": rec.id, "stored_sha256": rec.sha256}]
