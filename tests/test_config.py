"""Config: TOML file, environment overrides, line-precise errors, `edgebox config check`."""

from __future__ import annotations

import json

import pytest

from edgebox.config import load_config
from edgebox.errors import ConfigError
from tests.conftest import run_cli


def write(tmp_path, text: str):
    path = tmp_path / "edgebox.toml"
    path.write_text(text)
    return path


def test_defaults_and_file_values(tmp_path):
    config = load_config(
        write(tmp_path, '[box]\nbox_id = "van-17"\n[server]\nlisten = "127.0.0.1:9000"\n'),
        environ={},
    )
    assert config.box.box_id == "van-17"
    assert config.listen_address == ("127.0.0.1", 9000)
    assert config.data_dir == (tmp_path / "data").resolve()
    assert config.vault.suite == "AES-256-GCM"


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, "[ingest]\nexpire_hours = 5\n")
    config = load_config(
        path, environ={"EDGEBOX_INGEST__EXPIRE_HOURS": "9", "EDGEBOX_SERVER__TLS": "false"}
    )
    assert config.ingest.expire_hours == 9 and config.server.tls is False


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[box]\nbox_id = "a"\ncolour = "red"\n', "edgebox.toml:3: box.colour: unknown key"),
        ("[box]\n\n[radio]\nx = 1\n", "edgebox.toml:3: [radio]: unknown section"),
        ('[server]\nthreads = "many"\n', "edgebox.toml:2: server.threads: expected int"),
        ('[server]\n\nlisten = "nowhere"\n', "edgebox.toml:3: server.listen"),
        ('[vault]\nsuite = "ROT13"\n', "edgebox.toml:2: vault.suite: vault.suite must be one of"),
        ('[box]\nbox_id = "has space"\n', "edgebox.toml:2: box.box_id"),
        ("[box\n", "invalid TOML"),
    ],
)
def test_errors_name_key_and_line(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert expected in info.value.message


@pytest.mark.parametrize(
    "name, value, expected",
    [
        (
            "EDGEBOX_SERVER__THREADS",
            "x",
            "environment EDGEBOX_SERVER__THREADS: 'x' is not a valid int",
        ),
        ("EDGEBOX_SERVER__COLOUR", "1", "unknown key server.colour"),
        ("EDGEBOX_NOPE__X", "1", "unknown section 'nope'"),
        ("EDGEBOX_SERVER__TLS", "perhaps", "is not a valid bool"),
    ],
)
def test_bad_environment_overrides(tmp_path, name, value, expected):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, ""), environ={name: value})
    assert expected in info.value.message


def test_config_check_cli(tmp_path):
    good = write(tmp_path, '[box]\nbox_id = "van-1"\n')
    result = run_cli("config", "check", "--json", config=good)
    assert (
        result.returncode == 0 and json.loads(result.stdout)["config"]["box"]["box_id"] == "van-1"
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('[box]\nbox_id = "van-1"\nwheels = 4\n')
    result = run_cli("config", "check", config=bad)
    assert result.returncode == 2
    assert "bad.toml:3: box.wheels: unknown key" in result.stderr


def test_config_from_environment_variable(tmp_path):
    path = write(tmp_path, '[box]\nbox_id = "from-env"\n')
    result = run_cli("config", "check", "--json", env={"EDGEBOX_CONFIG": str(path)})
    assert (
        result.returncode == 0
        and json.loads(result.stdout)["config"]["box"]["box_id"] == "from-env"
    )
    result = run_cli("config", "check", env={"EDGEBOX_CONFIG": ""})
    assert result.returncode != 0 and "no box config given" in result.stderr
