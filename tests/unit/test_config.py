"""Node config: precedence file < env < flags < --set, unknown keys and bad values named."""

from __future__ import annotations

import pytest

from presence_ha.server.config import ConfigError, load_config


def test_precedence(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('node_name = "from-file"\ndb_url = "sqlite:///f.db"\n'
                    '[limits]\nauth_timeout_s = 7\nmax_stanza_bytes = 1000\n')
    env = {"PRESENCE_HA_NODE": "from-env", "PRESENCE_HA_DB": "sqlite:///e.db"}
    config = load_config(path, env, {"node_name": "from-flag"}, ["limits.auth_timeout_s=2.5", "tls.required=false"])
    assert config.node_name == "from-flag" and config.db_url == "sqlite:///e.db"
    assert config.limits.auth_timeout_s == 2.5 and config.limits.max_stanza_bytes == 1000
    assert config.tls.required is False and config.limits.rate_bytes_per_s == 256 * 1024


def test_event_loop_defaults_to_uvloop_and_may_be_asyncio():
    assert load_config(None, {}, {"node_name": "n1"}).event_loop == "uvloop"
    assert load_config(None, {}, {"node_name": "n1"}, ["event_loop=asyncio"]).event_loop == "asyncio"


def test_db_url_defaults_to_the_data_dir(tmp_path):
    config = load_config(None, {}, {"node_name": "n1", "data_dir": str(tmp_path)})
    assert config.db_url == f"sqlite:///{tmp_path.resolve() / 'presence-ha.sqlite3'}"


@pytest.mark.parametrize(
    ("sets", "key"),
    [
        (["limits.nope=1"], "limits.nope"),
        (["colour=blue"], "colour"),
        (["limits.max_stanza_bytes=big"], "limits.max_stanza_bytes"),
        (["limits.auth_timeout_s=0"], "limits.auth_timeout_s"),
        (["tls.required=maybe"], "tls.required"),
        (["tls.cert_path=/x.pem"], "tls.key_path"),
        (["limits=3"], "limits"),
        (["novalue"], "novalue"),
        (["event_loop=trio"], "event_loop"),
    ],
)
def test_bad_keys_and_values_are_named(sets, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {"node_name": "n1"}, sets)
    assert info.value.key == key


def test_node_name_is_required():
    with pytest.raises(ConfigError) as info:
        load_config(None, {}, {})
    assert info.value.key == "node_name"


def test_cluster_links_and_sm_replication_sections_have_defaults_and_take_sets():
    config = load_config(None, {}, {"node_name": "n1"},
                         ["cluster.grace_s=1.5", "links.window=64", "sm_replication.max_unacked=10"])
    assert config.cluster.grace_s == 1.5 and config.cluster.relay_timeout_s == 10.0
    assert config.links.window == 64 and config.links.heartbeat_interval_s == 1.0 and config.links.dial == ""
    assert config.sm_replication.max_unacked == 10 and config.sm_replication.enabled is True


def test_the_environment_variables_of_links_and_sm_replication_map_onto_their_keys():
    env = {"PRESENCE_HA_LINK_DIAL": "n3=127.0.0.1:7000", "PRESENCE_HA_SM_REPLICATION": "off",
           "PRESENCE_HA_SM_SYNC_TIMEOUT_S": "1", "PRESENCE_HA_SM_MAX_UNACKED": "5"}
    config = load_config(None, env, {"node_name": "n1"})
    assert config.links.dial_addresses == {"n3": ("127.0.0.1", 7000)}
    assert config.sm_replication.enabled is False
    assert config.sm_replication.sync_timeout_s == 1.0 and config.sm_replication.max_unacked == 5
    overridden = load_config(None, env, {"node_name": "n1"}, ["sm_replication.enabled=true"])
    assert overridden.sm_replication.enabled is True  # --set wins over the environment


def test_node_links_use_tls_unless_switched_off_explicitly():
    assert load_config(None, {}, {"node_name": "n1"}).links.tls is True
    assert load_config(None, {"PRESENCE_HA_LINK_TLS": "off"}, {"node_name": "n1"}).links.tls is False
    assert load_config(None, {}, {"node_name": "n1"}, ["links.tls=false"]).links.tls is False


@pytest.mark.parametrize(
    ("env", "sets", "key"),
    [
        ({"PRESENCE_HA_SM_SYNC_TIMEOUT": "1"}, [], "PRESENCE_HA_SM_SYNC_TIMEOUT"),
        ({"PRESENCE_HA_SM_MAX_UNACKED": "many"}, [], "sm_replication.max_unacked"),
        ({"PRESENCE_HA_SM_REPLICATION": "perhaps"}, [], "sm_replication.enabled"),
        ({"PRESENCE_HA_LINK_DIAL": "n2=nowhere"}, [], "links.dial"),
        ({}, ["links.backoff_max_s=0.01"], "links.backoff_max_s"),
        ({}, ["links.dead_after_s=0.5"], "links.dead_after_s"),
        ({}, ["cluster.grace_s=0"], "cluster.grace_s"),
        ({}, ["cluster.nope=1"], "cluster.nope"),
        ({}, ["sm_replication.sweep_s=-1"], "sm_replication.sweep_s"),
    ],
)
def test_bad_cluster_settings_are_named(env, sets, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, env, {"node_name": "n1"}, sets)
    assert info.value.key == key


def test_per_address_caps_are_positive_and_consistent():
    config = load_config(flags={"node_name": "n1"}, sets=["limits.max_connections_per_address=10",
                                                          "limits.max_unauthenticated_per_address=5"])
    assert (config.limits.max_connections_per_address, config.limits.max_unauthenticated_per_address) == (10, 5)
    with pytest.raises(ConfigError, match="max_unauthenticated_per_address"):
        load_config(flags={"node_name": "n1"}, sets=["limits.max_connections_per_address=10",
                                                     "limits.max_unauthenticated_per_address=50"])
    with pytest.raises(ConfigError, match="max_connections_per_address: must be positive"):
        load_config(flags={"node_name": "n1"}, sets=["limits.max_connections_per_address=0"])


def test_direct_tls_port_is_off_unless_given():
    assert load_config(None, {}, {"node_name": "n1"}).tls.direct_port is None
    assert load_config(None, {}, {"node_name": "n1"}, ["tls.direct_port=5223"]).tls.direct_port == 5223
    with pytest.raises(ConfigError, match=r"tls\.direct_port"):
        load_config(None, {}, {"node_name": "n1"}, ["tls.direct_port=70000"])
