"""Hypothesis settings of the fuzz tests (tests/unit/fuzz).

`HYPOTHESIS_PROFILE` picks the run: `fuzz-ci` (the default: CI's ~60 s for all fuzz
tests together, derandomized so that CI is repeatable) or `long` (50 times CI's
examples, random: `HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest -p no:timeout
tests/unit/fuzz`).
The settings apply to these tests only (`@fuzz(n)`), never to other hypothesis tests.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "fuzz-ci")
# `@fuzz(n)` counts are scaled by CI_FACTOR: x1 took 10.5 s of CPU, x4 23.8 s
# (wall 2:25 and 1:39 at load average 20 and 10); x10 makes ~60 s of CPU for CI.
CI_FACTOR = 10
LONG_FACTOR = 500  # x50 of CI: ~50 min of CPU
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
           "print_blob": True}


def fuzz(examples: int) -> settings:
    """Settings for one fuzz test: `examples` x CI_FACTOR in CI, x LONG_FACTOR with `long`."""
    if PROFILE == "long":
        return settings(max_examples=examples * LONG_FACTOR, derandomize=False, **_COMMON)
    if PROFILE != "fuzz-ci":
        raise ValueError(f"HYPOTHESIS_PROFILE={PROFILE!r}: use fuzz-ci or long")
    return settings(max_examples=examples * CI_FACTOR, derandomize=True, database=None, **_COMMON)
