"""Hypothesis settings of the fuzz tests (tests/unit/fuzz).

`HYPOTHESIS_PROFILE` picks the run: `fuzz-ci` (the default: CI's ~60 s for all fuzz
tests together, derandomized so that CI is repeatable) or `long` (50 times the
examples, random: `HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/unit/fuzz`).
The settings apply to these tests only (`@fuzz(n)`), never to other hypothesis tests.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "fuzz-ci")
LONG_FACTOR = 50
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
           "print_blob": True}


def fuzz(examples: int) -> settings:
    """Settings for one fuzz test: `examples` in CI, LONG_FACTOR times as many with `long`."""
    if PROFILE == "long":
        return settings(max_examples=examples * LONG_FACTOR, derandomize=False, **_COMMON)
    if PROFILE != "fuzz-ci":
        raise ValueError(f"HYPOTHESIS_PROFILE={PROFILE!r}: use fuzz-ci or long")
    return settings(max_examples=examples, derandomize=True, database=None, **_COMMON)
