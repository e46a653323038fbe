"""The pure parts of the lab's faults: the WAN model, the nft redirect, SPEC §6 rows, moved users."""

from __future__ import annotations

import random

from presence_ha.loadtest.lab.faultrun import moved_users, refusal, spec_row
from presence_ha.loadtest.lab.wanproxy import WAN_MARK, WanModel, deliver_at, redirect_rules
from presence_ha.loadtest.scenario import Ledger, Served


def test_every_chunk_waits_the_delay_and_about_one_in_a_hundred_a_resend_more():
    model = WanModel(delay_s=0.04, loss=0.01, stall_s=0.2, rng=random.Random(7))
    extra = [deliver_at(model, float(i), 0.0) - i - 0.04 for i in range(20_000)]
    stalled = [e for e in extra if e > 1e-9]
    assert min(extra) >= -1e-9
    assert all(abs(e - 0.2) < 1e-9 for e in stalled)
    assert 150 <= len(stalled) <= 250  # 1% of 20,000, with room for chance


def test_no_chunk_overtakes_a_stalled_one():
    model = WanModel(delay_s=0.04, loss=1.0, stall_s=0.2, rng=random.Random(1))
    first = deliver_at(model, 0.0, 0.0)
    model.loss = 0.0
    assert deliver_at(model, 0.01, first) == first  # held behind the resend (head-of-line)
    assert deliver_at(model, 1.0, first) == 1.04


def test_the_redirect_skips_the_proxys_own_marked_connections():
    script = redirect_rules("198.18.7.2", 7999)
    assert "ip daddr 198.18.7.2" in script and "redirect to :7999" in script
    assert f"meta mark != {WAN_MARK:#x}" in script
    assert "hook output" in script


def test_spec_rows_and_their_admin_actions():
    normal = ("Normal", "Normal")
    assert spec_row({"n1": normal, "n2": normal}) == (1, None, None)
    assert spec_row({"n1": ("Failed Over", "Peer Down"), "n2": ("Running in Backup Mode", "Peer Down")}) == (
        16, "fallback", "n1")
    assert spec_row({"n1": ("Running in Backup Mode", "Database Failure"),
                     "n2": ("Failed Over with Critical Services Not Running", "Database Failure")}) == (
        13, "fallback", "n2")
    assert spec_row({"n1": ("Running in Failed Mode", "Unknown"), "n2": ("Running in Failed Mode", "Unknown")}) == (
        21, "recover", None)
    assert spec_row({"n1": ("Backup Activated", "Auto Recover Database Failure"),
                     "n2": ("Failover Affected Services", "Auto Recover Database Failure")}) == (22, None, None)
    assert spec_row({"n1": ("Taking Over", "Peer Down"), "n2": None}) == (None, None, None)


def test_moved_users_are_those_served_elsewhere_after_the_fault():
    ledger = Ledger().feed([Served("a", "n1", 1.0), Served("a", "n2", 12.0), Served("b", "n2", 1.0),
                            Served("b", "n2", 13.0), Served("c", "n1", 11.0)])
    assert moved_users(ledger, 10.0) == ["a"]


def test_separate_host_faults_need_the_lab():
    assert "--topology lab" in refusal("host", "local")
    assert refusal("partition", "lab") is None
    assert refusal("kill", "lab") is None
    assert "not stop" in refusal("stop", "lab")
