"""Reconnect delays for link clients (pure: randomness comes in as a `random.Random`).

Rules of this module:
- Capped exponential backoff with "equal jitter": half of the current ceiling is fixed,
  half is random, so many nodes retrying after one event spread out, yet no retry is
  ever immediate-in-a-loop (delay >= initial_s / 2).
"""

from __future__ import annotations

import random


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait before retry number `attempt` (0 = the first retry)."""
    if attempt < 0 or initial_s <= 0 or max_s < initial_s:
        raise ValueError("need attempt >= 0 and 0 < initial_s <= max_s")
    ceiling = min(max_s, initial_s * 2.0 ** min(attempt, 60))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)
