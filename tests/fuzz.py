"""Hypothesis profiles and strategies shared by the property tests and bench/fuzz.py.

Profiles: `edgebox-quick` (the default in the test suite: a few hundred cases in all) and
`edgebox-bench` (the bench run: thousands per property). Select one with
`pytest --hypothesis-profile=NAME` or `HYPOTHESIS_PROFILE=NAME`.
"""

from __future__ import annotations

import base64
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

QUICK, BENCH = "edgebox-quick", "edgebox-bench"
_COMMON = {
    "deadline": None,  # a shared 2-core machine: timing is not what these tests judge
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "database": None,  # no .hypothesis folder left in the tree; failures print their seed
    "derandomize": False,
}
settings.register_profile(QUICK, max_examples=40, **_COMMON)
settings.register_profile(BENCH, max_examples=1250, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", QUICK))

# JSON of any shape, including the deep nesting a hostile peer can send.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def deep_json(depth: int) -> bytes:
    """An array nested `depth` deep: legal JSON that exhausts a recursive decoder."""
    return b"[" * depth + b"]" * depth


def tus_pairs(values: dict[str, str]) -> str:
    """The tus encoding of `values` (`key base64,...`)."""
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())
