"""The command line on a real box: init, keys, cameras, recordings, status, verify, export."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.conftest import SECRET, enroll, run_cli
from tests.test_ingest import upload_all

MIB = 1 << 20


@pytest.fixture
def filled_box(box_process, tmp_path):
    """A box process holding two recordings from one camera; yields (process, payloads)."""
    code = json.loads(run_cli("cameras", "pair", "--json", config=box_process.config).stdout)
    assert len(code["cert_sha256"]) == 64 and code["box_url"].startswith("https://")
    camera = enroll(box_process.url, box_process.cert, code["code"])
    payloads = [os.urandom(2 * MIB + 5), os.urandom(MIB // 3)]
    for data in payloads:
        upload_all(camera, data, metadata={"sha256": hashlib.sha256(data).hexdigest()})
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    return box_process, payloads, secret


def test_init_refuses_to_overwrite_and_needs_a_secret(tmp_path):
    result = run_cli("init", str(tmp_path / "b"), "--demo", "--box-id", "van-9", "--json")
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["box_id"] == "van-9" and os.path.exists(created["central_private_key"])
    again = run_cli("init", str(tmp_path / "b"), "--demo")
    assert again.returncode == 2 and "already exists" in again.stderr
    no_secret = run_cli("init", str(tmp_path / "c"), env={"EDGEBOX_REVIEW_SECRET": ""})
    assert no_secret.returncode != 0 and "no secret" in no_secret.stderr
    assert not (tmp_path / "c" / "edgebox.toml").exists()


def test_key_files_are_private(tmp_path):
    run_cli("init", str(tmp_path / "b"), "--demo")
    keys = tmp_path / "b" / "data" / "keys"
    for name in ("identity.key", "tls.key", "ingest.key"):
        assert oct((keys / name).stat().st_mode & 0o777) == "0o600"
    slot = json.loads(next((keys / "review-slots").glob("*.json")).read_text())
    assert slot["kdf"] == "argon2id" and "demo-supervisor" not in json.dumps(slot)


def test_import_central_key(box_config, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from edgebox.keys import key_id, pem_public

    new = X25519PrivateKey.generate().public_key()
    path = tmp_path / "central.pub"
    path.write_bytes(pem_public(new))
    result = run_cli("keys", "import-central", str(path), "--json", config=box_config)
    assert json.loads(result.stdout)["central_key_id"] == key_id(new)
    status = json.loads(run_cli("status", "--json", config=box_config).stdout)
    assert status["keys"]["central_key_id"] == key_id(new)
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key")
    result = run_cli("keys", "import-central", str(garbage), config=box_config)
    assert result.returncode == 2 and "not an X25519 public key" in result.stderr
    status = json.loads(run_cli("status", "--json", config=box_config).stdout)
    assert status["keys"]["central_key_id"] == key_id(new)


def add_supervisor(config, name: str, secret_file, new_secret_file):
    """Run `edgebox keys add-supervisor NAME` with both secrets from files."""
    return run_cli(
        "keys",
        "add-supervisor",
        name,
        "--secret-file",
        str(secret_file),
        "--new-secret-file",
        str(new_secret_file),
        config=config,
    )


def test_add_supervisor_slot(box_config, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text(SECRET)
    new.write_text("second-supervisor-secret")
    result = add_supervisor(box_config, "sgt-peeters", old, new)
    assert result.returncode == 0, result.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("not the secret at all")
    result = add_supervisor(box_config, "intruder", wrong, new)
    assert result.returncode == 2 and "wrong review secret" in result.stderr


def test_listing_status_and_cameras(filled_box):
    process, payloads, _ = filled_box
    listed = json.loads(run_cli("recordings", "list", "--json", config=process.config).stdout)
    assert sorted(r["evidence_sha256"] for r in listed) == sorted(
        hashlib.sha256(p).hexdigest() for p in payloads
    )
    status = json.loads(run_cli("status", "--json", config=process.config).stdout)
    assert status["recordings"]["n"] == 2 and status["cameras"]["paired"] == 1
    cams = json.loads(run_cli("cameras", "list", "--json", config=process.config).stdout)
    assert cams[0]["serial"] == "CAM-0001" and "token_hash" not in cams[0]
    revoked = run_cli("cameras", "revoke", cams[0]["id"], "--json", config=process.config)
    assert json.loads(revoked.stdout)["revoked_at"]
    again = run_cli("cameras", "revoke", cams[0]["id"], config=process.config)
    assert again.returncode == 2 and "already revoked" in again.stderr


def test_verify_healthy_then_damaged(filled_box):
    process, _, _ = filled_box
    healthy = run_cli("verify", "--json", "--checkpoint", config=process.config)
    assert healthy.returncode == 0, healthy.stdout
    assert json.loads(healthy.stdout)["recordings"] == 2
    listed = json.loads(run_cli("recordings", "list", "--json", config=process.config).stdout)
    victim = process.config.parent / "data" / "vault" / f"{listed[0]['id']}.ebv"
    raw = bytearray(victim.read_bytes())
    raw[5000] ^= 0x01
    victim.write_bytes(bytes(raw))
    damaged = run_cli("verify", config=process.config)
    assert damaged.returncode == 1
    assert (
        f"FAIL recording {listed[0]['id']}: {victim.name}: stored bytes changed" in damaged.stdout
    )
    other = process.config.parent / "data" / "vault" / f"{listed[1]['id']}.ebv"
    other.write_bytes(other.read_bytes()[:-10])
    damaged = json.loads(run_cli("verify", "--json", config=process.config).stdout)
    assert any("file truncated" in p and listed[1]["id"] in p for p in damaged["problems"])


def test_verify_deep_detects_tampered_segment(filled_box):
    process, _, secret = filled_box
    deep = run_cli(
        "verify", "--deep", "--secret-file", str(secret), "--json", config=process.config
    )
    assert deep.returncode == 0 and json.loads(deep.stdout)["decrypted"] == 2


def test_verify_finds_rewritten_custody(filled_box):
    import sqlite3

    process, _, _ = filled_box
    run_cli("checkpoint", config=process.config)
    process.stop()
    conn = sqlite3.connect(process.config.parent / "data" / "box.db")
    conn.execute("UPDATE custody SET actor = 'someone-else' WHERE seq = 3")
    conn.commit()
    conn.close()
    result = run_cli("verify", config=process.config)
    assert result.returncode == 1 and "custody entry 3" in result.stdout


def test_export_with_secret(filled_box, tmp_path):
    process, payloads, secret = filled_box
    listed = json.loads(run_cli("recordings", "list", "--json", config=process.config).stdout)
    target = next(r for r in listed if r["size"] == len(payloads[0]))
    out = tmp_path / "export" / "package"
    out.parent.mkdir()
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong secret here")
    refused = run_cli(
        "export",
        target["id"],
        "--out",
        str(out),
        "--secret-file",
        str(wrong),
        config=process.config,
    )
    assert refused.returncode == 2 and "wrong review secret" in refused.stderr and not out.exists()
    result = run_cli(
        "export",
        target["id"],
        "--out",
        str(out),
        "--secret-file",
        str(secret),
        "--by",
        "sgt-peeters",
        "--json",
        config=process.config,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (out / summary["clip"]).read_bytes() == payloads[0]
    manifest = json.loads((out / "manifest.json").read_text())
    signed = manifest["manifest"]["recording"]
    assert signed["evidence_sha256"] == hashlib.sha256(payloads[0]).hexdigest()
    assert manifest["exported_by"] == "user:sgt-peeters"
    trail = json.loads((out / "custody.json").read_text())
    assert [e["event"] for e in trail["recording_entries"]] == [
        "upload.started",
        "recording.ingested",
        "recording.exported",
    ]
    assert trail["recording_entries"][-1]["actor"] == "user:sgt-peeters"
    assert run_cli("verify-package", str(out)).returncode == 0
    missing = run_cli(
        "export",
        "no-such-id",
        "--out",
        str(tmp_path / "x"),
        "--secret-file",
        str(secret),
        config=process.config,
    )
    assert missing.returncode == 2 and "no recording no-such-id" in missing.stderr
