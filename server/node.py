"""The node application: start, serve, graceful shutdown (hypercorn/uvicorn style).

Rules of this module:
- `Node.start()` reads what the node needs from the database (cluster domain and
  secret, its own row: host and ports, the cluster parameters), builds the Router
  with every module of `server.features.FEATURE_MODULES`, the SessionRegistry and the
  FeatureContext, then opens the client port and the metrics port.
- `Node.serve()` runs until `request_stop()` (SIGTERM/SIGINT in `run_node`), then
  `shutdown()`: every session gets `SessionClosed(graceful=True)` (its contacts get
  unavailable presence) while the other connections still work, then every stream
  ends with `system-shutdown` and `</stream:stream>`, within `shutdown_timeout_s`.
- Failing to start (database unreachable, unknown node, port taken) raises
  `NodeStartError` with one line saying why.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from dataclasses import dataclass
from typing import Any

from db import clusters, nodes, parameters
from db.engine import DatabaseUnavailable, make_engine, make_session_factory
from db.errors import ProvisioningError
from server.auth import Accounts
from server.config import NodeConfig
from server.features import FEATURE_MODULES
from server.features.context import FeatureContext
from server.metrics import Metrics
from server.net.clients import ClientPort
from server.net.metrics_http import MetricsServer
from server.router import Router
from server.sessions import SessionRegistry
from server.store import Store
from server.tls import ensure_self_signed, server_context

log = logging.getLogger(__name__)


class NodeStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class NodeSettings:
    """What features may read as `ctx.settings`."""

    config: NodeConfig
    parameters: dict[str, Any]
    host: str
    client_port: int


def build_router(modules: list[str] = FEATURE_MODULES) -> Router:
    router = Router()
    for name in modules:
        importlib.import_module(name).register(router)
    return router


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.metrics = Metrics(config.node_name)
        self.engine = make_engine(config.db_url)
        self.session_factory = make_session_factory(self.engine)
        self.sessions = SessionRegistry()
        self.ctx: FeatureContext | None = None
        self.client_port: ClientPort | None = None
        self.metrics_server = MetricsServer(self.metrics)
        self._stop = asyncio.Event()

    async def _load(self) -> tuple[clusters.ClusterInfo, nodes.NodeInfo, dict[str, Any], str]:
        try:
            async with self.session_factory() as session:
                cluster = await clusters.get_cluster(session)
                info = await nodes.get_node(session, self.config.node_name)
                params = await parameters.effective_parameters(session, self.config.node_name)
                secret = await clusters.cluster_secret(session)
        except (DatabaseUnavailable, ProvisioningError) as exc:
            raise NodeStartError(f"cannot start node {self.config.node_name}: {exc}") from exc
        return cluster, info, params, secret

    async def start(self) -> None:
        cluster, info, params, secret = await self._load()
        host = self.config.listen_host or info.host
        tls = self.config.tls
        if tls.cert_path and tls.key_path:
            cert, key = tls.cert_path, tls.key_path
        else:
            cert, key = ensure_self_signed(self.config.data_path, info.name, cluster.domain, [info.host])
        settings = NodeSettings(self.config, params, info.host, info.ports.client_port)
        router = build_router()
        store = Store(self.session_factory, cluster.domain, info.name)
        self.ctx = FeatureContext(cluster.domain, info.name, router, self.sessions, store, self.metrics, settings)
        accounts = Accounts(self.session_factory, info.name)
        self.client_port = ClientPort(self.ctx, accounts, self.config, server_context(cert, key), self.metrics, secret.encode())
        self.metrics.watch_sessions(self.sessions, self.client_port.detached_count)
        try:
            await self.client_port.start(host, info.ports.client_port)
            await self.metrics_server.start(host, info.ports.metrics_port)
        except OSError as exc:
            raise NodeStartError(f"cannot listen on {host}: {exc}") from exc
        log.info("node %s serving %s on %s:%d", info.name, cluster.domain, host, info.ports.client_port)

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        log.info("node %s shutting down", self.config.node_name)
        if self.client_port is not None:
            await self.client_port.shutdown(self.config.limits.shutdown_timeout_s)
        await self.metrics_server.stop()
        await self.engine.dispose()


async def run_node(config: NodeConfig) -> None:
    """Start a node, serve until SIGTERM/SIGINT, shut down gracefully."""
    node = Node(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.request_stop)
    try:
        await node.start()
    except NodeStartError:
        await node.engine.dispose()
        raise
    print(f"node {config.node_name} ready", flush=True)
    await node.serve()
