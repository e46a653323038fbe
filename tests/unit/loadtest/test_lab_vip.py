"""The lab's service address: keepalived's configuration, argv and track script (pure text)."""

from __future__ import annotations

from pathlib import Path

from presence_ha.loadtest.lab import vip
from presence_ha.loadtest.lab.netns import LabNet
from presence_ha.server.cli.haproxy import MONITOR_URI


def config(lab_id: int = 7, name: str = "h1", peer: str = "h2") -> str:
    net = LabNet(lab_id)
    return vip.keepalived_config(net, net.host(name), net.host(peer), Path("/lab/h1/check-haproxy.sh"))


def test_one_vrrp_instance_with_unicast_adverts_to_the_peer_holds_the_vip_on_eth0():
    text = config()
    assert "unicast_src_ip 198.18.7.1\n" in text and "unicast_peer {\n        198.18.7.2\n    }" in text
    assert "198.18.7.100/24 dev eth0" in text and "interface eth0" in text
    assert "advert_int 1\n" in text
    assert "priority 150\n" in text and "priority 100\n" in config(name="h2", peer="h1")


def test_both_start_backup_and_a_returning_host_does_not_take_the_vip_back():
    text = config()
    assert "state BACKUP\n" in text and "nopreempt\n" in text
    assert "state MASTER" not in text  # keepalived ignores nopreempt with an initial MASTER


def test_the_vip_follows_the_haproxy_check_and_scripts_run_with_script_security():
    text = config()
    assert 'script "/lab/h1/check-haproxy.sh"' in text
    assert "track_script {\n        haproxy_alive\n    }" in text
    assert "fall 2\n" in text and "interval 1\n" in text
    assert "enable_script_security" in text and "script_user root" in text


def test_router_ids_differ_between_labs_and_stay_in_vrrp_range():
    ids = {vip.router_id(LabNet(i)) for i in range(256)}
    assert min(ids) >= 1 and max(ids) <= 255
    assert vip.router_id(LabNet(3)) != vip.router_id(LabNet(4))


def test_keepalived_runs_in_the_foreground_with_its_files_in_the_host_directory():
    argv = vip.keepalived_argv("/usr/sbin/keepalived", Path("/lab/h2"))
    assert argv[0] == "/usr/sbin/keepalived" and "-n" in argv and "-P" in argv
    for flag, name in (("-f", "keepalived.conf"), ("-p", "keepalived.pid"), ("-r", "keepalived-vrrp.pid"),
                       ("-c", "keepalived-checkers.pid")):
        assert argv[argv.index(flag) + 1] == f"/lab/h2/{name}"  # never /run/keepalived.pid, shared by all namespaces


def test_the_check_asks_the_monitor_on_loopback_and_wants_a_200():
    script = vip.check_script(9000)
    assert script.startswith("#!/bin/bash\n")
    assert "/dev/tcp/127.0.0.1/9000" in script and f"GET {MONITOR_URI} HTTP/1.0" in script
    assert "read -r -t 1" in script and "200" in script
