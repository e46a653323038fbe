"""`presence-ha ha status` and the admin commands against a real database, nodes down.

Scenarios: the status is read from the database alone (no node runs) and prints the
SPEC §6 words; every admin command that needs a node says in one line that the node
cannot be reached, or that the name is unknown, and exits non-zero.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from presence_ha.db import srm_state
from presence_ha.db.engine import make_engine, make_session_factory
from presence_ha.server.cli import main as cli_main
from tests.integration.cluster import cli, free_ports


def provision(db_url: str) -> None:
    cli(db_url, "db", "upgrade")
    cli(db_url, "cluster", "init", "--name", "test", "--domain", "example.test")
    for name in ("n1", "n2", "n3"):
        ports = free_ports(5)
        cli(db_url, "node", "add", name, "--client-port", str(ports[0]), "--srm-port", str(ports[1]),
            "--admin-port", str(ports[2]), "--link-port", str(ports[3]), "--metrics-port", str(ports[4]))
    cli(db_url, "group", "add", "g1", "--node", "n1", "--node", "n2")
    cli(db_url, "group", "add", "solo", "--node", "n3")
    cli(db_url, "group", "edit", "g1", "--ha", "on")


async def write_states(db_url: str, states: dict[str, tuple[str, str]]) -> None:
    engine = make_engine(db_url)
    try:
        async with make_session_factory(engine)() as session:
            for node, (state, reason) in states.items():
                await srm_state.write_state(session, node, state, reason, event="test")
    finally:
        await engine.dispose()


def invoke(db_url: str, *args: str, answer: str | None = None):
    return CliRunner().invoke(cli_main, [*args, "--db", db_url], input=answer)


def test_status_json_reads_the_database_with_every_node_down(db_url: str) -> None:
    provision(db_url)
    asyncio.run(write_states(db_url, {"n1": ("Idle", "On Admin Request"),
                                      "n2": ("Running in Backup Mode", "On Admin Request")}))
    probed = json.loads(cli(db_url, "ha", "status", "--json"))  # nobody answers: stored states, not alive
    assert [n["alive"] for g in probed["groups"] for n in g["nodes"]] == [False, False, False]
    data = json.loads(cli(db_url, "ha", "status", "--json", "--offline"))
    assert data == {"groups": [
        {"name": "g1", "ha": True, "nodes": [
            {"name": "n1", "state": "Idle", "reason": "On Admin Request", "alive": True},
            {"name": "n2", "state": "Running in Backup Mode", "reason": "On Admin Request", "alive": True},
        ]},
        {"name": "solo", "ha": False, "nodes": [
            {"name": "n3", "state": "Initializing", "reason": "Initialization", "alive": False},
        ]},
    ]}
    table = cli(db_url, "ha", "status", "--offline")
    lines = [line.split() for line in table.splitlines()]
    assert lines[1] == ["g1", "on", "n1", "Idle", "On", "Admin", "Request"]
    assert lines[3] == ["solo", "off", "n3", "DOWN", "(last", "stored:", "Initializing", "/", "Initialization)"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("ha", "failover", "n1"), "failover of n1 failed: admin RPC unreachable at 127.0.0.1:"),
        (("ha", "fallback", "n2"), "fallback of n2 failed: admin RPC unreachable"),
        (("ha", "failover", "nosuch"), "node 'nosuch' does not exist"),
        (("ha", "recover", "nosuch"), "group 'nosuch' does not exist"),
        (("ha", "recover", "g1", "--yes"), "recovery of g1 incomplete: n1, n2 not restarted"),
        (("ha", "web"), "no node answers its admin RPC on 127.0.0.1 (n1, n2, n3); start one, or name one"),
        (("service", "list", "n1"), "service list on n1 failed: admin RPC unreachable"),
        (("service", "stop", "n1", "xcp-router"), "failed: admin RPC unreachable"),
        (("ha", "web", "nosuch"), "node 'nosuch' does not exist"),
    ],
)
def test_admin_commands_fail_in_one_line_when_nodes_are_down(db_url: str, args: tuple[str, ...], words: str) -> None:
    provision(db_url)
    result = invoke(db_url, *args)
    assert result.exit_code != 0, result.output
    assert words in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines()[-1].startswith("Error:")


def test_web_prints_a_link_with_the_token(db_url: str) -> None:
    provision(db_url)
    result = invoke(db_url, "ha", "web", "n2")
    assert result.exit_code == 0, result.output
    link = result.stdout.strip()
    assert link.startswith("http://127.0.0.1:") and "/?token=" in link
    assert len(link.split("token=")[1]) == 64
    assert result.stderr.startswith("warning: node n2 does not answer its admin RPC at 127.0.0.1:")


def test_recover_says_what_it_does_and_asks_first(db_url: str) -> None:
    provision(db_url)
    declined = invoke(db_url, "ha", "recover", "g1", answer="n\n")
    assert declined.exit_code == 1 and "not confirmed: nothing done" in declined.output
    assert declined.output.startswith("Recovery restarts the SRM of n1 and n2 (group g1); their clients may be "
                                      "disconnected and log in again. Go ahead? [y/N]")
    assert "SRM of n1:" not in declined.output  # nothing was sent
    unanswered = invoke(db_url, "ha", "recover", "g1")  # no terminal, no --yes: the question goes unanswered
    assert unanswered.exit_code == 1
    assert unanswered.stderr == "Error: not confirmed (no answer): nothing done; add --yes to skip the question\n"
    accepted = invoke(db_url, "ha", "recover", "g1", answer="y\n")
    assert "SRM of n1: restart failed: admin RPC unreachable" in accepted.output  # asked the nodes (both down)
