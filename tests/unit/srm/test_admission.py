"""Login admission by the SRM state, as pure decisions.

Rules under test: an Initializing SRM is waited for once; a node serving nobody
refuses; the assignment is read only when needed; a user moving here is waited for
once; after the waits, the decision is made with the state as it is then.
"""

from __future__ import annotations

from presence_ha.server.srm.admission import (
    UNREAD,
    Admit,
    ReadAssignment,
    Refusal,
    Refuse,
    Settle,
    SrmView,
    Wait,
    decide,
    settled,
)
from presence_ha.server.srm.table import NodeState as S

NONE: frozenset[Settle] = frozenset()
INIT = frozenset({Settle.INITIALIZED})
BOTH = frozenset({Settle.INITIALIZED, Settle.MOVE_DONE})
NORMAL = SrmView(S.NORMAL, frozenset({"n1"}))
BACKUP = SrmView(S.RUNNING_IN_BACKUP_MODE, frozenset({"n1", "n2"}))
TAKING_OVER = SrmView(S.TAKING_OVER, frozenset())
INITIALIZING = SrmView(S.INITIALIZING, frozenset())


def test_a_starting_srm_is_waited_for_once() -> None:
    assert decide(None, "n1", NONE) == Wait(Settle.INITIALIZED)
    assert decide(INITIALIZING, "n1", NONE) == Wait(Settle.INITIALIZED)
    assert decide(INITIALIZING, "n1", INIT) == Refuse(Refusal.NOT_SERVING)
    assert decide(None, "n1", INIT) == Refuse(Refusal.NOT_SERVING)


def test_a_node_serving_nobody_refuses_before_reading_anything() -> None:
    assert decide(SrmView(S.IDLE, frozenset()), UNREAD, NONE) == Refuse(Refusal.NOT_SERVING)


def test_the_assignment_is_read_when_the_caller_did_not() -> None:
    assert decide(NORMAL, UNREAD, NONE) == ReadAssignment()


def test_own_and_unassigned_users_are_admitted_others_refused() -> None:
    assert decide(NORMAL, "n1", NONE) == Admit()
    assert decide(NORMAL, None, NONE) == Admit()
    assert decide(NORMAL, "n2", NONE) == Refuse(Refusal.USER_MOVING)
    assert decide(BACKUP, "n2", NONE) == Admit()


def test_a_user_moving_here_is_waited_for_once() -> None:
    taking_back = SrmView(S.TAKING_BACK, frozenset({"n1"}))  # serves nobody in the table, here as if it did
    assert decide(taking_back, "n2", NONE) == Wait(Settle.MOVE_DONE)
    assert decide(SrmView(S.RUNNING_IN_BACKUP_MODE, frozenset({"n1", "n2"})), "n2", BOTH) == Admit()
    assert decide(taking_back, "n2", BOTH) == Refuse(Refusal.USER_MOVING)
    assert decide(TAKING_OVER, "n2", BOTH) == Refuse(Refusal.USER_MOVING)  # after the wait: moving, not "no users"


def test_what_settles_a_wait() -> None:
    assert not settled(Settle.INITIALIZED, None) and not settled(Settle.INITIALIZED, INITIALIZING)
    assert settled(Settle.INITIALIZED, TAKING_OVER)
    assert not settled(Settle.MOVE_DONE, TAKING_OVER) and settled(Settle.MOVE_DONE, BACKUP)
