"""Provisioning end to end through the CLI, on SQLite and PostgreSQL (SPEC §2, §5)."""

from __future__ import annotations

from collections import Counter

from scramp import ScramClient, ScramMechanism

from presence_ha.db import parameters, users
from tests.integration.db.conftest import provision_pairs, query, write_csv


def node_counts(url) -> Counter:
    return Counter(u.assigned_node for u in query(url, users.list_users))


def test_two_pairs_and_1000_users_balanced(cli, tmp_path):
    provision_pairs(cli, groups=1)
    result = cli("user", "import", write_csv(tmp_path / "users.csv", 1000))
    assert result.output.startswith("imported 1000 user(s) in ")
    assert node_counts(cli.url) == {"a1": 500, "a2": 500}
    # Sync Agent: a new group takes its share, moving as few users as possible.
    cli("node", "add", "b1")
    cli("node", "add", "b2")
    out = cli("group", "add", "g2", "--node", "b1", "--node", "b2").output
    assert "users rebalanced: 500 moved" in out
    assert node_counts(cli.url) == {"a1": 250, "a2": 250, "b1": 250, "b2": 250}
    located = query(cli.url, users.list_users)
    assert all(u.active_node == u.assigned_node for u in located)
    assert query(cli.url, users.usernames_active_on, "b2") == {u.username for u in located if u.active_node == "b2"}
    shown = cli("cluster", "show").output
    assert "assigned users: 1000" in shown and "a1    g1     1         250" in shown


def test_credentials_work_for_scram_and_password_is_not_stored(cli):
    provision_pairs(cli, groups=1)
    cli("user", "add", "Alice", "--password", "correct horse")
    for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
        creds = query(cli.url, users.get_credentials, "alice", mechanism)
        assert creds.iterations == 4096
        server = ScramMechanism(mechanism).make_server(
            lambda _u, c=creds: (c.salt, c.stored_key, c.server_key, c.iterations)
        )
        client = ScramClient([mechanism], "alice", "correct horse")
        server.set_client_first(client.get_client_first())
        client.set_server_first(server.get_server_first())
        server.set_client_final(client.get_client_final())
        client.set_server_final(server.get_server_final())
    assert query(cli.url, users.get_credentials, "alice", "PLAIN") is None
    assert query(cli.url, users.get_credentials, "nobody", "SCRAM-SHA-1") is None
    assert query(cli.url, users.user_location, "ALICE") == ("a1", "a1")
    assert query(cli.url, users.user_location, "nobody") is None


def test_password_from_stdin_and_prompt(cli):
    provision_pairs(cli, groups=1)
    cli("user", "add", "bob", "--password-stdin", input="s3cret\n")
    cli("user", "add", "carol", input="pw\npw\n")
    listed = cli("user", "list").output
    assert "bob" in listed and "carol" in listed and "2 user(s)" in listed


def test_assignment_modes(cli):
    provision_pairs(cli)
    for name in ("u1", "u2", "u3", "u4"):
        cli("user", "add", name, "--password", "pw")
    assert node_counts(cli.url) == {"a1": 1, "a2": 1, "b1": 1, "b2": 1}
    assert "2 user(s) moved" in cli("param", "set", "user_assignment_mode", "Active-Standby").output
    assert node_counts(cli.url) == {"a1": 2, "b1": 2}
    cli("param", "set", "user_assignment_mode", "None")
    cli("user", "add", "u5", "--password", "pw")
    assert query(cli.url, users.user_location, "u5") == (None, None)
    cli("user", "assign", "u5", "b2")
    assert query(cli.url, users.user_location, "u5") == ("b2", "b2")
    cli.fails("user", "assign", "u5", "nowhere", match="'nowhere' does not exist")


def test_bulk_import_is_all_or_nothing(cli, tmp_path):
    provision_pairs(cli, groups=1)
    bad = tmp_path / "bad.csv"
    bad.write_text("username,password\nok1,pw\nno@good,pw\n")
    cli.fails("user", "import", str(bad), match="row 2 username")
    cli("user", "add", "user00003", "--password", "pw")
    cli.fails("user", "import", write_csv(tmp_path / "u.csv", 10), match="'user00003' already exists")
    assert [u.username for u in query(cli.url, users.list_users)] == ["user00003"]
    cli("user", "remove", "user00003")
    cli("user", "import", write_csv(tmp_path / "u.csv", 10))
    assert len(query(cli.url, users.list_users)) == 10
    cli.fails("user", "remove", "user00003x", match="does not exist")


def test_parameters_show_set_reset(cli):
    provision_pairs(cli, groups=1)
    cli("param", "set", "relogin_upper_s", "900")
    cli("param", "set", "relogin_lower_s", "700", "--node", "a1")
    shown = cli("param", "show", "--node", "a1").output
    assert "relogin_lower_s           service     node     700" in shown
    a2 = query(cli.url, parameters.effective_parameters, "a2")
    assert a2["relogin_lower_s"] == 120 and a2["relogin_upper_s"] == 900
    cli.fails("param", "set", "relogin_upper_s", "600", match="relogin_lower_s: must be <= relogin_upper_s")
    cli("param", "reset", "relogin_lower_s", "--node", "a1")
    cli("param", "set", "relogin_upper_s", "600")
    enterprise = cli("param", "show", "--enterprise").output
    assert "inband_registration" in enterprise and "heartbeat" not in enterprise
    cli("param", "set", "see_other_host_redirect", "on")
    assert "see_other_host_redirect   enterprise  cluster  true" in cli("param", "show").output
