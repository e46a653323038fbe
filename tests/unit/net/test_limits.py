"""Token bucket and failed-login throttle, with explicit time."""

from __future__ import annotations

from server.net.limits import AuthThrottle, LoginGate, TokenBucket


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
