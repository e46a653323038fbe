"""The PostgreSQL replication verdict (SPEC §7): setup value 2 only when healthy."""

from __future__ import annotations

import pytest

from presence_ha.db import replication


@pytest.mark.parametrize(
    ("in_recovery", "states", "mismatches", "value"),
    [
        (False, [], 0, replication.HEALTHY),
        (False, ["streaming"], 0, replication.HEALTHY),
        (False, ["catchup"], 0, replication.NOT_STREAMING),
        (False, ["streaming"], 1, replication.MISMATCH),
        (True, [], 0, replication.IN_RECOVERY),
    ],
)
def test_postgres_verdicts(in_recovery, states, mismatches, value):
    standbys = tuple(replication.Standby(f"s{i}", "10.0.0.2", s, "async", None) for i, s in enumerate(states))
    found = [replication.TableMismatch("users", "r", 2, 1)] * mismatches
    assert replication._verdict(in_recovery, standbys, found)[0] == value
