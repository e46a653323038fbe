"""A dual client without a usable inactive connection fails over at once (issue 18, item 5).

SPEC §8 has every client without a backup connection wait a random re-login delay
(minutes by default). Issue 18 asks that a dual client whose inactive connection was
not open yet (or was lost) dial the peer at once when its active connection ends by a
failover, retrying with backoff; single mode keeps SPEC's delay.
"""

from __future__ import annotations

import pytest

from presence_ha.client.policy import (
    BackupInfoReceived,
    Connect,
    Connected,
    ConnectFailed,
    ConnectionLost,
    Role,
    Started,
    StartTimer,
    Timer,
)
from tests.unit.client.harness import BACKUP, HOME, Harness, backup_info, of_type


def logged_in(h: Harness, lower: float = 120, upper: float = 537, endpoint=BACKUP) -> None:
    """Active on HOME, backup answer in, the inactive connection not opened yet."""
    h.feed(Started())
    h.feed(Connected(Role.ACTIVE))
    h.feed(BackupInfoReceived(backup_info(lower, upper, endpoint)))


def relogin_timer(actions) -> StartTimer:
    (timer,) = [a for a in of_type(actions, StartTimer) if a.timer is Timer.RELOGIN]
    return timer


def test_lost_before_the_inactive_connection_dials_the_backup_at_once() -> None:
    h = Harness()
    logged_in(h)
    actions = h.feed(ConnectionLost(Role.ACTIVE, detail="connection reset"))
    assert relogin_timer(actions).seconds == 0
    assert h.advance(0) == [Connect(Role.ACTIVE, BACKUP)]


def test_redirect_back_during_the_failover_then_refused_retries_the_peer_with_backoff() -> None:
    """The issue's stranding: n1 redirects to n2 before n2 serves the user, n2 sends the
    client back to n1, n1 (failed over) refuses: the client tries n2 again in well under
    a second, not after the re-login delay."""
    h = Harness()
    logged_in(h)
    h.feed(ConnectionLost(Role.ACTIVE, redirect=BACKUP))
    assert h.advance(0) == [Connect(Role.ACTIVE, BACKUP)]
    assert Connect(Role.ACTIVE, HOME) in h.feed(ConnectFailed(Role.ACTIVE, redirect=HOME))
    timer = relogin_timer(h.feed(ConnectFailed(Role.ACTIVE, detail="connection refused")))
    assert 0.1 <= timer.seconds <= 0.2  # first backoff step: [base/2, base]
    assert h.advance(timer.seconds) == [Connect(Role.ACTIVE, BACKUP)]
    assert h.feed(Connected(Role.ACTIVE))
    assert h.policy.state.active_endpoint == BACKUP and h.policy.state.failover_target is None


@pytest.mark.parametrize("seed", range(20))
def test_failover_retries_back_off_exponentially_then_fall_back_to_the_relogin_delay(seed: int) -> None:
    h = Harness(seed, failover_attempts=5, failover_retry_s=(0.2, 1.0))
    logged_in(h, 30, 60)
    h.feed(ConnectionLost(Role.ACTIVE))
    h.advance(0)
    for attempt in range(1, 6):
        timer = relogin_timer(h.feed(ConnectFailed(Role.ACTIVE, detail="refused")))
        assert 0.1 <= timer.seconds <= min(1.0, 0.2 * 2 ** (attempt - 1))
        assert h.advance(timer.seconds) == [Connect(Role.ACTIVE, BACKUP)]
    timer = relogin_timer(h.feed(ConnectFailed(Role.ACTIVE, detail="refused")))
    assert 30 <= timer.seconds <= 60  # given up on the quick path: SPEC's re-login delay
    assert h.policy.state.failover_target is None


def test_inactive_connection_failing_while_the_active_is_down_dials_at_once() -> None:
    h = Harness()
    logged_in(h, 1, 1)
    h.advance(1)  # the inactive connection is being opened
    h.feed(ConnectionLost(Role.ACTIVE))
    actions = h.feed(ConnectFailed(Role.INACTIVE, detail="refused"))
    assert relogin_timer(actions).seconds == 0
    assert h.advance(0) == [Connect(Role.ACTIVE, BACKUP)]


def test_ha_off_keeps_the_relogin_delay() -> None:
    h = Harness()
    logged_in(h, 3, 7, endpoint=None)
    timer = relogin_timer(h.feed(ConnectionLost(Role.ACTIVE)))
    assert 3 <= timer.seconds <= 7


@pytest.mark.parametrize("seed", range(10))
def test_single_mode_keeps_the_relogin_delay(seed: int) -> None:
    h = Harness(seed, dual=False)
    logged_in(h, 3, 7)
    timer = relogin_timer(h.feed(ConnectionLost(Role.ACTIVE)))
    assert 3 <= timer.seconds <= 7
    h.advance(timer.seconds)
    timer = relogin_timer(h.feed(ConnectFailed(Role.ACTIVE, detail="refused")))
    assert 3 <= timer.seconds <= 7  # no quick retries either
