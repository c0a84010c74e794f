"""`edgebox export` on a box writes central's evidence package; `edgebox verify-package` checks
it with neither box nor central, and names what was tampered with."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgebox.sync.protocol import sign
from tests.conftest import SECRET, enroll, run_cli
from tests.test_central_export import edit_json, failed_checks, tampered
from tests.test_ingest import upload_all

WITH_SECRET = {"EDGEBOX_REVIEW_SECRET": SECRET}
FILES = {"manifest.json", "custody.json", "SHA256SUMS", "VERIFY.md"}


def export(config: Path, recording_id: str, out: Path, *extra: str):
    """`edgebox export` as a real subprocess, with the supervisor's secret."""
    return run_cli(
        "export", recording_id, "--out", str(out), *extra, config=config, env=WITH_SECRET
    )


def verify(folder: Path, *extra: str):
    """`edgebox verify-package` as a real subprocess."""
    return run_cli("verify-package", str(folder), *extra)


def resum(folder: Path) -> None:
    """Rewrite SHA256SUMS over the (tampered) files, as a careful forger would."""
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
        for p in sorted(folder.iterdir())
        if p.name != "SHA256SUMS"
    ]
    (folder / "SHA256SUMS").write_text("".join(lines))


def test_box_export_is_a_package_that_stands_alone(box, camera, box_config, tmp_path):
    data = bytes(range(256)) * 4099
    upload_all(camera, data, metadata={"filename": "scene-7.mp4"})
    other = enroll(box.url, box.keys.tls_cert, box.pairing.new_code()["code"], "CAM-2")
    upload_all(other, b"second clip" * 999)
    rows = box.store.query("SELECT id, evidence_sha256 FROM recordings ORDER BY received_at")
    rid, second = rows[0]["id"], rows[1]["id"]
    signed_before = box.store.one("SELECT max(seq) AS s FROM checkpoints")["s"] or 0
    last_own = box.store.one("SELECT max(seq) AS s FROM custody WHERE subject = ?", (rid,))["s"]
    assert signed_before < last_own  # no checkpoint covers the recording yet

    out = tmp_path / "usb" / "package"
    done = export(box_config, rid, out, "--by", "sgt-peeters", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["clip"] == "scene-7.mp4"
    assert {p.name for p in out.iterdir()} == FILES | {"scene-7.mp4", f"{rid}.ebv"}
    assert (out / "scene-7.mp4").read_bytes() == data
    assert (out / f"{rid}.ebv").read_bytes() == box.uploads.vault_path(rid).read_bytes()
    package = json.loads((out / "manifest.json").read_text())
    assert package["exported_from"] == "box" and package["exported_by"] == "user:sgt-peeters"
    assert (
        package["identity"]
        == base64.b64encode(box.keys.identity_public().public_bytes_raw()).decode()
    )
    # the export is logged, and a fresh checkpoint signs it: the package ends there
    entry = box.store.one(
        "SELECT * FROM custody WHERE subject = ? AND event = 'recording.exported'", (rid,)
    )
    assert entry["actor"] == "user:sgt-peeters"
    trail = json.loads((out / "custody.json").read_text())
    assert trail["recording_entries"][-1]["seq"] == entry["seq"]
    assert trail["checkpoints"][-1]["seq"] >= entry["seq"] > signed_before
    assert box.store.one(
        "SELECT 1 AS y FROM checkpoints WHERE seq = ?", (summary["custody"]["checkpoint_seq"],)
    )
    sums = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True
    )
    assert sums.returncode == 0, sums.stdout + sums.stderr

    # verify-package needs neither the box nor central: checked after the box is gone
    second_out = tmp_path / "usb" / "second"
    assert export(box_config, second, second_out).returncode == 0
    box.stop()
    hidden = tmp_path / "box-gone"
    box_config.parent.rename(hidden)  # no box, no keys, no database anywhere near
    try:
        for folder in (out, second_out):
            checked = verify(folder)
            assert checked.returncode == 0, checked.stdout + checked.stderr
            assert "VERIFIED" in checked.stdout and "FAIL" not in checked.stdout
    finally:
        hidden.rename(box_config.parent)
    alias = run_cli("central", "verify-package", str(out), "--json")
    assert alias.returncode == 0 and json.loads(alias.stdout)["ok"] is True

    # one byte of the clip flipped
    copy = tampered(out, tmp_path, "clip")
    raw = bytearray((copy / "scene-7.mp4").read_bytes())
    raw[len(raw) // 3] ^= 0x40
    (copy / "scene-7.mp4").write_bytes(bytes(raw))
    result = verify(copy)
    assert result.returncode == 1
    assert failed_checks(result) == {"SHA256SUMS", "evidence hash"}, result.stdout
    assert "scene-7.mp4: SHA-256" in result.stdout

    # the manifest edited, sums recomputed: the signature no longer matches
    copy = tampered(out, tmp_path, "manifest")
    edit_json(copy / "manifest.json", lambda m: m["manifest"]["recording"].update(user_id="nobody"))
    resum(copy)
    result = verify(copy)
    assert failed_checks(result) == {"manifest signature"}, result.stdout
    assert "the box's signature does not match the manifest" in result.stdout

    # a custody entry removed from the chain
    copy = tampered(out, tmp_path, "removed")
    removed = {}

    def drop(t):
        removed.update(t["chain"].pop(1))

    edit_json(copy / "custody.json", drop)
    resum(copy)
    result = verify(copy)
    assert result.returncode == 1
    assert "custody chain" in failed_checks(result), result.stdout
    assert f"does not follow entry {removed['seq'] - 1}" in result.stdout

    # SHA256SUMS edited: names the file whose line lies
    copy = tampered(out, tmp_path, "sums")
    lines = (copy / "SHA256SUMS").read_text().splitlines()
    lines[0] = ("0" if lines[0][0] != "0" else "1") + lines[0][1:]
    (copy / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    result = verify(copy)
    assert failed_checks(result) == {"SHA256SUMS"}, result.stdout
    assert f"{lines[0].split()[1]}: SHA-256 differs from SHA256SUMS" in result.stdout

    # the signature swapped for the other package's
    copy = tampered(out, tmp_path, "signature")
    theirs = json.loads((second_out / "manifest.json").read_text())["signature"]
    edit_json(copy / "manifest.json", lambda m: m.update(signature=theirs))
    resum(copy)
    result = verify(copy)
    assert failed_checks(result) == {"manifest signature"}, result.stdout

    # another key swapped in and the manifest re-signed with it: the box's checkpoints say no
    copy = tampered(out, tmp_path, "identity")
    forger = Ed25519PrivateKey.generate()

    def forge(m):
        m["identity"] = base64.b64encode(forger.public_key().public_bytes_raw()).decode()
        m["signature"] = sign(m["manifest"], forger)

    edit_json(copy / "manifest.json", forge)
    resum(copy)
    result = verify(copy)
    assert failed_checks(result) == {"checkpoints"}, result.stdout
    assert "signature invalid" in result.stdout


def test_export_refusals_change_nothing(box, camera, box_config, tmp_path):
    upload_all(camera, b"evidence" * 5000)
    rid = box.store.one("SELECT id FROM recordings")["id"]
    before = box.store.one("SELECT max(seq) AS s FROM custody")["s"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep")
    cases = [
        (export(box_config, rid, busy), "not empty"),
        (export(box_config, "no-such-recording", tmp_path / "a"), "no recording"),
        (
            run_cli(
                "export",
                rid,
                "--out",
                str(tmp_path / "b"),
                config=box_config,
                env={"EDGEBOX_REVIEW_SECRET": "not the secret at all"},
            ),
            "wrong review secret",
        ),
    ]
    for result, needle in cases:
        assert result.returncode == 2 and needle in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert [p.name for p in busy.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "box") == ["busy"]
    assert box.store.one("SELECT max(seq) AS s FROM custody")["s"] == before
    missing = verify(tmp_path / "busy")
    assert missing.returncode == 1 and "manifest.json is missing" in missing.stdout
