"""`presence-ha loadtest soak` end to end, small and short: the CI's chaos soak (issue 19).

The command starts its own HA pair (SQLite, 1 s heartbeat, re-login limits 1-2 s), logs
30 real XMPP clients in (single mode: they log in again after a loss), and for 48 s
injects a random fault every 4-6 s from kill, term, critical service down and manual
failover (a shuffle bag: three different kinds in the first three faults), each
followed, 2 s after its users are back, by its way back (restart, service start,
`ha fallback`). Its invariants must hold:
no acknowledged message lost, nobody served by two nodes, every affected user back
within the bound, node RSS not growing; and report.json must hold the figures.
(SIGSTOP and dual mode are left out here: both still lose acknowledged messages, see
the README's soak section; a test of them would fail until that is fixed.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(240), pytest.mark.serial]
KINDS = ("kill", "term", "service", "manual")


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


def test_a_short_soak_keeps_its_invariants(tmp_path: Path) -> None:
    code, out = presence_ha(
        "loadtest", "soak", "--mode", "single", "--minutes", "0.8", "--users", "30", "--interval", "4,6",
        "--dwell", "2", "--seed", "3", "--faults", ",".join(KINDS), "--recovery-bound", "20", "--relogin", "1,2",
        "--data-dir", str(tmp_path / "data"), "--report", str(tmp_path / "report"), timeout_s=180,
    )
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert code == 0, out[-4000:]
    assert report["pass"] and all(v["pass"] for v in report["invariants"].values()), report["invariants"]
    assert set(report["invariants"]) == {"lost_acked", "double_served", "recovery", "rss"}
    assert len(report["fault_kinds"]) >= 3 and set(report["fault_kinds"]) <= set(KINDS)
    faults = [f for f in report["faults"] if f["kind"] in KINDS]
    assert all(f["affected"] > 0 and f["recovered_within_bound"] and f["downtime_p99_ms"] is not None
               for f in faults), faults
    assert any(f["kind"] == "fallback" for f in report["faults"])  # the way back is measured too
    totals = report["totals"]
    assert totals["lost_acked"] == 0 and totals["double_served"] == 0 and totals["sent"] > 1000
    assert set(report["rss_kb"]) == {"n1", "n2"} and report["rss_checkpoints"]
