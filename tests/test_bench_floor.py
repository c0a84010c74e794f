"""The ingest bench's CPU floor: each primitive is really measured, and the ceiling follows."""

from __future__ import annotations

from bench.common import MIB
from bench.ingest_floor import Floor, measure


def test_ceiling_is_cores_over_the_summed_costs():
    f = Floor(sha256=1.0, aes_gcm=0.25, tls_receive=0.75, tls_send=0.5)
    assert f.box == 3.0 and f.total == 3.5
    assert round(f.ceiling_mb_s(2)) == round(2 / 3.5 * (1 << 30) / 1e6)


def test_measure_runs_every_step_for_real(box):
    f = measure(box.keys.tls_cert, box.keys.tls_key, size=8 * MIB, reps=1)
    for name in ("sha256", "aes_gcm", "tls_receive", "tls_send"):
        assert getattr(f, name) > 0, name
    assert f.ceiling_mb_s(2) > 0
