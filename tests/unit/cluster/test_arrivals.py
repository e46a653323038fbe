"""Users moved here, not active yet (server.cluster.arrivals): what stanzas for them wait on."""

from __future__ import annotations

from presence_ha.server.cluster.arrivals import Arrivals


async def test_stanzas_wait_from_the_move_until_the_users_are_active():
    arrivals, gave_up = Arrivals(), []
    assert arrivals.pending() is None and arrivals.settle() is False
    arrivals.expect(60.0, lambda: gave_up.append(True))
    waiting = arrivals.pending()
    assert waiting is not None and not waiting.done()
    arrivals.expect(60.0, lambda: gave_up.append(True))  # a second move: the same wait goes on
    assert arrivals.pending() is waiting
    assert arrivals.settle() is True and waiting.done()
    assert arrivals.settle() is False and gave_up == []


async def test_users_that_left_close_the_window_and_nothing_is_settled_later():
    arrivals, gave_up = Arrivals(), []
    arrivals.expect(60.0, lambda: gave_up.append(True))
    arrivals.cancel()
    assert arrivals.settle() is False and gave_up == []
