"""The service address's HAProxy configuration, as text (server.cli.haproxy)."""

from __future__ import annotations

from pathlib import Path

from presence_ha.server.cli.haproxy import MONITOR_URI, Backend, config_text, max_connections, stream_header


def test_every_node_is_a_checked_server_behind_one_tcp_frontend() -> None:
    text = config_text("example.test", "127.0.0.1", 5222,
                       [Backend("n1", "127.0.0.1", 15222), Backend("n2", "127.0.0.1", 15232)], Path("/d"), 1000)
    assert "bind 127.0.0.1:5222" in text and "mode tcp" in text
    assert "    server n1 127.0.0.1:15222 check\n" in text and "    server n2 127.0.0.1:15232 check\n" in text
    assert "on-marked-down shutdown-sessions" in text  # a dead node's clients are cut, not left hanging
    assert "option redispatch 1" in text  # a connect to a node not yet marked down goes to the other at once
    assert f'tcp-check send "{stream_header("example.test")}"' in text
    assert "tcp-check expect rstring <stream:features|resource-constraint" in text  # busy is not dead
    assert "maxconn 1000" in text and "stats socket /d/haproxy.sock mode 600" in text


def test_the_header_is_one_line_without_double_quotes() -> None:
    header = stream_header("example.test")
    assert '"' not in header and "\n" not in header and "to='example.test'" in header


def test_connections_fit_the_descriptor_limit() -> None:
    assert max_connections(20_000) == 9_950
    assert max_connections(1_048_576) == 50_000
    assert max_connections(150) == 100


def test_the_lab_binds_the_vip_and_the_host_and_answers_a_monitor() -> None:
    backends = [Backend("n1", "198.18.0.1", 15222), Backend("n2", "198.18.0.2", 15232)]
    text = config_text("example.test", "198.18.0.100", 5222, backends, Path("/d"), 1000,
                       also_bind=("198.18.0.1",), monitor="127.0.0.1:8404")
    assert "    bind 198.18.0.100:5222\n    bind 198.18.0.1:5222\n" in text
    monitor = text[text.index("frontend monitor"):]
    assert "mode http" in monitor and "bind 127.0.0.1:8404" in monitor and f"monitor-uri {MONITOR_URI}" in monitor
    assert "monitor fail if { nbsrv(nodes) lt 1 }" in monitor  # 503 when this HAProxy sees no node UP
    assert "frontend monitor" not in config_text("example.test", "127.0.0.1", 5222, backends, Path("/d"), 1000)
