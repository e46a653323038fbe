"""The chaos soak's pure rules: schedule, way back, settling ledger, invariants."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from presence_ha.loadtest import soakcheck
from presence_ha.loadtest.scenario import Acked, Bounced, Ledger, Received, Sent, Served
from presence_ha.loadtest.soakcheck import Schedule, SoakLedger

KINDS = ("kill", "term", "stop", "service", "manual")


# ---- schedule ------------------------------------------------------------------------

def test_interval_parses_and_refuses_nonsense() -> None:
    assert soakcheck.parse_interval("30,60") == (30.0, 60.0)
    assert soakcheck.parse_interval("45") == (45.0, 45.0)
    for bad in ("60,30", "0,5", "-1,2", "x"):
        with pytest.raises(ValueError, match="expected 0 < LOWER <= UPPER"):
            soakcheck.parse_interval(bad)


def test_schedule_is_reproducible_from_the_seed() -> None:
    def draws(seed: int) -> list:
        schedule = Schedule(random.Random(seed), KINDS, ("n1", "n2"), (30.0, 60.0))
        return [schedule.next() for _ in range(12)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_schedule_waits_within_the_interval_and_draws_every_kind_per_round() -> None:
    schedule = Schedule(random.Random(3), KINDS, ("n1", "n2"), (8.0, 12.0))
    draws = [schedule.next() for _ in range(4 * len(KINDS))]
    assert all(8.0 <= d.wait_s <= 12.0 for d in draws)
    for start in range(0, len(draws), len(KINDS)):  # a shuffle bag: each kind once per round
        assert sorted(d.kind for d in draws[start:start + len(KINDS)]) == sorted(KINDS)
    assert {d.node for d in draws} == {"n1", "n2"}


# ---- the way back --------------------------------------------------------------------

N, FB = ("Normal", "Normal"), ("Running in Backup Mode", "Peer Reboot")


@pytest.mark.parametrize(("mine", "theirs", "action"), [
    (N, N, "done"),
    (("Failed Over", "Initialization"), FB, "fallback"),  # SPEC §6 row 18: the restarted node
    (("Idle", "On Admin Request"), ("Running in Backup Mode", "On Admin Request"), "fallback"),  # row 3
    (("Failed Over with Critical Services Not Running", "Critical Services Down"), FB, "fallback"),  # row 12
    (("Running in Failed Mode", "Unknown"), ("Running in Failed Mode", "Unknown"), "recover"),  # row 21
    (None, FB, "wait"),  # the node not up yet (row 17)
    (("Initializing", "Initialization"), FB, "wait"),
    (("Taking Back", "On Admin Request"), ("Falling Back", "On Admin Request"), "wait"),  # row 4
    (N, FB, "wait"),  # a stale row of a node that was stopped
])
def test_restore_action_follows_the_spec_rows(mine, theirs, action) -> None:
    assert soakcheck.restore_action({"n1": mine, "n2": theirs}, "n1", "n2") == action


# ---- downtime within a window --------------------------------------------------------

def test_longest_gap_sees_a_failover_that_comes_after_the_fault() -> None:
    # a service stopped at 10: round trips go on until the failover at 11, then a 1.4 s gap
    trips = [9.6, 10.1, 10.6, 11.0, 12.4, 12.9]
    assert soakcheck.longest_gap(trips, 10.0, 20.0) == pytest.approx(1.4)
    assert soakcheck.longest_gap([9.5, 10.4], 10.0, 20.0) == pytest.approx(0.9)  # from the last before
    assert soakcheck.longest_gap([10.5], 10.0, 20.0) == pytest.approx(0.5)  # none before: from the start
    assert soakcheck.longest_gap([9.5, 25.0], 10.0, 20.0) == math.inf  # not back within the window


# ---- the settling ledger -------------------------------------------------------------

def run_events() -> list:
    """a sends probes and chats; some delivered, one acked and lost, one bounced, one late."""
    return [
        Served("a", "n1", 0.5), Served("b", "n2", 0.5),
        Sent("a:1", "a", "a", 1.0), Acked("a:1", 1.1), Received("a:1", "a", "n1", 1.2),
        Sent("a:2", "a", "b", 2.0), Acked("a:2", 2.1),  # acked, never delivered: lost_acked
        Sent("a:3", "a", "b", 3.0), Acked("a:3", 3.1), Bounced("a:3", 3.2),  # refused with an error
        Sent("a:4", "a", "b", 4.0), Acked("a:4", 4.1), Received("a:4", "b", "n2", 4.2),
        Received("a:4", "b", "n2", 4.3),  # duplicated
        Sent("a:5", "a", "b", 5.0), Acked("a:5", 5.1),  # delivered late (below)
        Sent("a:6", "a", "a", 60.0), Acked("a:6", 60.1), Received("a:6", "a", "n1", 60.2),
    ]


def test_bounced_messages_are_lost_but_not_lost_acked() -> None:
    figures = Ledger().feed(run_events()).messages()
    assert figures["lost"] == 3 and figures["bounced"] == 1
    assert figures["lost_acked"] == 2  # a:2 and a:5 (a:5 not delivered yet)


def test_settled_totals_equal_the_plain_ledgers_with_late_events() -> None:
    late = [Received("a:5", "b", "n2", 70.0), Received("a:1", "a", "n1", 70.5)]  # a late delivery, a late copy
    plain = Ledger().feed(run_events() + late).messages()
    soak = SoakLedger().feed(run_events())
    assert soak.settle(cutoff=10.0) == 5  # a:1..a:5 leave memory, a:6 stays
    assert set(soak.sent) == {"a:6"}
    soak.feed(late)
    figures = soak.messages()
    for key in ("sent", "acked", "delivered", "lost", "lost_acked", "bounced", "duplicated"):
        assert figures[key] == plain[key], key
    assert figures["late_received"] == 2
    assert soak.lost_acked_ids() == ["a:2"] and "a:2" in soak.settled_sent  # kept for the report


def test_a_late_ack_of_a_settled_loss_makes_it_lost_acked() -> None:
    soak = SoakLedger().feed([Sent("a:1", "a", "b", 1.0)])
    soak.settle(cutoff=5.0)
    assert soak.messages()["lost_acked"] == 0
    soak.feed([Acked("a:1", 6.0)])
    assert soak.messages()["lost_acked"] == 1 and soak.lost_acked_ids() == ["a:1"]


def test_double_served_is_judged_per_segment_between_pair_changes() -> None:
    # a: n1, then n2 after the fault at 10, then n1 again after the fallback at 20: legitimate
    moves = [Received(f"x:{i}", "a", node, t) for i, (node, t) in enumerate(
        [("n1", 5.0), ("n2", 12.0), ("n1", 22.0), ("n1", 25.0)])]
    # b: n1, n2, n1 within one segment: two nodes served it at once
    both = [Received(f"y:{i}", "b", node, t) for i, (node, t) in enumerate([("n1", 11.0), ("n2", 12.0),
                                                                            ("n1", 13.0)])]
    inactive = [Received("z:1", "c", "n2", 24.0, inactive=True)]
    ledger = SoakLedger().feed([Sent(r.msg_id, "s", r.recipient, r.at - 0.1) for r in moves + both + inactive])
    ledger.feed(moves + both + inactive)
    edges = [0.0, 10.0, 20.0, math.inf]
    found = set()
    for start, end in itertools.pairwise(edges):
        found.update(ledger.double_served_in(start, end))
    assert found == {"b", "c"}
    assert ledger.double_served() == ["a", "b", "c"]  # the whole-run rule would flag the fallback


# ---- invariants ----------------------------------------------------------------------

def points(node: str, pid: int, kbs: list[int], first_index: int = 0) -> list[dict]:
    return [{"index": first_index + i, "node": node, "pid": pid, "rss_kb": kb} for i, kb in enumerate(kbs)]


def test_rss_rule_judges_growth_from_the_first_checkpoint_after_the_first_fault() -> None:
    mb = 1024
    steady = points("n1", 10, [90 * mb, 100 * mb, 120 * mb, 150 * mb])  # index 0 ignored: 100 -> 150 MB
    assert soakcheck.rss_verdict(steady, limit_mb=64, limit_pct=20)["pass"]
    leaking = points("n2", 11, [90 * mb, 100 * mb, 140 * mb, 180 * mb])  # 100 -> 180 MB: > 64 MB
    verdict = soakcheck.rss_verdict(steady + leaking, limit_mb=64, limit_pct=20)
    assert not verdict["pass"] and "n2 pid 11 grew 80 MB" in verdict["reason"]
    big = points("n2", 12, [1000 * mb, 1000 * mb, 1150 * mb])  # 150 MB but within 20% of 1000 MB
    assert soakcheck.rss_verdict(big, limit_mb=64, limit_pct=20)["pass"]


def test_rss_rule_does_not_judge_processes_seen_once() -> None:
    restarted = points("n1", 10, [90 * 1024, 100 * 1024]) + points("n1", 20, [500 * 1024], first_index=2)
    verdict = soakcheck.rss_verdict(restarted, limit_mb=64, limit_pct=20)
    assert verdict["pass"] and verdict["reason"].startswith("not judged")


def test_recovery_verdict_names_late_users_and_a_pair_not_back() -> None:
    ok = {"kind": "kill", "node": "n1", "at": 10.0, "affected": 5, "recovered": 5, "recovered_within_bound": True}
    late = {**ok, "kind": "stop", "recovered": 3, "recovered_within_bound": False}
    stuck = {**ok, "kind": "service", "restore_problem": "pair not back"}
    assert soakcheck.recovery_verdict([ok], 30)["pass"]
    verdict = soakcheck.recovery_verdict([ok, late, stuck], 30)
    assert not verdict["pass"]
    assert "stop n1 at 10 s: 3/5 users back" in verdict["reason"] and "pair not back" in verdict["reason"]


def test_count_verdict() -> None:
    assert soakcheck.count_verdict("lost_acked", 0, [])["pass"]
    assert soakcheck.count_verdict("lost_acked", 2, ["a:1", "a:2"]) == {
        "pass": False, "reason": "lost_acked 2 (e.g. a:1, a:2)"}


def test_load_generators_ship_bounces_as_tuples() -> None:
    from presence_ha.loadtest.scenario import from_tuple

    assert from_tuple(("B", "a:1", 1.5)) == Bounced("a:1", 1.5)
