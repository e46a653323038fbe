"""How fast a pair notices a lost node, with real processes and real faults (SPEC §9).

Scenarios (HA pair n1/n2, heartbeat interval 1 s, timeout 2 s; alice on n1, bob on n2):
- n1 is SIGKILLed: its SRM port refuses, n2 takes over at once (Peer Down), well
  before the heartbeat timeout could fire.
- n1 gets SIGTERM: it announces its shutdown, n2 takes over at once (Peer Reboot).
- n1 is SIGSTOPped: nothing refuses, nothing is announced; n2 waits for the heartbeat
  timeout, finds n1's database liveness stale, and takes over (Peer Down). After
  SIGCONT the pair sees two claims on n1's users and both go to Running in Failed
  Mode (SPEC §6 row 16 "the pair may need Recovery"); `ha recover` returns it to
  Normal/Normal and alice home.
Throughout, the database and both nodes' session gauges show no user served twice.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.integration.cluster import (  # noqa: F401
    Cluster,
    active_nodes,
    cluster_factory,
    ha_pair_factory,
    ha_states,
    poll_until,
)

TAKEN_OVER = ("Running in Backup Mode", "Taking Over")
TIMEOUT_S = 2.0  # FAST_SRM heartbeat_timeout_s


def detect(cluster: Cluster, fault: int, reason: str) -> float:
    """Send `fault` to n1; seconds until n2's persisted state shows it took over."""
    n1 = cluster.node("n1")
    started = time.monotonic()
    n1.process.send_signal(fault)
    poll_until(lambda: ha_states(cluster.db_url)["n2"][0] in TAKEN_OVER, 30, "n2 to take over", 0.02)
    elapsed = time.monotonic() - started
    try:
        poll_until(lambda: ha_states(cluster.db_url)["n2"] == ("Running in Backup Mode", reason), 10,
                   f"n2 backup / {reason}")
        poll_until(lambda: set(active_nodes(cluster.db_url).values()) == {"n2"}, 10, "every user active on n2")
    except TimeoutError as exc:
        tail = "\n".join(f"--- {name}.log\n{cluster.node(name).log()[-4000:]}" for name in ("n1", "n2"))
        raise AssertionError(f"{exc}; states {ha_states(cluster.db_url)}\n{tail}") from None
    print(f"\n{signal.Signals(fault).name}: n2 took over after {elapsed:.2f}s")
    return elapsed


async def test_sigkill_is_detected_at_once_through_the_refused_srm_port(ha_pair_factory):  # noqa: F811
    cluster = ha_pair_factory(placement={"bob": "n2"})
    elapsed = detect(cluster, signal.SIGKILL, "Peer Down")
    assert elapsed < TIMEOUT_S, "a dead process must not wait for the heartbeat timeout"


async def test_sigterm_is_announced_and_taken_over_at_once(ha_pair_factory):  # noqa: F811
    cluster = ha_pair_factory(placement={"bob": "n2"})
    elapsed = detect(cluster, signal.SIGTERM, "Peer Reboot")
    assert elapsed < TIMEOUT_S
    poll_until(lambda: not cluster.node("n1").alive(), 15, "n1 to exit")
    assert cluster.node("n1").process.returncode == 0


@pytest.mark.timeout(120)
async def test_sigstop_waits_for_the_heartbeat_timeout_then_recovery(ha_pair_factory):  # noqa: F811
    cluster = ha_pair_factory(placement={"bob": "n2"})
    elapsed = detect(cluster, signal.SIGSTOP, "Peer Down")
    assert elapsed >= TIMEOUT_S, "a silent peer is taken over only after the heartbeat timeout"
    cluster.node("n1").process.send_signal(signal.SIGCONT)
    failed = ("Running in Failed Mode", "Unknown")
    poll_until(lambda: ha_states(cluster.db_url) == {"n1": failed, "n2": failed}, 20, "both nodes failed (row 16)")
    cluster.cli("ha", "recover", "g1", "--yes")
    poll_until(lambda: set(ha_states(cluster.db_url).values()) == {("Normal", "Normal")}, 30, "Normal/Normal")
    assert active_nodes(cluster.db_url) == {"alice": "n1", "bob": "n2"}
