"""Token bucket, login throttle, per-address caps and the fair login gate, with explicit time."""

from __future__ import annotations

from presence_ha.server.net.limits import AddressBook, Admission, AuthThrottle, LoginGate, TokenBucket


def test_token_bucket_refills_up_to_burst():
    bucket = TokenBucket(rate=100, burst=300, now=0.0)
    assert bucket.take(300, now=0.0)
    assert not bucket.take(1, now=0.0)
    assert bucket.take(100, now=1.0)
    assert not bucket.take(250, now=2.0)  # 100 refilled only; nothing spent on failure
    assert bucket.take(100, now=2.0)
    assert bucket.take(300, now=100.0) and not bucket.take(1, now=100.0)


def test_throttle_spaces_sequential_attempts_per_ip_and_user_and_forgets():
    """Each attempt waits BEFORE its check: the n-th (failures counted) base * 2**(n-2)."""
    throttle = AuthThrottle(base_s=1.0, max_s=5.0, window_s=60.0)
    ax = ["ip:a", "user:x"]
    assert throttle.reserve(ax, now=0) == 0
    throttle.resolve(ax, now=0, success=False)
    assert throttle.reserve(ax, now=0) == 1.0  # the 2nd attempt
    throttle.resolve(ax, now=1, success=False)
    assert throttle.reserve(ax, now=1) == 2.0  # the 3rd
    throttle.resolve(ax, now=3, success=False)
    assert throttle.reserve(["ip:b", "user:x"], now=3) == 4.0  # the user is targeted from elsewhere
    throttle.resolve(["ip:b", "user:x"], now=7, success=False)
    assert throttle.reserve(["ip:a", "user:y"], now=7) == 4.0  # the IP's 4th attempt
    throttle.resolve(["ip:a", "user:y"], now=11, success=False)
    assert throttle.reserve(["ip:a", "user:z"], now=11) == 5.0  # capped
    throttle.resolve(["ip:a", "user:z"], now=16, success=True)
    assert throttle.delay_for("ip:a", now=16) == 5.0  # a success clears the account, not the address
    throttle.resolve(["ip:c", "user:x"], now=16, success=True)
    assert throttle.reserve(["ip:c", "user:x"], now=17) == 0
    throttle.release(["ip:c", "user:x"])
    assert throttle.reserve(["ip:a"], now=1000) == 0  # old failures fall out of the window


def test_parallel_guesses_are_checked_one_at_a_time_and_the_rest_refused_unchecked():
    """Issue #19 item 3: 200 guesses at once against one account. Two go at once (a
    user's devices), then each waits for its slot, spaced like sequential attempts;
    those whose slot is beyond max_s are refused at once, unchecked (None)."""
    throttle = AuthThrottle(base_s=1.0, max_s=30.0, window_s=300.0)
    waits = [throttle.reserve([f"ip:10.0.0.{i % 250}", "user:victim"], now=0) for i in range(200)]
    checked = [w for w in waits if w is not None]
    assert checked == [0, 0, 1.0, 3.0, 7.0, 15.0]
    assert waits.count(None) == 194
    # whichever one is right is answered only at its slot: a success waits like a failure
    for i, wait in enumerate(waits):
        if wait is not None:
            throttle.resolve([f"ip:10.0.0.{i % 250}", "user:victim"], now=wait, success=False)
    assert throttle.reserve(["ip:10.0.0.99", "user:victim"], now=16) == 30.0  # the next slot: max_s away
    assert throttle.reserve(["ip:10.0.0.98", "user:victim"], now=16) is None  # and none after it
    assert throttle.reserve(["ip:10.0.0.99", "user:other"], now=16) == 0  # other accounts are not


def test_an_address_without_failures_is_not_slowed_one_with_failures_is_serialized():
    throttle = AuthThrottle(base_s=1.0, max_s=30.0, window_s=300.0)
    assert all(throttle.reserve(["ip:nat", f"user:u{i}"], now=0) == 0 for i in range(500))
    for i in range(500):
        throttle.resolve(["ip:nat", f"user:u{i}"], now=0, success=True)
    throttle.resolve(["ip:spray", "user:v0"], now=0, success=False)
    throttle.resolve(["ip:spray", "user:v1"], now=0, success=False)
    spray = [throttle.reserve(["ip:spray", f"user:w{i}"], now=0) for i in range(10)]
    assert spray[:4] == [2.0, 6.0, 14.0, 30.0] and spray[4:] == [None] * 6  # one at a time, then refused


def test_a_released_attempt_gives_its_place_back():
    throttle = AuthThrottle(base_s=1.0, max_s=30.0, window_s=300.0)
    keys = ["ip:a", "user:x"]
    throttle.reserve(keys, now=0), throttle.reserve(keys, now=0)
    assert throttle.delay_for("user:x", now=0) == 1.0
    throttle.release(keys)
    throttle.release(keys)  # both connections went away unchecked: nothing was a failure
    assert throttle.reserve(["ip:b", "user:x"], now=2) == 0


def test_address_book_caps_connections_and_unauthenticated_ones():
    book = AddressBook(max_per_address=3, max_unauthenticated=2)
    assert book.address_refusal("a") is None and book.address_refusal("a") is None
    assert "unauthenticated" in book.address_refusal("a")
    assert book.address_refusal("b") is None  # another address is not affected
    book.authenticated("a")
    assert book.address_refusal("a") is None  # 3 connections, 2 unauthenticated
    assert "too many connections" in book.address_refusal("a")
    book.closed("a", authenticated=True)
    book.closed("a", authenticated=False)
    assert book.count("a") == (1, 1) and book.refused == 2


def test_fair_gate_makes_the_heaviest_address_give_a_place_back():
    """Issue #19 item 2: one address fills the gate; another address still gets in,
    and the heaviest address gives back one place; it cannot refill past the others."""
    gate = LoginGate(floor=10, budget_s=10.0)
    assert all(gate.enter(now=0, address="attacker").admitted for _ in range(10))
    assert gate.enter(now=0, address="attacker") == Admission(False)  # full, and it is the heaviest
    assert gate.enter(now=0, address="alice") == Admission(True, evict="attacker")
    gate.leave(now=0, completed=False, address="attacker")  # the port ends the attacker's oldest
    assert (gate.in_progress, gate.held("attacker"), gate.held("alice")) == (10, 9, 1)
    for i in range(4):
        assert gate.enter(now=0, address=f"user{i}").evict == "attacker"
        gate.leave(now=0, completed=False, address="attacker")
    assert gate.held("attacker") == 5 and gate.enter(now=0, address="attacker") == Admission(False)
    gate.leave(now=0.1, completed=True, address="alice")
    assert gate.held("alice") == 0 and gate.in_progress == 9


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
    admitted = sum(bool(gate.enter(now)) for _ in range(300))
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
    assert sum(bool(gate.enter(now)) for _ in range(200)) == LoginGate.MIN_LIMIT
    for i in range(60):  # the loop catches up: after a window of prompt samples the floor is back
        gate.note_lag(now=11.0 + 0.1 * i, lag_s=0.001)
    assert gate.limit(now=17.0) == 1000 and not gate.saturated()
