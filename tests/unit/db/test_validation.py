"""Pure validation rules of the data layer: SPEC §3 group rules, node ports, usernames,
and SCRAM credentials that a real SCRAM exchange accepts."""

from __future__ import annotations

import pytest
from scramp import ScramClient, ScramMechanism

from presence_ha.db.credentials import DEFAULT_ITERATIONS, MECHANISMS, derive
from presence_ha.db.errors import InvalidValue, ProvisioningError
from presence_ha.db.groups import check_members, validate_description, validate_group_name
from presence_ha.db.nodes import NodeInfo, NodePorts, pick_ports, validate_node_name, validate_ports
from presence_ha.db.users import _validate_rows, validate_username


@pytest.mark.parametrize("name", ["g", "A-b_9", "x" * 128])
def test_group_name_ok(name):
    assert validate_group_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 129, "with space", "dot.ted", "ünï", "a/b", "a%b"])
def test_group_name_rejected(name):
    with pytest.raises(InvalidValue, match=r"^group name: "):
        validate_group_name(name)


@pytest.mark.parametrize("text", ["", "Tokyo pair #1 (primary: a1)", "y" * 128])
def test_description_ok(text):
    assert validate_description(text) == text


@pytest.mark.parametrize("text", ['say "hi"', "100%", "a & b", "back\\slash", "<b>", "a>b", "z" * 129])
def test_description_rejected(text):
    with pytest.raises(InvalidValue, match=r"^description: "):
        validate_description(text)


def node(name, *, cluster=1, version="1.0", group=None):
    return NodeInfo(1, name, "127.0.0.1", NodePorts.from_base(15000), version, cluster, group, None)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([], "one node or a pair"),
        ([node("a"), node("b"), node("c")], "one node or a pair"),
        ([node("a"), node("a")], "two different nodes"),
        ([node("a"), node("b", cluster=2)], "another cluster"),
        ([node("a"), node("b", version="2.0")], "same software version"),
        ([node("a", group="g0"), node("b")], "already in group 'g0'"),
    ],
)
def test_group_members_rejected(members, message):
    with pytest.raises(ProvisioningError, match=message):
        check_members(members, 1)


def test_group_members_ok():
    check_members([node("a")], 1)
    check_members([node("a"), node("b")], 1)


def test_ports_scheme_and_clashes():
    assert pick_ports(set(), 20000).values() == (20000, 20001, 20002, 20003, 20004)
    first = pick_ports(set(), None)
    second = pick_ports(set(first.values()), None)
    assert not set(first.values()) & set(second.values())
    with pytest.raises(InvalidValue, match="already used"):
        validate_ports(first, {first.srm_port})
    with pytest.raises(InvalidValue, match="distinct"):
        validate_ports(NodePorts(1, 1, 2, 3, 4), set())
    with pytest.raises(InvalidValue, match=r"^client_port: "):
        validate_ports(NodePorts(0, 1, 2, 3, 4), set())


@pytest.mark.parametrize("name", ["", "a b", "n" * 129])
def test_node_name_rejected(name):
    with pytest.raises(InvalidValue, match=r"^node name: "):
        validate_node_name(name)


def test_usernames_are_prepared_localparts():
    assert validate_username("Alice") == "alice"
    for bad in ("", "a@b", "a/b", "a b", "x" * 1024):
        with pytest.raises(InvalidValue, match=r"^username: "):
            validate_username(bad)


def test_import_rows_validated_before_any_work():
    with pytest.raises(InvalidValue, match=r"^row 2 username"):
        _validate_rows([("ok", "pw"), ("bad@x", "pw")])
    with pytest.raises(InvalidValue, match=r"^row 2 username: 'alice' appears twice"):
        _validate_rows([("alice", "pw"), ("ALICE", "pw")])
    with pytest.raises(InvalidValue, match=r"^row 1 password"):
        _validate_rows([("bob", "")])


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_derived_keys_pass_a_real_scram_exchange(mechanism):
    creds = derive("pencil")[mechanism]
    assert creds.iterations == DEFAULT_ITERATIONS == 4096
    server_mech = ScramMechanism(mechanism)
    auth = (creds.salt, creds.stored_key, creds.server_key, creds.iterations)
    server = server_mech.make_server(lambda _user: auth)
    client = ScramClient([mechanism], "user", "pencil")
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    server.set_client_final(client.get_client_final())
    client.set_server_final(server.get_server_final())  # raises if the server key is wrong


def test_wrong_password_is_refused():
    creds = derive("pencil")["SCRAM-SHA-256"]
    server = ScramMechanism("SCRAM-SHA-256").make_server(
        lambda _u: (creds.salt, creds.stored_key, creds.server_key, creds.iterations)
    )
    client = ScramClient(["SCRAM-SHA-256"], "user", "pen")
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    with pytest.raises(Exception, match=r"(?i)invalid|proof|mismatch"):
        server.set_client_final(client.get_client_final())
