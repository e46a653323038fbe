"""What the admin page shows: which buttons each SPEC §6 state offers, what they ask the
admin to confirm, countdowns, and the JSON the page polls (an unreachable node has no state)."""

from __future__ import annotations

import datetime as dt

import pytest

from presence_ha.db.srm_state import HaEventRecord
from presence_ha.server.net.admin_overview import (
    GroupRow,
    NodeRow,
    StoredView,
    countdowns,
    group_buttons,
    is_alive,
    node_buttons,
    overview_json,
    page_json,
    service_actions,
    table_allows,
)
from presence_ha.server.srm.events import AdminRequestedFailover, AdminRequestedFallback
from presence_ha.server.srm.machine import SrmMachine
from presence_ha.server.srm.table import NodeState as S
from presence_ha.server.srm.table import Reason as R


def group(n1: tuple[str, str], n2: tuple[str, str], ha: bool = True,
          alive: tuple[bool, bool] = (True, True)) -> GroupRow:
    return GroupRow("g1", ha, (NodeRow("n1", *n1, alive[0]), NodeRow("n2", *n2, alive[1])))


NORMAL = ("Normal", "Normal")


@pytest.mark.parametrize(
    ("n1", "n2", "n1_buttons", "n2_buttons"),
    [
        (NORMAL, NORMAL, ("failover",), ("failover",)),  # row 1
        (("Idle", "On Admin Request"), ("Running in Backup Mode", "On Admin Request"), ("fallback",), ()),  # row 3
        (("Idle", "Initialization"), ("Running in Backup Mode", "Initialization"), ("fallback",), ()),  # row 6
        (("Failed Over", "Critical Services Down"),
         ("Running in Backup Mode", "Critical Services Down"), ("fallback",), ()),  # row 11
        (("Failed Over with Critical Services Not Running", "Critical Services Down"),
         ("Running in Backup Mode", "Critical Services Down"), (), ()),  # row 12: no fallback while down
        (("Failing Over", "On Admin Request"), ("Taking Over", "On Admin Request"), (), ()),  # row 2
        (("Running in Failed Mode", "Unknown"), ("Running in Failed Mode", "Unknown"), (), ()),  # row 21
    ],
)
def test_buttons_follow_the_srm_table(n1, n2, n1_buttons, n2_buttons) -> None:
    g = group(n1, n2)
    assert node_buttons(g, g.nodes[0]) == n1_buttons
    assert node_buttons(g, g.nodes[1]) == n2_buttons


def test_no_failover_button_when_the_peer_cannot_take_the_users() -> None:
    g = group(NORMAL, NORMAL, alive=(True, False))  # peer unreachable: nobody to fail over to
    assert node_buttons(g, g.nodes[0]) == ()
    assert node_buttons(g, g.nodes[1]) == ()  # an unreachable node gets no buttons at all
    assert node_buttons(group(NORMAL, NORMAL, ha=False), g.nodes[0]) == ()  # HA off: nothing moves


def test_recover_button_only_for_a_failed_group() -> None:
    assert group_buttons(group(NORMAL, NORMAL)) == ()
    failed = ("Running in Failed Mode", "Unknown")
    assert group_buttons(group(failed, failed)) == ("recover",)
    assert group_buttons(group(("Unknown", "Unknown"), ("Unknown", "Unknown"))) == ("recover",)


@pytest.mark.parametrize("state", list(S))
def test_table_allows_agrees_with_a_live_machine(state: S) -> None:
    """The stored-state view decides like `SrmMachine.allows` for each state."""
    machine = SrmMachine("n1", "n2", state=state, reason=R.NORMAL)
    view = StoredView("n1", "n2", True, state, R.NORMAL, None)
    for request in (AdminRequestedFailover(), AdminRequestedFallback()):
        assert table_allows(view, request) == machine.allows(request)


def test_liveness_window() -> None:
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert is_alive(now - dt.timedelta(seconds=5), 10, now)
    assert not is_alive(now - dt.timedelta(seconds=11), 10, now)
    assert is_alive((now - dt.timedelta(seconds=1)).replace(tzinfo=None), 10, now)  # SQLite: naive UTC
    assert not is_alive(None, 10, now)


def test_overview_json_has_the_exact_keys() -> None:
    assert overview_json([group(NORMAL, ("Idle", "Initialization"), alive=(True, False))]) == {"groups": [{
        "name": "g1", "ha": True, "nodes": [
            {"name": "n1", "state": "Normal", "reason": "Normal", "alive": True},
            {"name": "n2", "state": "Idle", "reason": "Initialization", "alive": False},
        ],
    }]}


PARAMS = {"heartbeat_interval_s": 1, "heartbeat_timeout_s": 6, "critical_service_delay_s": 90}
NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


def service(name: str, running: bool = True, cause: str = "", monitored: bool = True) -> dict:
    return {"name": name, "display_name": name.title(), "running": running, "applicable": True,
            "monitored": monitored, "cause": cause}


def live(state: str, reason: str, timers: dict | None = None, services: list | None = None) -> dict:
    return {"status": {"state": state, "reason": reason, "timers_left": timers or {}},
            "services": services or [], "sessions": {"JsmSessionsClient": 3}}


def test_recover_is_not_offered_from_a_dead_nodes_stale_state() -> None:
    failed = ("Running in Failed Mode", "Unknown")
    assert group_buttons(group(failed, NORMAL, alive=(False, True))) == ()


def test_page_json_shows_a_dead_node_down_without_its_stale_state() -> None:
    g = GroupRow("g1", True, (
        NodeRow("n1", "Normal", "Normal", True, NOW, NOW, 20075, 5, 5, live("Normal", "Normal")),
        NodeRow("n2", "Normal", "Normal", False, NOW, NOW - dt.timedelta(seconds=42), 20076, 5, 0),
    ))
    events = [HaEventRecord("n1", NOW, "Normal", "Failing Over", "On Admin Request", "AdminRequestedFailover")]
    data = page_json([g], events, PARAMS, "n1", NOW)
    n1, n2 = data["groups"][0]["nodes"]
    assert (n1["state"], n1["reason"], n1["sessions"], n1["users"]) == (
        "Normal", "Normal", {"JsmSessionsClient": 3}, {"assigned": 5, "served": 5})
    assert n1["buttons"] == []  # the peer is down: nobody to fail over to
    assert (n2["alive"], n2["state"], n2["reason"], n2["buttons"], n2["services"]) == (False, None, None, [], None)
    assert n2["last_seen_s"] == 42 and n2["admin_port"] == 20076
    assert data["events"] == [{"at": NOW.isoformat(), "node": "n1", "from": "Normal", "to": "Failing Over",
                               "reason": "On Admin Request", "event": "AdminRequestedFailover"}]


def test_every_disruptive_button_asks_for_a_confirmation() -> None:
    g = GroupRow("g1", True, (
        NodeRow("n1", "Normal", "Normal", True, users_assigned=4, users_served=4, live=live("Normal", "Normal")),
        NodeRow("n2", "Normal", "Normal", True, live=live("Normal", "Normal")),
    ))
    (failover,) = page_json([g], [], PARAMS, "n1", NOW)["groups"][0]["nodes"][0]["buttons"]
    assert failover["op"] == "failover" and failover["node"] == "n1"
    assert failover["confirm"].startswith(
        "Fail over n1? Its critical services stop and the 4 users it serves move to n2")
    failed = ("Running in Failed Mode", "Unknown")
    (recover,) = page_json([group(failed, failed)], [], PARAMS, "n1", NOW)["groups"][0]["buttons"]
    assert recover["op"] == "recover" and recover["group"] == "g1" and "SRM of n1 and n2 restarts" in recover["confirm"]


def test_service_buttons_stop_with_confirmation_and_start_only_what_the_admin_or_a_fault_stopped() -> None:
    node = NodeRow("n1", "Normal", "Normal", True, live=live("Normal", "Normal", services=[
        service("presence-engine"), service("xcp-auth", monitored=False),
        service("sync-agent", False, "stopped by the admin"), service("xcp-router", False, "failed"),
        service("client-profile-agent", False, "stopped by the SRM"),
        {**service("sip-proxy", False, "not applicable"), "applicable": False}]))
    buttons = {(b.op, b.service): b for b in service_actions(node, 90)}
    assert set(buttons) == {("service.stop", "presence-engine"), ("service.stop", "xcp-auth"),
                            ("service.start", "sync-agent"), ("service.start", "xcp-router")}
    assert "down for 90 s (Critical Service Delay) fails n1 over" in buttons["service.stop", "presence-engine"].confirm
    assert "not monitored: nothing fails over" in buttons["service.stop", "xcp-auth"].confirm
    assert buttons["service.start", "sync-agent"].confirm == ""  # starting is harmless


def test_countdowns_show_the_timers_that_end_in_a_move() -> None:
    normal = NodeRow("n1", "Normal", "Normal", True, live=live("Normal", "Normal", {
        "critical_service_delay": 7.5, "heartbeat_timeout": 5.5, "auto_fallback": 100.0}))
    shown = countdowns(normal, PARAMS)
    assert shown == [
        {"timer": "auto_fallback", "what": "automatic fallback", "seconds": 100.0},
        {"timer": "critical_service_delay", "what": "critical service down: automatic failover", "seconds": 7.5},
    ]  # the heartbeat timeout restarts with every heartbeat: hidden until two are missed
    silent = NodeRow("n1", "Normal", "Normal", True, live=live("Normal", "Normal", {"heartbeat_timeout": 3.9}))
    assert countdowns(silent, PARAMS) == [
        {"timer": "heartbeat_timeout", "what": "peer silent: takeover of its users", "seconds": 3.9}]
    assert countdowns(NodeRow("n1", "Normal", "Normal", False), PARAMS) == []
