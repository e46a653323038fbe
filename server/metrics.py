"""Every metric of a node, declared once (STYLE §7), in one registry per node.

Rules of this module:
- Names are snake_case; the help text names the SPEC counter (`JsmSessionsClient`...).
  Session counts are gauges computed from the session registry when scraped;
  counters are monotonic and exported with the `_total` suffix.
- Adapters update metrics from events; cores never import this module.
- `render()` is the Prometheus text exposition, served by `server.net.metrics_http`.
- Counters bumped per stanza are `LoopCounter`s: a plain int, exported by a collector
  when scraped. prometheus_client's `Counter` takes a lock per increment (0.6 us, and a
  message bumps two); these are only ever bumped on the event loop's thread.
- The HA gauges (`srm_state{state}`, `srm_ha_enabled`, `critical_service_running` and
  `critical_service_faulty{service}`) are read from the SRM and the critical services
  when scraped (`watch_ha`), so they are never stale; `db_replication_setup` is set by
  the node's periodic replication check (`server.replication_probe`). The Grafana
  dashboard and the alerting rules in `deploy/` use these names: rename with them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from presence_ha.server.sessions import SessionRegistry, SessionTally

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

disable_created_metrics()  # the *_created series only add noise to a scrape


class LoopCounter:
    """A monotonic counter of the event loop's thread (see the module rules)."""

    __slots__ = ("documentation", "name", "value")

    def __init__(self, name: str, documentation: str) -> None:
        self.name, self.documentation, self.value = name, documentation, 0

    def inc(self, amount: int = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class _LoopCounters:
    """The collector that exports `LoopCounter`s (as `<name>_total`)."""

    def __init__(self, counters: list[LoopCounter]) -> None:
        self._counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        for counter in self._counters:
            yield CounterMetricFamily(counter.name, counter.documentation, value=counter.value)


def _gauge_value(gauge: Gauge) -> float:
    """A gauge's current value (a function gauge computes it now)."""
    return next(sample.value for metric in gauge.collect() for sample in metric.samples)


@dataclass(frozen=True)
class HaSample:
    """What the HA gauges show at one scrape: the SRM state (SPEC §6 words), the HA
    switch, and per applicable critical service (name, running, faulty)."""

    state: str | None  # None: the SRM has not started yet
    ha_enabled: bool
    services: tuple[tuple[str, bool, bool], ...]


class _HaCollector:
    """Exports an `HaSample` taken at each scrape (no state kept between scrapes)."""

    def __init__(self, states: Iterable[str], sample: Callable[[], HaSample]) -> None:
        self._states, self._sample = tuple(states), sample

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self._sample()
        state = GaugeMetricFamily("srm_state", "SRM node state (SPEC §6): 1 for the current one", labels=["state"])
        for name in self._states:
            state.add_metric([name], 1.0 if name == now.state else 0.0)
        yield state
        yield GaugeMetricFamily("srm_ha_enabled", "HA switch of this node's group (SPEC §3): 1 on",
                                value=1.0 if now.ha_enabled else 0.0)
        running = GaugeMetricFamily("critical_service_running", "Critical service running (SPEC §4): 1 yes",
                                    labels=["service"])
        faulty = GaugeMetricFamily(
            "critical_service_faulty",
            "Critical service down by failure or an admin's stop while monitored (SPEC §4: triggers a failover)",
            labels=["service"])
        for name, is_running, is_faulty in now.services:
            running.add_metric([name], 1.0 if is_running else 0.0)
            faulty.add_metric([name], 1.0 if is_faulty else 0.0)
        yield running
        yield faulty


class Metrics:
    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self._tally_now: Callable[[], SessionTally] | None = None
        self._scrape_tally: SessionTally | None = None  # the one count of the render in progress
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge("presence_ha_node", "This node's name (always 1; join on `instance` for the node label)", ["node"],
              registry=r).labels(node_name).set(1)
        self.jsm_sessions_client = Gauge("jsm_sessions_client", "JsmSessionsClient: active client sessions", registry=r)
        self.jsm_sessions_client_inactive = Gauge(
            "jsm_sessions_client_inactive", "JsmSessionsClientInactive: inactive (backup) client sessions", registry=r
        )
        self.active_jsm_sessions = Gauge(
            "active_jsm_sessions", "ActiveJsmSessions: users with an active session on this node", registry=r
        )
        self.inactive_jsm_sessions = Gauge(
            "inactive_jsm_sessions", "InactiveJsmSessions: users with only inactive sessions on this node", registry=r
        )
        self.jsm_sessions_composed = Gauge(
            "jsm_sessions_composed",
            "JsmSessionsComposed: sessions kept without a live client connection (XEP-0198 detached)",
            registry=r,
        )
        self.connections = Counter("connections", "Client TCP connections accepted", registry=r)
        self.loop_lag = Gauge("event_loop_lag_seconds", "How late the event loop ran a timer, last sample "
                              "(a node whose loop runs late sheds logins: server.net.limits.LoginGate)", registry=r)
        self.stanzas_in = LoopCounter("stanzas_in", "Stanzas received from bound clients")
        self.stanzas_out = LoopCounter("stanzas_out", "Stanzas sent to bound clients")
        r.register(_LoopCounters([self.stanzas_in, self.stanzas_out]))
        self.auth_failures = Counter("auth_failures", "Failed SASL authentication attempts", registry=r)
        self.handler_errors = Counter("handler_errors", "Feature handler exceptions (internal-server-error)",
                                      registry=r)
        self.stream_errors = Counter("stream_errors", "Stream errors sent, by condition", ["condition"], registry=r)
        # Server Recovery Manager (server.srm.runner): SPEC §6 transitions and faults.
        self.srm_transitions = Counter(
            "srm_transitions", "SRM node state transitions (SPEC §6)", ["from", "to", "reason"], registry=r
        )
        self.srm_invalid_transitions = Counter(
            "srm_invalid_transitions", "SRM events with no transition (fed back as an internal error)", registry=r
        )
        self.srm_peer_protocol_errors = Counter(
            "srm_peer_protocol_errors", "Malformed or unknown SRM peer messages received", registry=r
        )
        self.db_replication_setup = Gauge(
            "db_replication_setup", "Replication setup value (SPEC §7 dbreplication): 2 healthy, 0 no replication, "
            "1 no synchronous standby, 3 tables differ, 4 database in recovery; -1 not checked yet", registry=r)
        self.db_replication_setup.set(-1)

    def watch_ha(self, states: Iterable[str], sample: Callable[[], HaSample]) -> None:
        """Export the HA gauges from `sample()` at every scrape; `states`: every SRM state."""
        self.registry.register(_HaCollector(states, sample))

    def watch_sessions(self, sessions: SessionRegistry, detached: Callable[[], int]) -> None:
        """Compute the session gauges from `sessions` whenever they are scraped: one pass
        over the accounts per `render`, shared by the four gauges (any other reader of
        the registry counts afresh: nothing is ever served stale)."""

        def tally() -> SessionTally:
            return self._scrape_tally or sessions.tally()

        self._tally_now = sessions.tally
        self.jsm_sessions_client.set_function(lambda: tally().active_sessions)
        self.jsm_sessions_client_inactive.set_function(lambda: tally().inactive_sessions)
        self.active_jsm_sessions.set_function(lambda: tally().active_users)
        self.inactive_jsm_sessions.set_function(lambda: tally().inactive_only_users)
        self.jsm_sessions_composed.set_function(detached)

    def session_counters(self) -> dict[str, int]:
        """The SPEC §8 counters by their SPEC names, from one count (the admin page)."""
        names = ("JsmSessionsClient", "JsmSessionsClientInactive", "ActiveJsmSessions", "InactiveJsmSessions",
                 "JsmSessionsComposed")
        self._scrape_tally = self._tally_now() if self._tally_now is not None else None
        try:
            gauges = (self.jsm_sessions_client, self.jsm_sessions_client_inactive, self.active_jsm_sessions,
                      self.inactive_jsm_sessions, self.jsm_sessions_composed)
            return {name: int(_gauge_value(gauge)) for name, gauge in zip(names, gauges, strict=True)}
        finally:
            self._scrape_tally = None

    def render(self) -> bytes:
        self._scrape_tally = self._tally_now() if self._tally_now is not None else None
        try:
            return generate_latest(self.registry)
        finally:
            self._scrape_tally = None
