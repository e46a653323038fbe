"""The admin page's pure parts: which buttons each SPEC §6 state offers, and the HTML."""

from __future__ import annotations

import datetime as dt

import pytest

from presence_ha.server.net.admin_page import (
    GroupRow,
    NodeRow,
    StoredView,
    group_buttons,
    is_alive,
    node_buttons,
    overview_json,
    render_page,
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


def test_page_shows_states_reasons_and_only_allowed_buttons() -> None:
    g = group(("Idle", "On Admin Request"), ("Running in Backup Mode", "On Admin Request"))
    page = render_page([g], "n1", "tok").decode()
    assert "<td class='state'>Idle</td><td class='reason'>On Admin Request</td>" in page
    assert "<td class='state'>Running in Backup Mode</td>" in page
    assert "id='fallback-n1'" in page
    assert "id='failover-n1'" not in page and "id='failover-n2'" not in page and "id='fallback-n2'" not in page
    assert "name='token' value='tok'" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # no external assets


def test_page_escapes_everything() -> None:
    page = render_page([group(NORMAL, NORMAL)], "n1<b>", "t'ok", note="<script>alert(1)</script>").decode()
    assert "<script>" not in page and "&lt;script&gt;" in page and "n1&lt;b&gt;" in page
    assert "value='t&#x27;ok'" in page


def test_overview_json_has_the_exact_keys() -> None:
    assert overview_json([group(NORMAL, ("Idle", "Initialization"), alive=(True, False))]) == {"groups": [{
        "name": "g1", "ha": True, "nodes": [
            {"name": "n1", "state": "Normal", "reason": "Normal", "alive": True},
            {"name": "n2", "state": "Idle", "reason": "Initialization", "alive": False},
        ],
    }]}
