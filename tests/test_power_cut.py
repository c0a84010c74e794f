"""A power cut right after `edgebox init`: on a loop-mounted ext4, the medium is copied the
moment init returns (what the page cache had not yet written back is not in the copy, as after
a real cut) and the copy mounted in its place. Every file init wrote must be there whole, and
the box must start and verify. Before init made its public files durable, the TLS certificate,
the public keys and the config were empty after the cut and the box could not start. (On
the old code this fails unless the kernel wrote those pages back within the second between
init and the copy, as it may on a machine busy writing; on correct code it cannot fail.)"""

from __future__ import annotations

import os

import pytest

from bench.soak_world import LoopDisk
from edgebox.box import Box
from edgebox.config import load_config
from tests.conftest import make_box, run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a loop mount needs root")


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_everything_init_wrote_survives_a_power_cut_right_after_it(tmp_path):
    disk = LoopDisk(tmp_path / "medium", 64)
    assert disk.mounted, disk.problem
    try:
        config_path = make_box(disk.mount / "box")
        written = _files(disk.mount / "box")
        disk.power_cut()
        after = _files(disk.mount / "box")
        lost = sorted(  # the database's own files are checked by `edgebox verify` below
            str(name)
            for name, data in written.items()
            if not name.name.startswith("box.db") and after.get(name) != data
        )
        assert not lost, f"not on the medium after the cut: {lost}"
        box = Box(load_config(config_path)).start(("127.0.0.1", 0))
        box.stop()
        verified = run_cli("verify", config=config_path)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        disk.close()
