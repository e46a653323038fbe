"""Token bucket and failed-login throttle, with explicit time."""

from __future__ import annotations

from presence_ha.server.net.limits import AuthThrottle, LoginGate, TokenBucket


def test_token_bucket_refills_up_to_burst():
    bucket = TokenBucket(rate=100, burst=300, now=0.0)
    assert bucket.take(300, now=0.0)
    assert not bucket.take(1, now=0.0)
    assert bucket.take(100, now=1.0)
    assert not bucket.take(250, now=2.0)  # 100 refilled only; nothing spent on failure
    assert bucket.take(100, now=2.0)
    assert bucket.take(300, now=100.0) and not bucket.take(1, now=100.0)


def test_throttle_grows_per_ip_and_user_and_forgets():
    throttle = AuthThrottle(base_s=1.0, max_s=5.0, window_s=60.0)
    assert throttle.failure(["ip:a", "user:x"], now=0) == 0
    assert throttle.failure(["ip:a", "user:x"], now=1) == 1.0
    assert throttle.failure(["ip:a", "user:x"], now=2) == 2.0
    assert throttle.failure(["ip:b", "user:x"], now=3) == 4.0  # the user is targeted from elsewhere
    assert throttle.failure(["ip:a", "user:y"], now=4) == 4.0  # the IP's 4th failure
    assert throttle.failure(["ip:a", "user:z"], now=4) == 5.0  # capped
    throttle.success("user:x")
    assert throttle.failure(["ip:c", "user:x"], now=5) == 0
    assert throttle.failure(["ip:a"], now=1000) == 0  # old failures fall out of the window


def test_login_gate_admits_up_to_its_floor_and_sheds_the_rest():
    gate = LoginGate(floor=2, budget_s=10.0)
    assert gate.enter(now=0) and gate.enter(now=0)
    assert not gate.enter(now=0) and not gate.enter(now=0)
    assert (gate.in_progress, gate.shed) == (2, 2)
    gate.leave(now=0.1, completed=False)  # a connection gave up: room for the next
    assert gate.enter(now=0.1) and not gate.enter(now=0.1)
    assert (gate.in_progress, gate.shed) == (2, 3)


def test_login_gate_admits_what_the_measured_rate_finishes_within_the_budget():
    gate = LoginGate(floor=2, budget_s=1.0)
    for i in range(20):  # 20 logins bound within the last second: 4/s over the 5 s window
        assert gate.enter(now=i * 0.05)
        gate.leave(now=i * 0.05, completed=True)
    assert gate.limit(now=1.0) == 4
    assert all(gate.enter(now=1.0) for _ in range(4)) and not gate.enter(now=1.0)
    assert gate.limit(now=7.0) == 2  # the rate is forgotten after the window: the floor


def test_a_saturated_node_drops_the_floor_and_admits_what_it_finishes_in_its_target():
    """A re-login storm: logins take longer than the target (5 s of a 15 s budget), so
    the node admits rate x target (not the floor) and sheds the rest, retryably."""
    gate = LoginGate(floor=1000, budget_s=15.0)
    assert gate.target_s == 5.0
    for i in range(100):  # 20 logins/s over the window, each took 12 s
        assert gate.enter(now=i * 0.05)
    for i in range(100):
        gate.leave(now=10 + i * 0.05, completed=True, started=i * 0.05 - 7)
    now = 15.0
    assert gate.limit(now) == 100  # 20/s x 5 s, not 1,000
    assert gate.saturated()
    admitted = sum(gate.enter(now) for _ in range(300))
    assert admitted == 100 and gate.shed == 200


def test_fast_logins_keep_the_floor_and_too_few_samples_prove_nothing():
    gate = LoginGate(floor=1000, budget_s=15.0)
    for i in range(50):  # quick logins: 0.2 s each
        gate.enter(now=i * 0.01)
        gate.leave(now=i * 0.01 + 0.2, completed=True, started=i * 0.01)
    assert gate.limit(now=1.0) == 1000 and not gate.saturated()
    slow = LoginGate(floor=1000, budget_s=15.0)
    for _ in range(LoginGate.MIN_SAMPLES - 1):  # a few slow ones: not enough to shed a burst
        slow.enter(now=0.0)
        slow.leave(now=4.0, completed=True, started=-6.0)
    assert slow.limit(now=4.0) == 1000


def test_a_saturated_node_still_admits_its_minimum():
    gate = LoginGate(floor=1000, budget_s=15.0)
    for i in range(20):  # 4/s, 20 s each
        gate.enter(now=0.0)
        gate.leave(now=i * 0.25, completed=True, started=i * 0.25 - 20)
    assert gate.limit(now=5.0) == LoginGate.MIN_LIMIT


def test_a_loop_running_late_is_a_saturated_node():
    """A storm the node cannot even accept in time: the logins it measures look quick
    (timed from accept), but its event loop runs late. Half the lag samples of the
    window at `lag_limit_s` or later make it saturated; a single pause does not."""
    gate = LoginGate(floor=1000, budget_s=15.0)
    assert gate.lag_limit_s == 0.5
    for i in range(100):  # 20 quick logins/s over the window
        gate.enter(now=i * 0.05)
        gate.leave(now=i * 0.05 + 0.2, completed=True, started=i * 0.05)
    for i in range(48):
        gate.note_lag(now=0.1 * i, lag_s=0.002)
    gate.note_lag(now=4.8, lag_s=1.5)  # one full collection
    assert gate.limit(now=5.0) == 1000 and not gate.saturated()
    for i in range(60):  # then the loop runs late, sample after sample
        gate.note_lag(now=5.0 + 0.1 * i, lag_s=0.8)
    now = 11.0
    assert gate.limit(now) == LoginGate.MIN_LIMIT and gate.saturated()  # no logins completed in the last 5 s
    assert sum(gate.enter(now) for _ in range(200)) == LoginGate.MIN_LIMIT
    for i in range(60):  # the loop catches up: after a window of prompt samples the floor is back
        gate.note_lag(now=11.0 + 0.1 * i, lag_s=0.001)
    assert gate.limit(now=17.0) == 1000 and not gate.saturated()
