"""`presence-ha loadtest bench-compare` at a tiny scale: both servers, every column filled.

Scenario: 20 users on a private presence-ha node (SQLite, one node) and a private
Prosody, TLS on both; each server is restarted before the login, chat and presence
groups; every login succeeds on both, and every compared figure has a value on both
sides and a ratio. Only the presence of figures is checked: no timing assertions.
Prosody missing: skipped locally, a failure in CI (CI=true), like the PostgreSQL tests.
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from presence_ha.loadtest.prosody import prosody_available
from presence_ha.server.cli import main

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytestmark = pytest.mark.skipif(
    not prosody_available() and not IN_CI,
    reason="prosody is not installed (apt-get install prosody); CI must install it",
)

TINY = ["--users", "20", "--workers", "1", "--scenarios", "login,chat,presence",
        "--login-rate", "50", "--chat-pairs", "4", "--chat-rate", "20", "--chat-duration", "1",
        "--contacts", "4", "--presence-users", "20", "--presence-rate", "4",
        "--presence-duration", "1"]


def test_bench_compare_fills_both_columns(tmp_path):
    out = tmp_path / "compare.json"
    run = CliRunner().invoke(main, ["loadtest", "bench-compare", *TINY, "--json", str(out)],
                             catch_exceptions=False)
    assert run.exit_code == 0, run.output
    result = json.loads(out.read_text())
    ours, prosody = result["results"]["ours"], result["results"]["prosody"]
    for res in (ours, prosody):
        assert res["login"]["ok"] == 20 and res["login"]["failed"] == 0
        assert res["chat"]["sent"] == 20
        assert res["presence"]["all_contacts_online"]
        assert res["presence"]["subscriptions_requested"] == 0  # rosters written before start
    assert result["target"]["tls"] is True
    figures = {row["figure"]: row for row in result["comparison"]}
    for name in ("login rate", "login p50", "login p99", "login server CPU", "chat p50",
                 "chat p99", "chat server CPU", "presence fan-out p50", "presence fan-out p99"):
        row = figures[name]
        assert row["ours"] is not None and row["prosody"] is not None, name
    assert figures["login ok"]["ratio"] == 1.0
    assert "ours/prosody" in run.output
