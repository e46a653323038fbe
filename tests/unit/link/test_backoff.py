"""Reconnect backoff: grows, is capped, jitters within bounds, is reproducible."""

import random

import pytest

from presence_ha.server.link.backoff import backoff_delay


def test_delays_grow_then_cap_and_stay_in_the_jitter_band():
    rng = random.Random(7)
    for attempt in range(20):
        ceiling = min(2.0, 0.1 * 2**attempt)
        delay = backoff_delay(attempt, 0.1, 2.0, rng)
        assert ceiling / 2 <= delay <= ceiling


def test_jitter_comes_from_the_injected_rng():
    a = [backoff_delay(i, 0.1, 5.0, random.Random(1)) for i in range(5)]
    b = [backoff_delay(i, 0.1, 5.0, random.Random(1)) for i in range(5)]
    c = [backoff_delay(i, 0.1, 5.0, random.Random(2)) for i in range(5)]
    assert a == b != c


def test_huge_attempt_numbers_do_not_overflow():
    assert backoff_delay(10_000, 0.1, 3.0, random.Random(0)) <= 3.0


@pytest.mark.parametrize("args", [(-1, 0.1, 1.0), (0, 0.0, 1.0), (0, 2.0, 1.0)])
def test_bad_arguments(args):
    with pytest.raises(ValueError, match="need attempt >= 0"):
        backoff_delay(*args, random.Random(0))
