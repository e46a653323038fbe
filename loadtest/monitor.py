"""Per-node time series during a failover run: session gauges, RSS, SRM states.

Rules of this module:
- One daemon thread with its own event loop polls every `interval_s` until `stop()`:
  each node's Prometheus endpoint (`jsm_sessions_client`, `jsm_sessions_client_inactive`,
  `active_jsm_sessions`, `inactive_jsm_sessions`), the RSS of the node processes whose
  PID is known, and the SRM states the way `presence-ha ha status --json` reads them
  (the database, overlaid by each node's live admin RPC answer).
- A node that does not answer gives no sample (a killed or stopped node is a gap, not
  a zero). Every request has a short timeout so one silent node cannot stall the rest.
- Samples are plain dicts; times are `time.monotonic()` like the load generators'.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from presence_ha.db import nodes
from presence_ha.db.engine import make_engine, make_session_factory
from presence_ha.loadtest.localpair import rss_kb
from presence_ha.server.cluster_key import ClusterKey, ClusterKeyError, cluster_secret, key_path
from presence_ha.server.net.admin_overview import overlay_live, read_overview, rpc_probe
from presence_ha.server.net.admin_rpc import admin_token

log = logging.getLogger(__name__)
GAUGES = ("jsm_sessions_client", "jsm_sessions_client_inactive", "active_jsm_sessions", "inactive_jsm_sessions")
HTTP_TIMEOUT_S = 0.4


def parse_gauges(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in GAUGES:
            out[name] = float(value)
    return out


@dataclass
class Monitor:
    db_url: str
    pids: dict[str, int | None]
    interval_s: float = 0.5
    admin_host: str = "127.0.0.1"
    cluster_key: Path | None = None  # None: server.cluster_key.key_path's default for db_url
    samples: list[dict] = field(default_factory=list)
    states: list[dict] = field(default_factory=list)  # SRM state changes
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Monitor:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True, name="monitor")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    async def _main(self) -> None:
        engine = make_engine(self.db_url)
        factory = make_session_factory(engine)
        try:
            async with factory() as session:
                token = await self._token(session)
                infos = await nodes.list_nodes(session)
            metrics = {n.name: f"http://{n.host}:{n.ports.metrics_port}/metrics" for n in infos}
            probe = rpc_probe(self.admin_host, {n.name: n.ports.admin_port for n in infos}, token, 0.5)
            while not self._stop.is_set():
                started = time.monotonic()
                await asyncio.gather(self._poll_metrics(metrics), self._poll_states(factory, probe))
                await asyncio.sleep(max(0.05, self.interval_s - (time.monotonic() - started)))
        finally:
            await engine.dispose()

    async def _token(self, session) -> str:
        """The admin token; without the cluster key, none (the nodes' states then come from the database)."""
        try:
            key = ClusterKey.load(self.cluster_key or key_path(None, None, self.db_url))
            return admin_token(await cluster_secret(session, key))
        except ClusterKeyError as exc:
            log.warning("monitor: no admin token, SRM states from the database only: %s", exc)
            return ""

    async def _poll_metrics(self, urls: dict[str, str]) -> None:
        async def one(name: str, url: str) -> None:
            now = time.monotonic()
            sample = {"t": now, "node": name, "rss_kb": rss_kb(self.pids.get(name))}
            try:
                text = await asyncio.to_thread(_fetch, url)
                sample.update(parse_gauges(text))
            except OSError:
                sample["unreachable"] = True
            self.samples.append(sample)

        await asyncio.gather(*(one(n, u) for n, u in urls.items()))

    async def _poll_states(self, factory, probe) -> None:
        try:
            async with factory() as session:
                overview = await read_overview(session)
            overview = await overlay_live(overview, probe)
        except Exception as exc:  # noqa: BLE001 -- a DB hiccup must not end the monitor; logged
            log.warning("ha status poll failed: %s", exc)
            return
        now = time.monotonic()
        for group in overview:
            for node in group.nodes:
                last = next((s for s in reversed(self.states) if s["node"] == node.name), None)
                current = {"node": node.name, "state": node.state, "reason": node.reason, "alive": node.alive}
                if last is None or any(last[k] != current[k] for k in current):
                    self.states.append({"t": now, **current})

    def rss_summary(self) -> dict[str, dict[str, int | None]]:
        """{node: {start_kb, peak_kb, end_kb}} from the samples that had a PID."""
        out = {}
        for name in self.pids:
            values = [s["rss_kb"] for s in self.samples if s["node"] == name and s["rss_kb"]]
            out[name] = {"start_kb": values[0] if values else None, "peak_kb": max(values, default=None),
                         "end_kb": values[-1] if values else None}
        return out


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        return response.read().decode()
