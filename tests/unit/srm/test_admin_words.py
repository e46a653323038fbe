"""An admin request the SRM table refuses is answered in the admin's words (issue #21):
what is not possible, on which node in which state, and when it would be."""

from presence_ha.server.srm.events import AdminRequestedFailover, AdminRequestedFallback
from presence_ha.server.srm.runner import refusal_text
from presence_ha.server.srm.table import NodeState


def test_refusals_say_what_is_not_possible_and_when_it_is():
    text = refusal_text(AdminRequestedFallback(), "node1", NodeState.NORMAL)
    assert text.startswith("fallback is not possible while node1 is Normal: only an Idle or Failed Over node")
    text = refusal_text(AdminRequestedFailover(), "node2", NodeState.IDLE)
    assert text.startswith("failover is not possible while node2 is Idle: only a Normal node")
    assert "AdminRequested" not in text
