"""`presence-ha loadtest failover` end to end: a small run, SIGKILL of n1, both modes.

The command starts its own HA pair (SQLite, 1 s heartbeat, re-login limits 1-2 s),
logs 200 real XMPP clients in over TLS with rosters of 20 contacts, runs probes and chat
with XEP-0198 acks, kills n1 and waits until every affected user has a round trip
again. What SPEC §9 promises must show in its report: no acknowledged message lost,
no user served by two nodes, every affected user back on n2.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# The run waits until every affected user has a round trip again (seconds after the
# kill); most of a mode's 20-40 s is logging the users in.
pytestmark = [pytest.mark.timeout(300), pytest.mark.serial]
USERS = 200


def presence_ha(*args: str, timeout_s: float) -> tuple[int, str]:
    """Run the command; on timeout SIGTERM it (it then stops its nodes and workers)."""
    script = Path(sys.executable).with_name("presence-ha")
    argv = ([str(script)] if script.exists()
            else [sys.executable, "-c", "from presence_ha.server.cli import main; main()"])
    proc = subprocess.Popen([*argv, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        return -1, out
    return proc.returncode, out


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, Path]:
    base = tmp_path_factory.mktemp("failover")
    code, out = presence_ha(
        "loadtest", "failover", "--users", str(USERS), "--mode", "both", "--fault", "kill",
        "--warmup", "2", "--after", "30", "--settle", "1", "--relogin", "1,2", "--probe-interval", "0.25",
        "--data-dir", str(base / "data"), "--report", str(base / "report"), timeout_s=240,
    )
    assert code == 0, out[-4000:]
    return json.loads((base / "report" / "report.json").read_text()), base / "report"


@pytest.mark.parametrize("mode", ["single", "dual"])
def test_every_affected_user_is_back_on_the_backup(report, mode: str) -> None:
    run = report[0]["runs"][mode]
    assert run["users"] == USERS and run["fault"]["fault"] == "kill" and run["fault"]["node"] == "n1"
    assert run["affected_users"] > USERS // 4  # Balanced: about half the users were on n1
    assert run["not_recovered"] == 0
    assert run["takeover_ms"] is not None and run["downtime_ms"]["max"] is not None
    assert run["rss_kb"]["n2"]["peak_kb"] > 0


@pytest.mark.parametrize("mode", ["single", "dual"])
def test_no_acknowledged_message_lost(report, mode: str) -> None:
    run = report[0]["runs"][mode]
    messages = run["messages"]
    assert messages["sent"] > USERS * 10 and messages["acked"] > 0 and messages["delivered"] > 0
    assert messages["lost_acked"] == 0, run["lost_acked_sample"]  # SPEC §9


def test_dual_mode_loses_nothing_and_delivers_nothing_twice(report) -> None:
    """Issue 18: what the killed node never acknowledged is sent again on the backup
    and receivers drop the copies by id: nothing lost, nothing delivered twice."""
    run = report[0]["runs"]["dual"]
    messages = run["messages"]
    assert messages["lost"] == 0, run["lost_sample"]
    assert messages["duplicated"] == 0
    assert messages["resent"] >= messages["resent_messages"] >= messages["delivered_by_resend"]


@pytest.mark.parametrize("mode", ["single", "dual"])
def test_nobody_double_served(report, mode: str) -> None:
    run = report[0]["runs"][mode]
    assert run["messages"]["delivered"] > 0
    assert run["double_served"] == 0, run["double_served_users"]  # SPEC §9
    assert run["counters"].get("presence_rx_inactive", 0) == 0  # XEP-PHA §4: an inactive session gets nothing


def test_dual_mode_switches_in_well_under_a_second_and_beats_re_login(report) -> None:
    dual, single = report[0]["runs"]["dual"], report[0]["runs"]["single"]
    # Measured 0.3-0.5 s p99 at 100-200 users on a quiet machine (probe interval 0.25 s, so
    # that is the resolution); the bound leaves room for a loaded CI machine.
    assert dual["downtime_ms"]["p99"] < 2000, dual["downtime_ms"]
    assert dual["downtime_ms"]["p50"] < single["downtime_ms"]["p50"]  # single mode waits >= 1 s to re-login


def test_dual_mode_activates_the_inactive_connections(report) -> None:
    counters = report[0]["runs"]["dual"]["counters"]
    assert counters.get("activation_pushes", 0) + counters.get("relogins", 0) > 0
    assert counters.get("relogins", 0) < report[0]["runs"]["dual"]["affected_users"]  # most activated, not re-logged


def test_report_files_exist(report) -> None:
    _, directory = report
    assert (directory / "downtime_cdf.png").stat().st_size > 5000  # both modes in one CDF
    for mode in ("single", "dual"):
        for name in (f"sessions_{mode}.png", f"message_rate_{mode}.png"):
            assert (directory / name).stat().st_size > 5000, name
