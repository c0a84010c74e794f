"""Creating a box: config file, data folders, database, identity, certificate and review key."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgebox import custody
from edgebox.config import Config, load_config, render_config
from edgebox.config import check as check_config
from edgebox.db import Store
from edgebox.errors import ConfigError, EdgeboxError
from edgebox.keys import (
    Keyring,
    check_review_slot,
    key_id,
    pem_private,
    pem_public,
    write_private,
)
from edgebox.lowlevel.durable import atomic_write, fsync_dir

CONFIG_NAME = "edgebox.toml"


OPTION_OF = {
    "box.box_id": "--box-id",
    "box.organisation": "--organisation",
    "box.site": "--site",
    "server.listen": "--listen",
}


def init_box(
    folder: Path,
    *,
    box_id: str,
    organisation: str,
    site: str,
    listen: str,
    supervisor: str,
    review_secret: str,
    demo: bool = False,
) -> dict:
    """Create a new box in `folder`; with `demo`, also a demo central key pair beside it.

    Every input is checked before anything is written, and a failure on the way (a folder
    that already holds keys, a read-only disk) removes what this call created: a box is
    made whole or not at all."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if config_path.exists():
        raise ConfigError(f"{config_path} already exists; refusing to overwrite a box")
    defaults = Config()
    config = dataclasses.replace(
        defaults,
        box=dataclasses.replace(defaults.box, box_id=box_id, organisation=organisation, site=site),
        server=dataclasses.replace(defaults.server, listen=listen),
    )
    try:
        check_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{OPTION_OF.get(exc.field, exc.field)}: {exc.message}") from None
    check_review_slot(supervisor, review_secret)
    undo = _Undo()
    try:
        return _create(folder, config_path, config, supervisor, review_secret, demo, undo)
    except OSError as exc:
        undo.run()
        raise EdgeboxError(f"cannot create the box in {folder}: {exc.strerror or exc}") from None
    except BaseException:
        undo.run()
        raise


class _Undo:
    """The files and folders one `init_box` created, to remove them if it fails."""

    def __init__(self):
        self.paths: list[Path] = []

    def new(self, path: Path) -> Path:
        """Note `path` for removal unless it existed already; returns it."""
        if not path.exists():
            self.paths.append(path)
        return path

    def run(self) -> None:
        """Remove what was created, newest first."""
        for path in reversed(self.paths):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _create(
    folder: Path,
    config_path: Path,
    config: Config,
    supervisor: str,
    review_secret: str,
    demo: bool,
    undo: _Undo,
) -> dict:
    box_id = config.box.box_id
    undo.new(folder).mkdir(parents=True, exist_ok=True)
    atomic_write(undo.new(config_path), render_config(config).encode())
    config = load_config(config_path)  # what was written reads back the same
    data = undo.new(config.data_dir)
    for sub in ("vault", "uploads", "replica"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    keys = Keyring.create(undo.new(data / "keys"), box_id)
    keys.add_review_slot(supervisor, review_secret)
    result = {
        "config": str(config_path),
        "data_dir": str(data),
        "box_id": box_id,
        "review_key_id": keys.review_public()[0],
        "supervisor": supervisor,
    }
    if demo:
        central = X25519PrivateKey.generate()
        demo_dir = undo.new(folder / "central-demo")
        write_private(demo_dir / "central.key", pem_private(central))
        atomic_write(demo_dir / "central.pub", pem_public(central.public_key()))
        keys.import_central(central.public_key())
        result["central_private_key"] = str(demo_dir / "central.key")
    for suffix in ("", "-wal", "-shm"):
        undo.new(data / f"box.db{suffix}")
    store = Store(data / "box.db")
    # Password and token hashes: owner only (SQLite gives its journal files the same mode).
    os.chmod(data / "box.db", 0o600)
    try:
        with store.write() as db:
            custody.append(
                db,
                "box.initialised",
                "operator",
                box_id,
                {
                    "identity_key_id": key_id(keys.identity_public()),
                    "review_key_id": result["review_key_id"],
                    "supervisor_slot": supervisor,
                },
            )
            if demo:
                custody.append(
                    db,
                    "key.central_imported",
                    "operator",
                    None,
                    {"key_id": key_id(central.public_key()), "demo": True},
                )
        custody.make_checkpoint(store, box_id, keys.identity())
    finally:
        store.close()
    made_folders = (data / "keys", data, data.parent, config_path.parent, folder.parent)
    for made in dict.fromkeys(made_folders):
        fsync_dir(made)  # the new folders' own entries survive a power cut too
    return result
