"""The stream error for the clients a node lets go (SPEC §8, RFC 6120 §4.9.3.19)."""

from __future__ import annotations

from presence_ha.server.services import StopCause
from presence_ha.server.srm.redirect import RedirectTarget, redirect_error
from presence_ha.server.xmpp.errors import StreamCondition

PEER = RedirectTarget("n2", "10.0.0.2", 5222)


def test_let_go_by_the_srm_with_a_peer_is_see_other_host() -> None:
    error = redirect_error("n1", PEER)
    assert (error.condition, error.other_host, error.text) == (StreamCondition.SEE_OTHER_HOST, "10.0.0.2:5222",
                                                               "served by n2 now")
    assert redirect_error("n1", RedirectTarget("n2", "::1", 5222)).other_host == "[::1]:5222"


def test_without_a_peer_or_stopped_otherwise_it_is_system_shutdown() -> None:
    for error in (redirect_error("n1", None), redirect_error("n1", PEER, StopCause.ADMIN),
                  redirect_error("n1", PEER, StopCause.FAILED)):
        assert (error.condition, error.other_host) == (StreamCondition.SYSTEM_SHUTDOWN, None)
        assert error.text == "node n1 stopped serving"
