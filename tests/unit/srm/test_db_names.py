"""The database's copy of the SRM's words stays in step with the table.

Rule: `db/srm_state.py` stores states and reasons as SPEC §6 display strings and
validates them against its own tuples (db imports nothing from server); those tuples
must hold exactly the values of `NodeState` and `Reason`, in the same order.
"""

from __future__ import annotations

from presence_ha.db import srm_state
from presence_ha.server.srm.table import NodeState, Reason


def test_states_match_the_table() -> None:
    assert tuple(state.value for state in NodeState) == srm_state.HA_STATES


def test_reasons_match_the_table() -> None:
    assert tuple(reason.value for reason in Reason) == srm_state.HA_REASONS


def test_failed_over_states_are_states() -> None:
    assert set(srm_state.HA_STATES) >= srm_state.FAILED_OVER_STATES
