"""The PostgreSQL replication verdict (SPEC §7): setup value 2 only when a standby streams synchronously."""

from __future__ import annotations

import pytest

from presence_ha.db import replication


def _standby(i: int, state: str, sync_state: str) -> replication.Standby:
    return replication.Standby(f"s{i}", "198.18.0.2", state, sync_state, None, None, None, None, 0, None, None, None)


@pytest.mark.parametrize(
    ("in_recovery", "standbys", "mismatches", "value", "is_fault"),
    [
        (False, [], 0, replication.NO_REPLICATION, False),
        (False, [("streaming", "async")], 0, replication.NOT_SYNCHRONOUS, False),
        (False, [("streaming", "potential")], 0, replication.NOT_SYNCHRONOUS, False),
        (False, [("streaming", "sync")], 0, replication.HEALTHY, False),
        (False, [("streaming", "quorum")], 0, replication.HEALTHY, False),
        (False, [("streaming", "async"), ("streaming", "sync")], 0, replication.HEALTHY, False),
        (False, [("catchup", "sync")], 0, replication.NOT_SYNCHRONOUS, True),
        (False, [(replication.HIDDEN, replication.HIDDEN)], 0, replication.NOT_SYNCHRONOUS, True),
        (False, [("streaming", "sync")], 1, replication.MISMATCH, True),
        (True, [], 0, replication.IN_RECOVERY, True),
    ],
)
def test_postgres_verdicts(in_recovery, standbys, mismatches, value, is_fault):
    found = [replication.TableMismatch("users", "r", 2, 1)] * mismatches
    chosen = tuple(_standby(i, state, sync) for i, (state, sync) in enumerate(standbys))
    got, summary, fault = replication._verdict(in_recovery, chosen, found)
    assert got == value, summary
    assert (fault is not None) == is_fault
