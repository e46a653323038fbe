"""Per-stanza counters: plain ints on the loop, exported like prometheus_client's."""

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from presence_ha.server.metrics import Metrics


def test_loop_counters_are_exported_as_prometheus_counters():
    metrics = Metrics("n1")
    for _ in range(3):
        metrics.stanzas_in.inc()
    metrics.stanzas_out.inc(2)
    text = metrics.render().decode()
    reference = CollectorRegistry()
    Counter("stanzas_in", "Stanzas received from bound clients", registry=reference).inc(3)
    assert generate_latest(reference).decode() in text  # same HELP, TYPE and sample lines
    assert "stanzas_out_total 2.0" in text


def test_a_loop_counter_only_goes_up():
    with pytest.raises(ValueError, match="counters only go up"):
        Metrics("n1").stanzas_in.inc(-1)


def test_ha_gauges_are_read_at_each_scrape():
    from presence_ha.server.metrics import HaSample

    metrics = Metrics("n1")
    now = [HaSample("Normal", True, (("xcp-router", True, False), ("presence-engine", False, True)))]
    metrics.watch_ha(["Normal", "Failed Over"], lambda: now[0])
    text = metrics.render().decode()
    assert 'srm_state{state="Normal"} 1.0' in text and 'srm_state{state="Failed Over"} 0.0' in text
    assert "srm_ha_enabled 1.0" in text and 'presence_ha_node{node="n1"} 1.0' in text
    assert 'critical_service_running{service="presence-engine"} 0.0' in text
    assert 'critical_service_faulty{service="presence-engine"} 1.0' in text
    assert "db_replication_setup -1.0" in text  # not checked yet
    now[0] = HaSample("Failed Over", True, ())
    text = metrics.render().decode()
    assert 'srm_state{state="Failed Over"} 1.0' in text and 'srm_state{state="Normal"} 0.0' in text
