"""Every SPEC §3 group rule (and the other provisioning rules) fed bad input through
the CLI: one line, the reason, a non-zero exit, nothing changed. Both backends."""

from __future__ import annotations

from presence_ha.db import groups, nodes
from presence_ha.db.models import Cluster, Node
from tests.integration.db.conftest import query

# (command, expected fragment of the one-line error)
BAD_GROUPS = [
    (("group", "add", "", "--node", "c1"), "group name"),
    (("group", "add", "x" * 129, "--node", "c1"), "1-128 characters"),
    (("group", "add", "has space", "--node", "c1"), "1-128 characters of A-Z a-z 0-9 _ -"),
    (("group", "add", "g.dot", "--node", "c1"), "group name"),
    (("group", "add", "g1", "--node", "c1", "--node", "c2"), "group 'g1' already exists"),
    (("group", "add", "gd", "--description", "d" * 129, "--node", "c1"), "description: longer than 128"),
    *[
        (("group", "add", "gd", "--description", f"a{ch}b", "--node", "c1"), f"must not contain {ch!r}")
        for ch in '"%&\\<>'
    ],
    (("group", "add", "gx", "--node", "c1", "--node", "c1"), "two different nodes"),
    (("group", "add", "gx", "--node", "c1", "--node", "a1"), "'a1' is already in group 'g1'"),
    (("group", "add", "gx", "--node", "c1", "--node", "v2"), "same software version"),
    (("group", "add", "gx", "--node", "c1", "--node", "foreign"), "'foreign' belongs to another cluster"),
    (("group", "add", "gx", "--node", "c1", "--node", "c2", "--node", "v2"), "one node or a pair"),
    (("group", "add", "gx", "--node", "c1", "--node", "ghost"), "node 'ghost' does not exist"),
    (("group", "edit", "solo", "--ha", "on"), "high availability needs a pair"),
    (("group", "edit", "g1", "--description", "<script>"), "must not contain '<'"),
    (("group", "edit", "nosuch", "--ha", "on"), "group 'nosuch' does not exist"),
]
BAD_OTHERS = [
    (("cluster", "init", "--name", "again", "--domain", "example.org"), "already exists"),
    (("node", "add", "a1"), "node 'a1' already exists"),
    (("node", "add", "bad name"), "node name"),
    (("node", "add", "n9", "--base-port", "15222"), "already used by another node"),
    (("node", "add", "n9", "--base-port", "30000", "--srm-port", "30000"), "must be distinct"),
    (("node", "add", "n9", "--base-port", "70000"), "not a TCP port"),
    (("user", "add", "a@b", "--password", "pw"), "username: 'a@b'"),
    (("user", "add", "ok", "--password", ""), "password: must not be empty"),
    (("param", "set", "heartbeat_interval_s", "0"), "heartbeat_interval_s: 0 is outside"),
    (("param", "set", "heartbeat_interval_s", "60"), "must be < heartbeat_timeout_s"),
    (("param", "set", "critical_service_delay_s", "30", "--node", "a1"), "is a cluster parameter"),
    (("param", "set", "no_such_key", "1"), "no_such_key: unknown parameter"),
    (("param", "set", "user_assignment_mode", "Random"), "not one of Balanced, Active-Standby, None"),
    (("param", "show", "--node", "ghost"), "node 'ghost' does not exist"),
]


async def _add_foreign_node(session) -> None:
    """A node row of another cluster, as a second cluster's tool would have written it."""
    other = Cluster(name="osaka", domain="osaka.example", secret="s")
    session.add(other)
    await session.flush()
    session.add(Node(cluster_id=other.id, name="foreign", software_version=nodes.installed_version(),
                     host="10.0.0.9", client_port=1, srm_port=2, admin_port=3, link_port=4, metrics_port=5))
    await session.commit()


def test_every_rule_rejects_bad_input(cli):
    cli("cluster", "init", "--name", "tokyo", "--domain", "example.com")
    for name in ("a1", "a2", "c1", "c2", "s1"):
        cli("node", "add", name)
    cli("node", "add", "v2", "--version", "9.9.9")
    cli("group", "add", "g1", "--description", "Tokyo pair", "--node", "a1", "--node", "a2")
    cli("group", "add", "solo", "--node", "s1")
    query(cli.url, _add_foreign_node)
    before = query(cli.url, groups.list_groups), len(query(cli.url, nodes.list_nodes))
    for args, fragment in BAD_GROUPS + BAD_OTHERS:
        cli.fails(*args, match=fragment)
    assert (query(cli.url, groups.list_groups), len(query(cli.url, nodes.list_nodes))) == before
    # The good versions of the same requests pass.
    cli("group", "add", "g_2-ok", "--description", "x" * 128, "--node", "c1", "--node", "c2")
    cli("group", "edit", "g1", "--ha", "on", "--description", "")
    assert query(cli.url, groups.get_group, "g1").ha_enabled
    cli("group", "edit", "g1", "--ha", "off")


def test_commands_without_a_cluster_say_so(cli):
    cli.fails("node", "add", "n1", match="run `presence-ha cluster init` first")
    cli.fails("user", "add", "u", "--password", "pw", match="no cluster")
    assert cli("group", "edit", "g", ok=False).exit_code == 2  # usage error: nothing to change
