"""Central's evidence packages: a real sync over TLS Mosquitto, then export and verify them.

The `broker` and `pki` fixtures come from the `tests.sync_fixtures` plugin (see conftest).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgebox.central.index import Index
from edgebox.keys import pem_private
from tests.conftest import SECRET, enroll, run_cli
from tests.sync_fixtures import central_workers, sealed, start_box, wait_for
from tests.test_ingest import upload_all
from tests.test_sync import fill

MIB = 1 << 20
BOX_ID = "van-7"
NAMED = "incident-42_cam.mp4"
NAMED_BYTES = bytes(range(256)) * 5000


def central_one(store: Path, sql: str, params=()) -> dict | None:
    """One row of central's index."""
    index = Index(store)
    try:
        return index.one(sql, params)
    finally:
        index.close()


def sync_two_recordings(tmp_path: Path, broker, pki, blobs: str | None = None):
    """A real box syncs two recordings (one with a camera filename) to real central workers
    (complete files in `blobs` when given); returns (box, workers, store, {recording id:
    bytes})."""
    store = tmp_path / "central"
    workers = central_workers(store, broker, pki, count=2, blobs=blobs)
    box = start_box(tmp_path / "box", broker, pki, BOX_ID)
    payloads = fill(box, 1, MIB + 17)
    camera = enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"], "CAM-NAMED")
    upload_all(camera, NAMED_BYTES, metadata={"filename": NAMED})
    payloads.append(NAMED_BYTES)
    wait_for(lambda: sealed(box), what="recordings synced and sealed")
    head = box.store.one("SELECT max(seq) AS seq FROM custody")["seq"]
    wait_for(
        lambda: (
            (
                central_one(store, "SELECT custody_seq FROM boxes WHERE box_id = ?", (BOX_ID,))
                or {"custody_seq": 0}
            )["custody_seq"]
            >= head
        ),
        what="custody delivered",
    )
    by_hash = {hashlib.sha256(p).hexdigest(): p for p in payloads}
    recordings = {
        r["id"]: by_hash[r["evidence_sha256"]]
        for r in box.store.query("SELECT id, evidence_sha256 FROM recordings")
    }
    assert len(recordings) == 2
    return box, workers, store, recordings


def checkpoint_while_offline(tmp_path: Path, box, broker, pki):
    """Stop the box, log an operator action and sign the head offline, restart the box, and
    wait until central holds that checkpoint; returns the restarted box."""
    folder = tmp_path / "box"
    box.stop()
    old, new = tmp_path / "old.secret", tmp_path / "new.secret"
    old.write_text(SECRET)
    new.write_text("auditor-secret-0123456789")
    config = folder / "edgebox.toml"
    added = run_cli(
        "keys",
        "add-supervisor",
        "auditor",
        "--secret-file",
        str(old),
        "--new-secret-file",
        str(new),
        config=config,
    )
    assert added.returncode == 0, added.stderr
    signed = run_cli("checkpoint", "--json", config=config)
    assert signed.returncode == 0, signed.stderr
    seq = json.loads(signed.stdout)["seq"]
    box = start_box(folder, broker, pki, BOX_ID)
    sql = "SELECT 1 FROM checkpoints WHERE box_id = ? AND seq = ?"
    wait_for(lambda: central_one(store_of(tmp_path), sql, (BOX_ID, seq)), what="checkpoint")
    return box


def store_of(tmp_path: Path) -> Path:
    """Central's store folder in these tests."""
    return tmp_path / "central"


def export(store: Path, key: Path, recording_id: str, out: Path, *extra: str):
    """`edgebox central export` as a real subprocess."""
    return run_cli(
        "central",
        "export",
        recording_id,
        "--store",
        str(store),
        "--key",
        str(key),
        "--out",
        str(out),
        *extra,
    )


def verify(folder: Path, *extra: str):
    """`edgebox central verify-package` as a real subprocess."""
    return run_cli("central", "verify-package", str(folder), *extra)


def failed_checks(result) -> set[str]:
    """Names of the checks a text-mode verify-package run reported as FAIL."""
    return {
        line.split(None, 1)[1].split(":", 1)[0]
        for line in result.stdout.splitlines()
        if line.startswith("FAIL")
    }


def tampered(package: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the package to damage."""
    copy = tmp_path / f"tampered-{name}"
    shutil.copytree(package, copy)
    return copy


def edit_json(path: Path, change) -> None:
    """Load, change and rewrite a JSON file of the package."""
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value, indent=2, sort_keys=True))


def test_export_writes_a_package_that_verifies_and_catches_tampering(tmp_path, broker, pki):
    box, workers, store, recordings = sync_two_recordings(tmp_path, broker, pki)
    try:
        box = checkpoint_while_offline(tmp_path, box, broker, pki)
        key = tmp_path / "box" / "central-demo" / "central.key"
        packages = {}
        for rid, data in recordings.items():
            out = tmp_path / f"package-{rid}"
            result = export(store, key, rid, out, "--json")
            assert result.returncode == 0, result.stderr
            summary = json.loads(result.stdout)
            clip = out / summary["clip"]
            assert clip.read_bytes() == data
            assert summary["evidence_sha256"] == hashlib.sha256(data).hexdigest()
            assert summary["box_id"] == BOX_ID
            assert summary["clip"] == (NAMED if data == NAMED_BYTES else f"{rid}.mp4")
            assert sorted(p.name for p in out.iterdir()) == sorted(
                [summary["clip"], f"{rid}.ebv", "manifest.json", "custody.json", "SHA256SUMS"]
                + ["VERIFY.md"]
            )
            packages[rid] = out
        rid, package = next(iter(packages.items()))
        vault_copy = package / f"{rid}.ebv"
        stored = store / "boxes" / BOX_ID / "recordings" / f"{rid}.ebv"
        assert vault_copy.read_bytes() == stored.read_bytes()
        manifest = json.loads((package / "manifest.json").read_text())
        assert manifest["manifest"]["recording"]["id"] == rid
        identity = box.keys.identity_public().public_bytes_raw()
        assert base64.b64decode(manifest["identity"]) == identity
        trail = json.loads((package / "custody.json").read_text())
        events = [e["event"] for e in trail["recording_entries"]]
        assert events[0] == "upload.started" and "recording.ingested" in events
        assert {"recording.synced", "recording.sealed"} <= set(events)
        assert trail["checkpoints"][-1]["seq"] == trail["chain"][-1]["seq"]
        assert "sha256sum -c SHA256SUMS" in (package / "VERIFY.md").read_text()
        assert "edgebox central verify-package" in (package / "VERIFY.md").read_text()

        # an independent tool agrees with the sums
        sums = subprocess.run(
            ["sha256sum", "-c", "SHA256SUMS"], cwd=package, capture_output=True, text=True
        )
        assert sums.returncode == 0, sums.stdout + sums.stderr

        for folder in packages.values():
            checked = verify(folder)
            assert checked.returncode == 0, checked.stdout + checked.stderr
            assert "FAIL" not in checked.stdout
            assert "VERIFIED" in checked.stdout
        as_json = json.loads(verify(package, "--json").stdout)
        assert as_json["ok"] is True
        assert {c["check"] for c in as_json["checks"]} == {
            "SHA256SUMS",
            "manifest signature",
            "evidence hash",
            "vault file",
            "custody chain",
            "recording entries",
            "checkpoints",
            "ingest entry",
        }

        # one byte of the clip flipped
        copy = tampered(package, tmp_path, "clip")
        clip = copy / manifest["clip"]
        raw = bytearray(clip.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        clip.write_bytes(bytes(raw))
        result = verify(copy)
        assert result.returncode == 1
        assert failed_checks(result) == {"SHA256SUMS", "evidence hash"}, result.stdout
        assert manifest["clip"] in result.stdout

        # the signed manifest edited
        copy = tampered(package, tmp_path, "manifest")
        edit_json(
            copy / "manifest.json",
            lambda m: m["manifest"]["recording"].update(category="nothing to see"),
        )
        result = verify(copy)
        assert result.returncode == 1
        assert failed_checks(result) == {"SHA256SUMS", "manifest signature"}, result.stdout

        # a custody entry edited
        copy = tampered(package, tmp_path, "custody")
        edit_json(copy / "custody.json", lambda t: t["chain"][0].update(actor="user:mallory"))
        result = verify(copy)
        assert result.returncode == 1
        assert {"SHA256SUMS", "custody chain"} <= failed_checks(result), result.stdout
        assert "content altered" in result.stdout

        # a custody entry edited with its hash recomputed: the next link breaks
        copy = tampered(package, tmp_path, "custody-rehashed")

        def rewrite(t):
            from edgebox.custody import entry_hash

            t["chain"][0]["actor"] = "user:mallory"
            t["chain"][0]["hash"] = entry_hash(t["chain"][0])

        edit_json(copy / "custody.json", rewrite)
        result = verify(copy)
        assert result.returncode == 1
        assert "custody chain" in failed_checks(result), result.stdout
        assert "link to entry" in result.stdout

        # a forged checkpoint, and a recording entry left out
        copy = tampered(package, tmp_path, "checkpoint")
        edit_json(
            copy / "custody.json",
            lambda t: (
                t["checkpoints"][-1].update(ts="2001-01-01T00:00:00.000000Z"),
                t["recording_entries"].pop(),
            ),
        )
        result = verify(copy)
        assert result.returncode == 1
        assert {"checkpoints", "recording entries"} <= failed_checks(result), result.stdout
        assert "signature invalid" in result.stdout
    finally:
        box.stop()
        for worker in workers:
            worker.stop()


def test_export_refusals_leave_nothing_behind(tmp_path, broker, pki):
    box, workers, store, recordings = sync_two_recordings(tmp_path, broker, pki)
    try:
        key = tmp_path / "box" / "central-demo" / "central.key"
        rid = next(iter(recordings))
        exports = tmp_path / "exports"
        exports.mkdir()

        def assert_clean(result, out: Path, needle: str):
            assert result.returncode == 2, result.stdout + result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
            assert needle in lines[0]
            assert "Traceback" not in result.stderr
            assert not out.exists() or not any(out.iterdir())
            assert [p.name for p in exports.iterdir() if p.name.startswith(".")] == []

        # unknown recording
        out = exports / "unknown"
        assert_clean(export(store, key, "no-such-recording", out), out, "no-such-recording")

        # another central key: the recording is not wrapped to it (the output folder stays empty)
        wrong = tmp_path / "wrong.key"
        wrong.write_bytes(pem_private(X25519PrivateKey.generate()))
        out = exports / "wrong-key"
        out.mkdir()
        assert_clean(export(store, wrong, rid, out), out, "cannot open")

        # the right key, but no signed checkpoint covers the recording's custody yet
        out = exports / "uncovered"
        assert_clean(export(store, key, rid, out), out, "checkpoint")

        # a box that did not send it
        out = exports / "other-box"
        assert_clean(export(store, key, rid, out, "--box", "van-99"), out, "van-99")

        # an output folder that already holds something is never overwritten
        out = exports / "busy"
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        result = export(store, key, rid, out)
        assert result.returncode == 2 and "not empty" in result.stderr
        assert [p.name for p in out.iterdir()] == ["keep.txt"]

        # `list` still answers
        listed = run_cli("central", "list", "--store", str(store), "--json")
        assert listed.returncode == 0, listed.stderr
        assert {r["recording_id"] for r in json.loads(listed.stdout)} == set(recordings)
    finally:
        box.stop()
        for worker in workers:
            worker.stop()
