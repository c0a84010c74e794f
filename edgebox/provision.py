"""Creating a box: config file, data folders, database, identity, certificate and review key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgebox import custody
from edgebox.config import Config, load_config, render_config
from edgebox.db import Store
from edgebox.errors import ConfigError
from edgebox.keys import Keyring, key_id, pem_private, pem_public, write_private

CONFIG_NAME = "edgebox.toml"


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
    """Create a new box in `folder`; with `demo`, also a demo central key pair beside it."""
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
    folder.mkdir(parents=True, exist_ok=True)
    config_path.write_text(render_config(config))
    config = load_config(config_path)  # validates what was written
    data = config.data_dir
    for sub in ("vault", "uploads", "replica"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    keys = Keyring.create(data / "keys", box_id)
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
        demo_dir = folder / "central-demo"
        write_private(demo_dir / "central.key", pem_private(central))
        (demo_dir / "central.pub").write_bytes(pem_public(central.public_key()))
        keys.import_central(central.public_key())
        result["central_private_key"] = str(demo_dir / "central.key")
    store = Store(data / "box.db")
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
    return result
