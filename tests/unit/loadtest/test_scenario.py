"""The failover test's pure accounting: rosters, delays, downtime, loss, duplicates, percentiles."""

from __future__ import annotations

import math
import random

import pytest

from presence_ha.loadtest import scenario
from presence_ha.loadtest.scenario import Acked, Ledger, Received, Sent, Served

F = 100.0  # the fault, in the run's clock


def probe(user: str, n: int, sent: float, back: float | None, node: str = "n1", acked: bool = True) -> list:
    msg_id = f"{user}:{n}"
    events = [Sent(msg_id, user, user, sent)]
    if acked:
        events.append(Acked(msg_id, sent + 0.001))
    if back is not None:
        events.append(Received(msg_id, user, node, back))
    return events


def test_downtime_is_last_round_trip_before_the_fault_to_first_after() -> None:
    assert scenario.downtime([98.0, 99.5, 101.2, 101.7], F) == pytest.approx((1.7, 1.2))
    assert scenario.downtime([99.0], F) == (math.inf, math.inf)
    assert scenario.downtime([100.5], F) == pytest.approx((0.5, 0.5))  # none before: from the fault


def test_ledger_counts_sent_acked_delivered_lost_and_duplicates() -> None:
    ledger = Ledger().feed([
        Sent("a:1", "a", "b", 1.0), Acked("a:1", 1.1), Received("a:1", "b", "n1", 1.2),
        Sent("a:2", "a", "b", 2.0), Acked("a:2", 2.1),  # acked, never delivered
        Sent("a:3", "a", "b", 3.0),  # neither acked nor delivered
        Sent("a:4", "a", "b", 4.0), Received("a:4", "b", "n2", 4.1), Received("a:4", "b", "n2", 4.2),
        Sent("a:5", "a", "b", 5.0), Acked("a:5", 5.1), Received("a:5", "b", "n2", 5.2, inactive=True),
        Received("zzz", "b", "n2", 6.0),
    ])
    assert ledger.messages() == {"sent": 5, "acked": 3, "delivered": 2, "lost": 3, "lost_acked": 2, "bounced": 0,
                                 "duplicated": 1, "duplicates_dropped": 0, "resent": 0, "resent_messages": 0,
                                 "delivered_by_resend": 0, "unknown_received": 1}
    assert ledger.lost_acked_ids() == ["a:2", "a:5"]  # a delivery to an inactive session does not count


def test_affected_users_downtimes_and_takeover() -> None:
    ledger = Ledger().feed([
        Served("a", "n1", 10.0), Served("b", "n1", 10.0), Served("c", "n2", 10.0),
        *probe("a", 1, 99.0, 99.1), *probe("a", 2, 102.0, 102.4, "n2"),
        *probe("b", 1, 99.5, 99.6), *probe("b", 2, 99.9, None),
        *probe("c", 1, 99.0, 99.1, "n2"), *probe("c", 2, 100.2, 100.3, "n2"),
        Served("a", "n2", 101.5, "activated"),
    ])
    assert ledger.affected("n1", F) == ["a", "b"]
    downtimes, recoveries = ledger.downtimes(["a", "b"], F)
    assert downtimes[0] == pytest.approx(3.3) and recoveries[0] == pytest.approx(2.4)
    assert math.isinf(downtimes[1])  # b never came back
    assert math.isinf(ledger.takeover(["a", "b"], "n1", F))
    assert ledger.takeover(["a"], "n1", F) == pytest.approx(1.5)


def test_double_served_when_a_node_serves_again_after_another_took_over() -> None:
    ledger = Ledger().feed([
        Received("x:1", "a", "n1", 1.0), Received("x:2", "a", "n2", 2.0), Received("x:3", "a", "n1", 3.0),
        Received("x:4", "b", "n1", 1.0), Received("x:5", "b", "n2", 2.0), Received("x:6", "b", "n2", 3.0),
        Received("x:7", "c", "n2", 1.0, inactive=True),
    ])
    assert ledger.double_served() == ["a", "c"]


def test_percentiles_nearest_rank_and_infinite_values() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    summary = scenario.summary_ms(values)
    assert (summary["p50"], summary["p90"], summary["p99"], summary["max"]) == (50.0, 90.0, 99.0, 100.0)
    with_inf = scenario.summary_ms([0.1] * 98 + [math.inf] * 2)
    assert with_inf["p50"] == 100.0 and with_inf["p99"] is None and with_inf["max"] is None
    assert scenario.percentile([], 50) is None
    xs, ys = scenario.cdf([0.3, math.inf, 0.1])
    assert xs == [0.1, 0.3] and ys == pytest.approx([1 / 3, 2 / 3])


def test_rosters_are_mutual_spread_over_both_nodes_and_about_twenty() -> None:
    by_node = {"n1": [f"a{i}" for i in range(50)], "n2": [f"b{i}" for i in range(50)]}
    roster = scenario.rosters(scenario.roster_pairs(by_node, 20))
    assert set(roster) == set(by_node["n1"]) | set(by_node["n2"])
    for user, contacts in roster.items():
        assert user not in contacts and len(contacts) == 20
        assert sum(c.startswith("b") for c in contacts) == 10  # half on the other node
        assert all(user in roster[c] for c in contacts)  # symmetric: subscription 'both'


def test_delays_stay_within_limits_and_retry_classification() -> None:
    rng = random.Random(7)
    assert all(120 <= scenario.relogin_delay(rng, 120, 537) <= 537 for _ in range(200))
    assert all(0.1 <= scenario.retry_backoff(rng, k) <= 5.0 for k in range(1, 12))
    assert scenario.is_retryable("SASL PLAIN failed: temporary-auth-failure")
    assert scenario.is_retryable("policy-violation") and not scenario.is_retryable("not-authorized")


def test_rates_bin_events_per_second() -> None:
    ledger = Ledger().feed([Sent("a:1", "a", "a", 0.2), Sent("a:2", "a", "a", 0.7), Acked("a:1", 1.1),
                            Received("a:1", "a", "n1", 1.5)])
    rates = ledger.rates(0.0, 2.0)
    assert rates["sent"] == [2.0, 0.0] and rates["acked"] == [0.0, 1.0] and rates["delivered"] == [0.0, 1.0]


def test_event_tuples_round_trip() -> None:
    assert scenario.from_tuple(("R", "a:1", "b", "n2", 1.5, False)) == Received("a:1", "b", "n2", 1.5, False)
    assert scenario.from_tuple(("V", "a", "n2", 2.0, "pushed")) == Served("a", "n2", 2.0, "pushed")
