"""The operations kit in deploy/: the example node configuration is complete and true,
the systemd unit restarts a failed node, the dashboard and the alerting rules only use
metrics a node exports. (promtool and systemd-analyze check them in
tests/integration/test_ops_kit.py.)"""

from __future__ import annotations

import configparser
import dataclasses
import json
import re
import tomllib
from pathlib import Path

import pytest

from presence_ha.server.config import ConfigError, NodeConfig, load_config
from presence_ha.server.metrics import HaSample, Metrics

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
EXAMPLE = DEPLOY / "config" / "node.example.toml"
UNIT = DEPLOY / "systemd" / "presence-ha-node@.service"
DASHBOARD = DEPLOY / "grafana" / "presence-ha.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMQL_WORDS = {"by", "on", "and", "or", "unless", "max", "sum", "rate", "increase", "without", "ignoring",
                "group_left", "group_right", "min", "avg", "count", "le", "offset", "bool"}


def config_keys(cls: type = NodeConfig, prefix: str = "") -> dict[str, object]:
    """{dotted key: default} of every leaf of the configuration tree."""
    keys: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:  # a section
            keys |= config_keys(f.default_factory, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        else:
            keys[prefix + f.name] = f.default
    return keys


def flatten(tree: dict[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def test_the_example_configuration_names_every_key_and_loads() -> None:
    text = EXAMPLE.read_text()
    written = flatten(tomllib.loads(text))
    for key in config_keys():
        name = key.rsplit(".", 1)[-1]
        assert key in written or re.search(rf"^# {name} = ", text, re.M), f"{key} is not in {EXAMPLE.name}"
    config = load_config(EXAMPLE)
    assert config.node_name == "node1"


def test_the_example_shows_the_defaults() -> None:
    """Apart from where the node and its database are, the example's values are the defaults."""
    written = flatten(tomllib.loads(EXAMPLE.read_text()))
    defaults = config_keys()
    for key, value in written.items():
        if key in ("node_name", "db_url", "data_dir"):
            continue
        assert value == defaults[key], f"{key} = {value!r} in {EXAMPLE.name}, but the default is {defaults[key]!r}"


@pytest.mark.parametrize(
    ("edit", "key", "words"),
    [
        (("max_stanza_bytes = 262144", "max_stanza_bytes = 0"), "limits.max_stanza_bytes", "must be positive"),
        (("max_stanza_bytes = 262144", "max_stanza_byte = 1"), "limits.max_stanza_byte",
         "did you mean limits.max_stanza_bytes?"),
        (("window = 1024", "window = 10.5"), "links.window", "10.5 is not an integer"),
        (("required = true", 'required = "maybe"'), "tls.required", "is not a boolean"),
        (('event_loop = "uvloop"', 'event_loop = "trio"'), "event_loop", "is not one of uvloop, asyncio"),
        (("[cluster]", "cluster = 3\n[clusterx]"), "clusterx", "unknown key"),
    ],
)
def test_a_bad_configuration_file_names_the_key(tmp_path: Path, edit: tuple[str, str], key: str, words: str) -> None:
    path = tmp_path / "node.toml"
    text = EXAMPLE.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key and words in str(info.value)


def test_a_file_that_is_not_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('node_name = "n1"\n[limits\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_the_systemd_unit_restarts_a_failed_node_with_its_config_file() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert "node run --config /etc/presence-ha/%i.toml" in service["ExecStart"]
    assert service["KillSignal"] == "SIGTERM"
    assert "StartLimitBurst" in unit["Unit"] and unit["Install"]["WantedBy"] == "multi-user.target"


def exported_names() -> set[str]:
    """Every series name a node exports (counters with their `_total`)."""
    metrics = Metrics("n1")
    metrics.watch_ha(["Normal"], lambda: HaSample("Normal", True, (("xcp-router", True, False),)))
    metrics.srm_transitions.labels("Normal", "Failed Over", "On Admin Request").inc()  # labelled series
    metrics.stream_errors.labels("see-other-host").inc()  # appear once counted
    text = metrics.render().decode()
    return {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (identifiers before `{`, or bare in a rule)."""
    cleaned = re.sub(r'"[^"]*"', '""', expr)  # label values
    cleaned = re.sub(r"\[[^\]]*\]", "", cleaned)  # ranges
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*\{", cleaned))
    return {n for n in names if n not in PROMQL_WORDS}


def test_the_dashboard_reads_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
    used = set().union(*(metric_names(e) for e in exprs))
    exported = exported_names() | {"up"}
    assert used <= exported, f"not exported: {used - exported}"
    assert {"srm_state", "jsm_sessions_client", "srm_transitions_total", "critical_service_faulty",
            "db_replication_setup"} <= used
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_alerts_read_only_exported_metrics() -> None:
    exprs = re.findall(r"expr: (?:>-\n)?((?:.+\n)+?)\s+(?:for|labels):", ALERTS.read_text())
    alerts = re.findall(r"- alert: (\w+)", ALERTS.read_text())
    assert {"PresenceHaNodeDown", "PresenceHaFailoverHappened", "PresenceHaReplicationUnhealthy",
            "PresenceHaCriticalServiceDown"} <= set(alerts)
    used = set().union(*(metric_names(e) for e in exprs))
    exported = exported_names() | {"up"}
    assert used <= exported, f"not exported: {used - exported}"
    assert {"up", "srm_transitions_total", "db_replication_setup", "critical_service_faulty"} <= used
