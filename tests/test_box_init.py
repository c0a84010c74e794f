"""Making a box and its keys: bad input gets a clear error (JSON with --json) and changes
nothing, and a box is made whole or not at all."""

from __future__ import annotations

import json

import requests

from tests.conftest import SECRET, run_cli
from tests.test_box_cli import add_supervisor

GOOD = {"EDGEBOX_REVIEW_SECRET": SECRET}


def files_under(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_a_bad_secret_slot_or_option_leaves_nothing_and_the_retry_works(tmp_path):
    box = tmp_path / "b"
    cases = [
        ({"EDGEBOX_REVIEW_SECRET": "abc"}, [], "at least 8 characters"),
        ({"EDGEBOX_REVIEW_SECRET": "        "}, [], "at least 8 characters"),
        (GOOD, ["--supervisor", "../x"], "invalid slot name"),
        (GOOD, ["--box-id", "bad id"], "--box-id: box.box_id must be"),
        (GOOD, ["--listen", "nope"], "--listen:"),
    ]
    for env, options, message in cases:
        result = run_cli("init", str(box), *options, env=env)
        assert result.returncode == 2, (options, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert files_under(box) == [], options
    assert run_cli("init", str(box), env=GOOD).returncode == 0
    assert (box / "edgebox.toml").exists()
    assert oct((box / "data" / "box.db").stat().st_mode & 0o777) == "0o600"


def test_init_over_an_existing_identity_leaves_it_alone_and_writes_no_config(tmp_path):
    first = tmp_path / "first"
    assert run_cli("init", str(first), env=GOOD).returncode == 0
    (first / "edgebox.toml").unlink()  # keys and database left without their config
    before = files_under(first)
    identity = (first / "data" / "keys" / "identity.key").read_bytes()
    result = run_cli("init", str(first), "--box-id", "other", env=GOOD)
    assert result.returncode == 2 and "already holds a box identity" in result.stderr
    assert files_under(first) == before
    assert (first / "data" / "keys" / "identity.key").read_bytes() == identity


def test_file_errors_are_one_line_and_json_with_json(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("init", str(blocker / "box"), env=GOOD)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Not a directory" in result.stderr
    missing = run_cli("init", str(tmp_path / "c"), "--secret-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "No such file or directory" in missing.stderr
    assert not (tmp_path / "c").exists()
    as_json = run_cli("init", str(tmp_path / "d"), "--json", env={"EDGEBOX_REVIEW_SECRET": "x"})
    assert as_json.returncode == 2
    error = json.loads(as_json.stdout)
    assert error["ok"] is False and "at least 8 characters" in error["message"]


def test_an_environment_override_that_fails_validation_is_named(box_config):
    result = run_cli("config", "check", config=box_config, env={"EDGEBOX_BOX__BOX_ID": "bad id"})
    assert result.returncode == 2
    assert "environment EDGEBOX_BOX__BOX_ID: box.box_id must be" in result.stderr


def test_a_low_order_central_key_is_refused_and_changes_nothing(box_config, tmp_path):
    status = json.loads(run_cli("status", "--json", config=box_config).stdout)
    zeros = tmp_path / "zeros.hex"
    zeros.write_text("00" * 32)
    result = run_cli("keys", "import-central", str(zeros), "--json", config=box_config)
    assert result.returncode == 2
    assert "low-order point" in json.loads(result.stdout)["message"]
    after = json.loads(run_cli("status", "--json", config=box_config).stdout)
    assert after["keys"]["central_key_id"] == status["keys"]["central_key_id"]
    assert after["custody"] == status["custody"]


def test_an_existing_supervisor_slot_is_never_replaced(box_config, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text(SECRET)
    new.write_text("another-long-secret")
    slots = box_config.parent / "data" / "keys" / "review-slots"
    (existing,) = slots.glob("*.json")
    before = existing.read_bytes()
    result = add_supervisor(box_config, existing.stem, old, new)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert existing.read_bytes() == before


def test_a_model_with_control_characters_is_refused(box):
    code = box.pairing.new_code()["code"]
    answer = requests.post(
        f"{box.url}/api/v1/cameras/enroll",
        verify=str(box.keys.tls_cert),
        json={"code": code, "serial": "CAM-9", "model": "evil\x1b[31m\nfake line"},
    )
    assert answer.status_code == 400 and answer.json()["field"] == "model"
    assert box.store.one("SELECT COUNT(*) AS n FROM devices")["n"] == 0


def test_an_import_the_custody_log_cannot_record_leaves_the_old_key_active(box_config, tmp_path):
    import sqlite3

    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from edgebox.keys import pem_public

    status = json.loads(run_cli("status", "--json", config=box_config).stdout)
    conn = sqlite3.connect(box_config.parent / "data" / "box.db")
    conn.execute("DROP TABLE custody")  # the log cannot take the event
    conn.commit()
    conn.close()
    new = tmp_path / "central.pub"
    new.write_bytes(pem_public(X25519PrivateKey.generate().public_key()))
    result = run_cli("keys", "import-central", str(new), config=box_config)
    assert result.returncode != 0
    active = (box_config.parent / "data" / "keys" / "central" / "active").read_text().strip()
    assert active == status["keys"]["central_key_id"]
