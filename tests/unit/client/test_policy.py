"""`client.policy.DualPolicy` as transcripts: facts in, commands out, on a fake clock (SPEC §8)."""

from __future__ import annotations

import pytest

from presence_ha.client.policy import (
    Activate,
    ActivationDone,
    ActivationRefused,
    BackupInfoReceived,
    Connect,
    Connected,
    ConnectFailed,
    ConnectionLost,
    Disconnect,
    HoldRefused,
    Link,
    Promote,
    QueryBackup,
    Role,
    SendPresence,
    Started,
    StartTimer,
    Stopped,
    Timer,
)
from tests.unit.client.harness import BACKUP, HOME, OTHER, Harness, backup_info, of_type


def test_login_then_backup_query() -> None:
    h = Harness()
    assert h.feed(Started()) == [Connect(Role.ACTIVE, HOME)]
    assert h.feed(Connected(Role.ACTIVE)) == [QueryBackup()]
    assert h.policy.state.active is Link.UP


@pytest.mark.parametrize("seed", range(50))
def test_inactive_connection_opens_after_a_random_delay_within_the_limits(seed: int) -> None:
    h = Harness(seed)
    h.feed(Started())
    h.feed(Connected(Role.ACTIVE))
    (timer,) = of_type(h.feed(BackupInfoReceived(backup_info(2.0, 5.0))), StartTimer)
    assert timer.timer is Timer.OPEN_INACTIVE and 2.0 <= timer.seconds <= 5.0
    assert of_type(h.advance(timer.seconds - 0.01), Connect) == []  # not before the delay
    assert h.advance(0.01) == [Connect(Role.INACTIVE, BACKUP)]
    h.feed(Connected(Role.INACTIVE))
    assert h.policy.state.inactive is Link.UP


def test_delays_differ_between_clients() -> None:
    delays = set()
    for seed in range(20):
        h = Harness(seed)
        h.feed(Started())
        h.feed(Connected(Role.ACTIVE))
        delays.add(of_type(h.feed(BackupInfoReceived(backup_info(120, 537))), StartTimer)[0].seconds)
    assert len(delays) == 20  # spread, not one thundering herd


def test_ha_off_no_inactive_connection() -> None:
    h = Harness()
    h.feed(Started())
    h.feed(Connected(Role.ACTIVE))
    actions = h.feed(BackupInfoReceived(backup_info(endpoint=None)))
    assert of_type(actions, StartTimer) == []
    assert of_type(h.advance(10_000), Connect) == []
    assert h.policy.state.inactive is Link.DOWN


def test_single_mode_never_opens_an_inactive_connection() -> None:
    h = Harness(dual=False)
    h.feed(Started())
    h.feed(Connected(Role.ACTIVE))
    h.feed(BackupInfoReceived(backup_info()))
    assert of_type(h.advance(10_000), Connect) == []


def test_ha_turned_off_drops_the_inactive_connection() -> None:
    h = Harness()
    h.dual_up()
    actions = h.feed(BackupInfoReceived(backup_info(endpoint=None)))
    assert Disconnect(Role.INACTIVE) in actions and h.policy.state.inactive is Link.DOWN


def test_active_lost_activates_then_retries_while_the_backup_is_not_serving_yet() -> None:
    h = Harness(activate_retry_s=0.2)
    h.dual_up()
    assert Activate() in h.feed(ConnectionLost(Role.ACTIVE))
    assert h.policy.state.activating
    assert h.feed(ActivationRefused(retry=True)) == [StartTimer(Timer.ACTIVATE_RETRY, 0.2)]
    assert h.advance(0.19) == []
    assert h.advance(0.01) == [Activate()]
    actions = h.feed(ActivationDone(presence_restored=False))
    assert of_type(actions, Promote) and of_type(actions, SendPresence) and of_type(actions, QueryBackup)
    state = h.policy.state
    got = (state.active, state.active_endpoint, state.inactive, state.activating)
    assert got == (Link.UP, BACKUP, Link.DOWN, False)


def test_restored_presence_is_not_sent_again() -> None:
    h = Harness()
    h.dual_up()
    h.feed(ConnectionLost(Role.ACTIVE))
    actions = h.feed(ActivationDone(presence_restored=True))
    assert of_type(actions, Promote) and not of_type(actions, SendPresence)


def test_next_inactive_connection_goes_to_the_new_backup() -> None:
    h = Harness()
    h.dual_up()
    h.feed(ConnectionLost(Role.ACTIVE))
    h.feed(ActivationDone(True))
    h.feed(BackupInfoReceived(backup_info(1, 1, endpoint=HOME)))  # n1 backs up n2 now
    assert h.advance(1) == [Connect(Role.INACTIVE, HOME)]


def test_server_push_while_the_old_active_is_up_promotes_make_before_break() -> None:
    h = Harness()
    h.dual_up()
    actions = h.feed(ActivationDone(presence_restored=True, by_server=True))
    assert of_type(actions, Promote) and not of_type(actions, Disconnect)
    assert h.policy.state.active_endpoint == BACKUP


def test_redirect_to_the_inactive_node_activates_it() -> None:
    h = Harness()
    h.dual_up()
    assert Activate() in h.feed(ConnectionLost(Role.ACTIVE, redirect=BACKUP))


def test_redirect_elsewhere_drops_the_inactive_and_relogs_in_there_at_once() -> None:
    h = Harness()
    h.dual_up(2, 5)
    actions = h.feed(ConnectionLost(Role.ACTIVE, redirect=OTHER))
    assert Disconnect(Role.INACTIVE) in actions and not of_type(actions, Activate)
    (timer,) = [a for a in of_type(actions, StartTimer) if a.timer is Timer.RELOGIN]
    assert timer.seconds == 0  # a planned move (fallback): no re-login delay
    assert h.advance(timer.seconds) == [Connect(Role.ACTIVE, OTHER)]


@pytest.mark.parametrize("seed", range(30))
def test_without_backup_connection_relogin_after_random_delay_to_the_other_node(seed: int) -> None:
    h = Harness(seed, dual=False)
    h.feed(Started())
    h.feed(Connected(Role.ACTIVE))
    h.feed(BackupInfoReceived(backup_info(3, 7)))
    (timer,) = of_type(h.feed(ConnectionLost(Role.ACTIVE)), StartTimer)
    assert timer.timer is Timer.RELOGIN and 3 <= timer.seconds <= 7
    assert of_type(h.advance(timer.seconds - 0.01), Connect) == []
    assert h.advance(0.01) == [Connect(Role.ACTIVE, BACKUP)]  # the lost node is tried last


def test_relogin_alternates_between_known_nodes_on_failure() -> None:
    h = Harness(dual=False)
    h.feed(Started())
    h.feed(Connected(Role.ACTIVE))
    h.feed(BackupInfoReceived(backup_info(1, 1)))
    h.feed(ConnectionLost(Role.ACTIVE))
    assert h.advance(1) == [Connect(Role.ACTIVE, BACKUP)]
    h.feed(ConnectFailed(Role.ACTIVE, detail="refused"))
    assert h.advance(1) == [Connect(Role.ACTIVE, HOME)]


def test_first_login_uses_default_limits() -> None:
    h = Harness()
    h.feed(Started())
    (timer,) = of_type(h.feed(ConnectFailed(Role.ACTIVE, detail="refused")), StartTimer)
    assert 120 <= timer.seconds <= 537


def test_login_redirect_is_followed_at_once_but_bounded() -> None:
    h = Harness(max_login_redirects=2)
    h.feed(Started())
    assert Connect(Role.ACTIVE, BACKUP) in h.feed(ConnectFailed(Role.ACTIVE, redirect=BACKUP))
    assert Connect(Role.ACTIVE, HOME) in h.feed(ConnectFailed(Role.ACTIVE, redirect=HOME))
    actions = h.feed(ConnectFailed(Role.ACTIVE, redirect=BACKUP))
    assert not of_type(actions, Connect) and of_type(actions, StartTimer)


def test_activation_gives_up_after_the_timeout_and_logs_in_to_the_backup_at_once() -> None:
    h = Harness(activation_timeout_s=3, activate_retry_s=0.5)
    h.dual_up(1, 1)
    h.feed(ConnectionLost(Role.ACTIVE))
    for _ in range(5):
        h.feed(ActivationRefused(retry=True))
        h.advance(0.5)
    actions = h.advance(0.6)
    assert Disconnect(Role.INACTIVE) in actions and h.policy.state.inactive is Link.DOWN
    # a failover with no usable inactive connection: no re-login delay (issue 18)
    assert of_type(actions, Connect) == [Connect(Role.ACTIVE, BACKUP)]


def test_final_refusal_relogs_in() -> None:
    h = Harness()
    h.dual_up(1, 1)
    h.feed(ConnectionLost(Role.ACTIVE))
    actions = h.feed(ActivationRefused(retry=False))
    assert Disconnect(Role.INACTIVE) in actions and not h.policy.state.activating
    assert of_type(h.advance(1), Connect)


def test_inactive_lost_while_activating_relogs_in() -> None:
    h = Harness()
    h.dual_up(1, 1)
    h.feed(ConnectionLost(Role.ACTIVE))
    h.feed(ConnectionLost(Role.INACTIVE))
    assert h.advance(1) == [Connect(Role.ACTIVE, BACKUP)]


def test_inactive_lost_while_active_up_is_reopened_after_a_delay() -> None:
    h = Harness()
    h.dual_up(1, 1)
    assert of_type(h.feed(ConnectionLost(Role.INACTIVE)), StartTimer)
    assert h.advance(1) == [Connect(Role.INACTIVE, BACKUP)]


def test_active_lost_while_the_inactive_connects_activates_once_it_is_up() -> None:
    h = Harness()
    h.feed(Started())
    h.feed(Connected(Role.ACTIVE))
    h.feed(BackupInfoReceived(backup_info(1, 1)))
    h.advance(1)
    assert not of_type(h.feed(ConnectionLost(Role.ACTIVE)), Activate)
    assert Activate() in h.feed(Connected(Role.INACTIVE))


def test_hold_refused_means_the_backup_serves_us_already() -> None:
    h = Harness()
    h.feed(Started())
    h.feed(Connected(Role.ACTIVE))
    h.feed(BackupInfoReceived(backup_info(1, 1)))
    h.advance(1)
    actions = h.feed(HoldRefused())
    assert of_type(actions, Promote) and of_type(actions, SendPresence)
    assert h.policy.state.active_endpoint == BACKUP


def test_stale_reports_change_nothing() -> None:
    h = Harness()
    h.feed(Started())
    assert h.feed(ActivationDone(True)) == []
    assert h.feed(ActivationRefused(True)) == []
    assert h.feed(Connected(Role.INACTIVE)) == []


def test_stop_closes_everything_and_ignores_later_facts() -> None:
    h = Harness()
    h.dual_up()
    actions = h.feed(Stopped())
    assert Disconnect(Role.ACTIVE) in actions and Disconnect(Role.INACTIVE) in actions
    assert h.feed(ConnectionLost(Role.ACTIVE)) == [] and h.advance(10_000) == []


def test_state_is_a_copy() -> None:
    h = Harness()
    h.policy.state.active = Link.UP
    assert h.policy.state.active is Link.DOWN
