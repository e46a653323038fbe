"""The operations kit against the real tools and a real node (issue #21).

Scenarios: `promtool check rules` and `promtool test rules` pass on
deploy/prometheus/alerts.yml (each alert fires on the series of its situation); every
expression of the Grafana dashboard is valid PromQL; systemd accepts the node unit;
`presence-ha node run --config deploy/config/node.example.toml` runs node1 (the
database and data directory given on the command line), which then answers
`service list --json` and `ha status --json` and exports the HA gauges; a copy of the
example with a bad key stops the node at once, naming the key.

promtool comes from Debian's prometheus package (scripts/test-services.sh): missing,
its tests are skipped locally and fail with CI=true.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.integration.cluster import cli, free_ports, node_argv

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLE = DEPLOY / "config" / "node.example.toml"
START_DEADLINE_S = 30.0


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if IN_CI:
            pytest.fail("CI=true and promtool is missing (scripts/test-services.sh installs Debian's prometheus)")
        pytest.skip("promtool missing: apt-get install --no-install-recommends prometheus")
    return found


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_checks_and_tests_the_alerting_rules() -> None:
    tool = promtool()
    checked = run(tool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    tested = run(tool, "test", "rules", "alerts.test.yml", cwd=DEPLOY / "prometheus")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    tool = promtool()
    dashboard = json.loads((DEPLOY / "grafana" / "presence-ha.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
    concrete = [e.replace("$__rate_interval", "1m").replace("$job", "presence-ha").replace("$instance", ".*")
                for e in exprs]
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for number, expr in enumerate(concrete):
        rules += [f"      - record: dashboard:expr_{number}", f"        expr: {json.dumps(expr)}"]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text("\n".join(rules) + "\n")
    checked = run(tool, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout


def test_systemd_accepts_the_node_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze missing")
    unit = (DEPLOY / "systemd" / "presence-ha-node@.service").read_text()
    path = tmp_path / "presence-ha-node@node1.service"
    path.write_text(unit.replace("/opt/presence-ha/.venv/bin/presence-ha", shutil.which("true") or "/bin/true"))
    result = run(analyze, "verify", "--man=no", str(path))
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "presence-ha-node@" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def provision(db_url: str) -> dict[str, int]:
    cli(db_url, "db", "upgrade")
    cli(db_url, "cluster", "init", "--name", "ops", "--domain", "example.test")
    client, srm, admin, link, metrics = free_ports(5)
    cli(db_url, "node", "add", "node1", "--client-port", str(client), "--srm-port", str(srm),
        "--admin-port", str(admin), "--link-port", str(link), "--metrics-port", str(metrics))
    cli(db_url, "group", "add", "solo", "--node", "node1")
    return {"client": client, "metrics": metrics}


@pytest.fixture
def example_node(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, dict[str, int], Path]]:
    """node1 run with the documented example file; SIGTERM (then SIGKILL) at the end."""
    db_url = f"sqlite:///{tmp_path / 'presence-ha.sqlite3'}"
    ports = provision(db_url)
    out = tmp_path / "node1.out"
    with open(out, "w") as sink:
        process = subprocess.Popen(
            node_argv("node", "run", "--config", str(EXAMPLE), "--db", db_url, "--data-dir", str(tmp_path),
                      "--set", "event_loop=asyncio"),
            stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while "node node1 ready" not in out.read_text():
            assert process.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        yield process, db_url, ports, out
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_node_runs_with_the_example_configuration(example_node) -> None:
    process, db_url, ports, out = example_node
    services = json.loads(cli(db_url, "service", "list", "node1", "--json"))
    assert services["node"] == "node1"
    router = next(s for s in services["services"] if s["name"] == "xcp-router")
    assert set(router) == {"name", "display_name", "running", "applicable", "monitored", "cause"}
    status = json.loads(cli(db_url, "ha", "status", "--json"))
    [node] = [n for g in status["groups"] for n in g["nodes"]]
    assert node["name"] == "node1" and node["alive"] is True, status
    deadline = time.monotonic() + 10
    while "db_replication_setup 0.0" not in (text := scrape(ports["metrics"])):  # SQLite: no replication
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    assert 'presence_ha_node{node="node1"} 1.0' in text
    assert 'critical_service_running{service="xcp-router"}' in text and "srm_state{" in text
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0, out.read_text()


def test_a_bad_key_in_the_configuration_stops_the_node_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "node.toml"
    bad.write_text(EXAMPLE.read_text().replace("heartbeat_interval_s = 1.0", "heartbeat_intervall_s = 1.0"))
    started = time.monotonic()
    result = run(*node_argv("node", "run", "--config", str(bad), "--data-dir", str(tmp_path / "data")))
    assert result.returncode != 0 and time.monotonic() - started < 20
    assert ("Error: config links.heartbeat_intervall_s: unknown key (did you mean links.heartbeat_interval_s?)"
            in result.stderr), result.stderr
    assert not (tmp_path / "data").exists()
