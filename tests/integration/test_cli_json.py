"""`--json` of the listing commands against a real database (issue #21), on SQLite and
PostgreSQL: each prints one object with exactly the keys its `--help` documents, with
the values the text output shows; `param set` validates a negative value and names the
key.

The admin commands that need a running node (`service list --json`, `ha status
--json` live) are checked in test_ops_kit.py and test_admin_cli.py.
"""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from presence_ha.server.cli import main as cli_main
from tests.integration.cluster import cli, free_ports


def provision(db_url: str) -> None:
    cli(db_url, "db", "upgrade")
    cli(db_url, "cluster", "init", "--name", "ops", "--domain", "example.test")
    for name in ("n1", "n2"):
        ports = free_ports(5)
        cli(db_url, "node", "add", name, *[f"--{kind}-port={port}" for kind, port in
                                           zip(("client", "srm", "admin", "link", "metrics"), ports, strict=True)])
    cli(db_url, "group", "add", "g1", "--node", "n1", "--node", "n2", "--description", "the pair")
    cli(db_url, "user", "add", "alice", "--password", "secret-1")
    cli(db_url, "user", "add", "bob", "--password", "secret-2")
    cli(db_url, "param", "set", "presence_grace_s", "7")


def documented(*command: str) -> set[str]:
    """The key names the command's `--help` lists after `With --json:`."""
    text = CliRunner().invoke(cli_main, [*command, "--help"], terminal_width=200).output
    return set(re.findall(r'"([a-z_]+)"', text.split("With --json:", 1)[1]))


def keys(value: object) -> set[str]:
    """Every key of every object inside `value`."""
    if isinstance(value, dict):
        return set(value) | set().union(*(keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys(v) for v in value))
    return set()


def as_json(db_url: str, *command: str, ok: bool = True) -> dict:
    result = CliRunner().invoke(cli_main, [*command, "--json", "--db", db_url])
    assert (result.exit_code == 0) == ok, result.output
    data = json.loads(result.output)
    assert keys(data) <= documented(*command), f"{command}: undocumented {keys(data) - documented(*command)}"
    return data


def test_listing_commands_print_their_documented_json(db_url: str) -> None:
    provision(db_url)
    nodes = as_json(db_url, "node", "list")["nodes"]
    assert [n["name"] for n in nodes] == ["n1", "n2"]
    assert nodes[0]["group"] == "g1" and nodes[0]["position"] in (0, 1) and nodes[0]["state"] is None
    assert set(nodes[0]["ports"]) == {"client", "srm", "admin", "link", "metrics"}
    assert all(isinstance(p, int) for p in nodes[0]["ports"].values())

    groups = as_json(db_url, "group", "list")
    epoch = groups["groups"][0]["epoch"]
    assert isinstance(epoch, int)
    assert groups == {"groups": [{"name": "g1", "nodes": ["n1", "n2"], "ha": False, "epoch": epoch,
                                  "description": "the pair"}]}

    users = as_json(db_url, "user", "list")["users"]
    assert sorted(u["username"] for u in users) == ["alice", "bob"]
    assert {u["assigned"] for u in users} <= {"n1", "n2"} and all(u["active"] == u["assigned"] for u in users)

    params = {p["name"]: p for p in as_json(db_url, "param", "show")["parameters"]}
    assert params["presence_grace_s"] | {"description": ""} == {
        "name": "presence_grace_s", "kind": "service", "scope": "cluster", "value": 7, "default": 30,
        "source": "cluster", "description": ""}
    assert {p["kind"] for p in as_json(db_url, "param", "show", "--service")["parameters"]} == {"service"}

    cluster = as_json(db_url, "cluster", "show")
    assert cluster["name"] == "ops" and cluster["domain"] == "example.test" and cluster["groups"] == 1
    assert cluster["assigned_users"] == 2 and sum(n["users"] for n in cluster["nodes"]) == 2

    assert as_json(db_url, "db", "revision")["at_head"] is True
    status = as_json(db_url, "ha", "status", "--offline")
    assert [n["name"] for g in status["groups"] for n in g["nodes"]] == ["n1", "n2"]
    report = as_json(db_url, "dbreplication", "status", ok=False)  # no synchronous standby: exit 1
    assert report["setup_value"] in (0, 1) and report["healthy"] is False
    runtime = as_json(db_url, "dbreplication", "runtimestate", ok=False)
    assert [n["node"] for n in runtime["nodes"]] == ["n1", "n2"]


def test_a_negative_parameter_value_is_refused_by_its_rule_not_by_the_parser(db_url: str) -> None:
    provision(db_url)
    result = CliRunner().invoke(cli_main, ["param", "set", "presence_grace_s", "-5", "--db", db_url])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: presence_grace_s: -5 is outside 1..3600"
