"""The load tester against a private Prosody: a tiny run of every scenario.

Scenario: a throwaway Prosody with 24 users and no rosters; the bench logs everyone in,
makes groups of mutual contacts by subscribe/subscribed handshakes (the path used against
any server), exchanges chats and presence, and holds idle sessions. Only the presence of
the result fields and the success of the logins are checked: no timing assertions.
Prosody missing: skipped locally, a failure in CI (CI=true), like the PostgreSQL tests.
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from presence_ha.loadtest.bench import Settings, Target, run_benchmark
from presence_ha.loadtest.cli import main
from presence_ha.loadtest.prosody import ProsodyInstance, prosody_available

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytestmark = pytest.mark.skipif(
    not prosody_available() and not IN_CI,
    reason="prosody is not installed (apt-get install prosody); CI must install it",
)

TINY = Settings(users=24, workers=2, setup_rate=200, login_rate=100, chat_pairs=4,
                chat_rate=40, chat_duration_s=1, contacts=5, presence_users=24,
                presence_rate=8, presence_duration_s=1, memory_levels=(20,), settle_s=0.5,
                drain_s=5)


@pytest.fixture
def prosody():
    server = ProsodyInstance(users=TINY.users)
    server.start()
    yield server
    server.stop()


def test_every_scenario_runs_against_prosody(prosody):
    target = Target("127.0.0.1", prosody.port, prosody.domain)
    result = run_benchmark(target, TINY, prosody.pid)
    res = result["results"]
    assert set(res) == {"login", "chat", "presence", "memory"}
    assert res["login"]["ok"] == 24 and res["login"]["failed"] == 0
    assert {"achieved_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_op"} <= set(res["login"])
    assert res["chat"]["sent"] == 40 and {"received", "p50_ms", "p99_ms"} <= set(res["chat"])
    presence = res["presence"]
    assert presence["setup_logged_in"] == 24 and presence["all_contacts_online"]
    assert presence["subscriptions_requested"] == 4 * 6 * 5  # 4 groups of 6, no roster yet
    assert {"p50_ms", "p99_ms"} <= set(presence["fanout"])
    [memory] = res["memory"]
    assert memory["held"] == 20 and memory["kb_per_session"] is not None


def test_cli_bench_prosody_with_tls_and_scram(tmp_path):
    out = tmp_path / "result.json"
    args = ["bench-prosody", "--users", "10", "--tls", "--mech", "SCRAM-SHA-1",
            "--workers", "1", "--scenarios", "login,presence", "--login-rate", "50",
            "--contacts", "4", "--presence-users", "10", "--presence-rate", "4",
            "--presence-duration", "1", "--json", str(out)]
    run = CliRunner().invoke(main, args, catch_exceptions=False)
    assert run.exit_code == 0, run.output
    result = json.loads(out.read_text())
    assert result["server"] == "prosody" and result["target"]["tls"] is True
    assert result["results"]["login"]["ok"] == 10
    assert result["results"]["presence"]["subscriptions_requested"] == 0  # rosters pre-written
