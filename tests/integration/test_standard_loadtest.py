"""`presence-ha loadtest failover --clients standard` end to end: a small run, SIGKILL of n1.

The command starts its own HA pair (SQLite, 1 s heartbeat) with Debian's HAProxy in
front as the service address, logs 20 standard XEP-0198 clients in through it (SCRAM,
stream management with resumption), runs probes and chat, kills n1 and waits until
every affected user has a round trip again. Its report must show what issue 18 asks
of standard clients: nothing acknowledged lost, the sessions of n1's clients resumed
on n2 (a client whose session lived on the dead node resumes there, and so does one
that was only relayed through it: its stream state was copied to its user's node),
every
affected user back, nobody served by two nodes.
"""

from __future__ import annotations

import json

import pytest

from presence_ha.server.cli.haproxy import haproxy_binary
from tests.integration.test_failover_loadtest import presence_ha

pytestmark = [pytest.mark.timeout(300), pytest.mark.serial,
              pytest.mark.skipif(haproxy_binary() is None, reason="haproxy not installed (scripts/ensure-debian.sh)")]
USERS = 20


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("standard")
    code, out = presence_ha(
        "loadtest", "failover", "--clients", "standard", "--users", str(USERS), "--fault", "kill",
        "--warmup", "2", "--after", "30", "--settle", "1", "--probe-interval", "0.25",
        "--data-dir", str(base / "data"), "--report", str(base / "report"), timeout_s=240,
    )
    assert code == 0, out[-4000:]
    assert "Standard clients (XEP-0198) after the fault" in out
    return json.loads((base / "report" / "report.json").read_text())["runs"]["standard"]


def test_every_affected_user_is_back_on_the_survivor(run) -> None:
    assert run["users"] == USERS and (run["fault"]["fault"], run["fault"]["node"]) == ("kill", "n1")
    assert run["affected_users"] >= USERS // 4  # Balanced: about half the users were served by n1
    assert run["not_recovered"] == 0
    assert run["takeover_ms"] is not None  # each affected client heard from n2 that it serves it now
    assert run["double_served"] == 0, run["double_served_users"]  # SPEC §9


def test_no_acknowledged_message_lost(run) -> None:
    messages = run["messages"]
    assert messages["sent"] > USERS * 10 and messages["acked"] > 0 and messages["delivered"] > 0
    assert messages["lost_acked"] == 0, run["lost_acked_sample"]  # SPEC §9


def test_sessions_of_the_dead_node_were_resumed(run) -> None:
    res = run["resumption"]
    assert res["lost_before_fault"] == 0  # nothing dropped before the kill
    assert res["connections_lost"] > 0 and res["not_reconnected"] == 0
    assert res["resumed"] > 0 and res["resumption_ms"]["count"] == res["resumed"]
    assert res["resumed"] + res["relogins"] == res["connections_lost"]
    assert res["resumption_ms"]["max"] < 10_000
    assert run["counters"].get("resumed", 0) == res["resumed"]
