"""The lab's names, addresses, fault rules and configuration files (pure: nothing is run)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import make_url

from presence_ha.db.engine import normalize_url
from presence_ha.loadtest.lab import netns, postgres
from presence_ha.loadtest.lab.lab import REQUIRED_TOOLS, Lab
from presence_ha.loadtest.lab.netns import LAB_RANGE, LabError, LabNet
from presence_ha.loadtest.lab.postgres import PatroniTimers, Secrets

SECRETS = Secrets("su-pw", "repl-pw", "app-pw")


def test_every_address_is_in_the_benchmarking_range_and_names_fit_interfaces():
    for lab_id in (0, 7, 255):
        net = LabNet(lab_id)
        addresses = [net.root_address] + [h.address for h in net.hosts]
        assert all(ipaddress.ip_address(a) in LAB_RANGE for a in addresses)
        assert len(set(addresses)) == 4 and net.vip not in addresses and ipaddress.ip_address(net.vip) in net.subnet
        assert all(len(name) <= 15 for name in [net.bridge] + [h.veth for h in net.hosts])  # IFNAMSIZ - 1
    net = LabNet(3)
    assert [(h.name, h.address, h.netns) for h in net.hosts] == [
        ("h1", "198.18.3.1", "phalab3-h1"), ("h2", "198.18.3.2", "phalab3-h2"), ("w", "198.18.3.3", "phalab3-w")]
    assert net.root_address == "198.18.3.254"


def test_a_lab_id_out_of_range_or_an_unknown_host_is_refused():
    with pytest.raises(LabError):
        LabNet(256)
    with pytest.raises(LabError, match="no host 'h9'"):
        LabNet(0).host("h9")


def test_partition_rules_drop_one_peer_both_ways_and_isolation_drops_eth0():
    rules = netns.partition_rules("198.18.0.2")
    assert "ip saddr 198.18.0.2 drop" in rules and "ip daddr 198.18.0.2 drop" in rules
    assert rules.startswith("table inet phalab\ndelete table inet phalab\n")  # replaces earlier rules
    isolation = netns.isolation_rules()
    assert 'iifname "eth0" drop' in isolation and 'oifname "eth0" drop' in isolation
    assert "lo" not in isolation.replace("policy", "")


def test_multi_host_url_reaches_asyncpg_as_host_and_port_lists():
    url = postgres.app_url(LabNet(0), SECRETS)
    assert url.startswith("postgresql://presence:app-pw@/presence?host=198.18.0.1:5432&host=198.18.0.2:5432")
    _args, opts = asyncpg_dialect().create_connect_args(make_url(normalize_url(url)))
    assert opts["host"] == ["198.18.0.1", "198.18.0.2"]
    assert opts["port"] == [5432, 5432]
    assert opts["target_session_attrs"] == "read-write"


def test_patroni_config_is_synchronous_and_listens_on_its_host_only(tmp_path):
    net = LabNet(0)
    config = postgres.patroni_config(net, net.host("h2"), tmp_path / "db", PatroniTimers(), SECRETS)
    json.dumps(config)  # written as JSON, which Patroni reads as YAML
    dcs = config["bootstrap"]["dcs"]
    assert (dcs["synchronous_mode"], dcs["synchronous_mode_strict"]) == (True, False)
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]
    assert config["postgresql"]["listen"] == "198.18.0.2:5432"
    assert config["restapi"]["listen"] == "198.18.0.2:8008"
    assert config["etcd3"]["hosts"] == ["198.18.0.3:2379"]
    assert config["postgresql"]["data_dir"] == str(tmp_path / "db" / "data")
    assert config["postgresql"]["parameters"]["unix_socket_directories"] == ""
    assert all("198.18.0.0/24" in line for line in config["postgresql"]["pg_hba"])


def test_timers_follow_patroni_and_etcd_rules():
    with pytest.raises(LabError, match="loop_wait"):
        PatroniTimers(ttl_s=5, loop_wait_s=2, retry_timeout_s=2)
    with pytest.raises(LabError, match="lease"):
        PatroniTimers(ttl_s=8, etcd_election_ms=6000)
    argv = postgres.etcd_argv(LabNet(1).host("w"), Path("/x/etcd"), PatroniTimers(), "phalab1")
    assert argv[:5] == ["etcd", "--name", "w", "--data-dir", "/x/etcd"]
    assert "http://198.18.1.3:2379" in argv and "--initial-cluster" in argv


def test_leader_and_sync_standby_from_patronis_member_list():
    members = [{"name": "h1", "role": "leader", "state": "running"},
               {"name": "h2", "role": "sync_standby", "state": "streaming"}]
    assert (postgres.leader_name(members), postgres.sync_standby_name(members)) == ("h1", "h2")
    assert postgres.leader_name([{"name": "h1", "role": "leader", "state": "stopped"}]) is None
    assert postgres.sync_standby_name([{"name": "h2", "role": "replica", "state": "streaming"}]) is None


def test_missing_programs_are_named_by_their_debian_packages():
    assert netns.missing_tools([("no-such-program-xyz", "pkg-a"), ("sh", "pkg-b")]) == ["pkg-a"]
    assert {package for _cmd, package in REQUIRED_TOOLS} >= {"etcd-server", "patroni", "nftables", "postgresql-15",
                                                              "haproxy", "keepalived"}


def test_cluster_json_adds_lab_hosts_to_the_up_format(tmp_path):
    from presence_ha.loadtest.lab.lab import LabNode

    lab = Lab(tmp_path, LabNet(0), SECRETS)
    nodes = [LabNode("n1", lab.net.host("h1"), 15222, 15226), LabNode("n2", lab.net.host("h2"), 15232, 15236)]
    data = lab.cluster_json("lab.test", nodes, {"user1": "pw1"})
    assert set(data) == {"domain", "service", "ca_cert", "database_url", "cluster_key", "nodes", "users", "lab"}
    assert data["service"] == {"host": "198.18.0.100", "port": 5222}  # the keepalived VIP, as `up`'s HAProxy
    assert data["ca_cert"] == str(tmp_path / "h1" / "tls" / "ca.crt")
    assert data["lab"]["haproxy"] == {"h1": "198.18.0.1:5222", "h2": "198.18.0.2:5222"}
    assert data["cluster_key"] == str(tmp_path / "cluster.key")
    assert data["nodes"][1] == {"name": "n2", "host": "198.18.0.2", "client_port": 15232, "metrics_port": 15236,
                                "lab_host": "h2", "netns": "phalab0-h2"}
    assert data["users"] == [{"username": "user1", "jid": "user1@lab.test", "password": "pw1"}]
    assert data["lab"]["etcd"] == "http://198.18.0.3:2379"


def test_state_file_round_trip_and_absence(tmp_path):
    assert Lab.load(tmp_path) is None
    state = {"lab_id": 4, "secrets": {"superuser": "a", "replication": "b", "app": "c"},
             "timers": {"ttl_s": 8, "loop_wait_s": 3, "retry_timeout_s": 2, "etcd_heartbeat_ms": 500,
                        "etcd_election_ms": 2500}}
    (tmp_path / "lab.json").write_text(json.dumps(state))
    lab = Lab.load(tmp_path)
    assert lab is not None and lab.net.lab_id == 4 and lab.secrets.app == "c"


def test_lab_help_names_the_packages():
    from presence_ha.server.cli import main

    result = CliRunner().invoke(main, ["lab", "--help"])
    assert result.exit_code == 0
    assert "etcd-server" in result.output and "patroni" in result.output and "keepalived" in result.output
    assert {"up", "down", "status"} <= set(result.output.split())
