"""The one fault a failover run injects, and the reasons some faults cannot be injected.

Rules of this module:
- `refusal(fault, ...)` is checked before anything starts: it returns the reason a
  fault cannot be injected on this setup (or None), so the tool refuses cleanly.
- `inject()` performs the fault on one node and returns what it did; `restore()`
  undoes what must be undone after the run (SIGCONT after `stop`).
- kill/term/stop are signals to the node's PID; service stops a critical service and
  manual asks for a failover, both through the node's admin RPC (SPEC §4, §7).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass

from presence_ha.db import nodes as db_nodes
from presence_ha.db.engine import make_engine, make_session_factory
from presence_ha.server.cluster_key import ClusterKey, ClusterKeyError, cluster_secret, key_path
from presence_ha.server.net.admin_rpc import AdminRpcError, admin_token, call_node

FAULTS = ("kill", "term", "stop", "service", "db", "partition", "manual")
SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "stop": signal.SIGSTOP}
# Stopping one of these is a critical service down (SPEC §4); the first running one is used.
PREFERRED_SERVICES = ("presence-engine", "sync-agent", "xcp-router")
PARTITION_REASON = (
    "partition refused: a node listens on the SRM and link ports its peer dials, both read from the one "
    "nodes table, so no proxy port can be put between the two nodes of a pair (cutting the SRM link needs "
    "a per-peer address, which the configuration does not have)"
)
SQLITE_DB_REASON = (
    "db refused: SQLite is an embedded file opened by each node, there is no database connection to cut; "
    "a database fault needs PostgreSQL reached through a cuttable proxy, which this tool does not set up yet"
)


@dataclass
class Injected:
    fault: str
    node: str
    detail: str
    pid: int | None = None
    service: str | None = None  # the critical service a `service` fault stopped


def refusal(fault: str, db_url: str, have_pid: bool, proxied_db: bool) -> str | None:
    """Why `fault` cannot be injected here, or None."""
    if fault in SIGNALS and not have_pid:
        return f"{fault} refused: the PID of the node to fault is unknown (no local process listens on its port)"
    if fault == "partition":
        return PARTITION_REASON
    if fault == "db" and db_url.startswith("sqlite"):
        return SQLITE_DB_REASON
    if fault == "db" and not proxied_db:
        return "db refused: the nodes were not started by this tool, so their database link cannot be cut"
    return None


async def _admin(db_url: str, host: str, node: str, payload: dict) -> dict:
    engine = make_engine(db_url)
    try:
        async with make_session_factory(engine)() as session:
            try:  # the cluster key beside an SQLite file, or $PRESENCE_HA_CLUSTER_KEY
                token = admin_token(await cluster_secret(session, ClusterKey.load(key_path(None, None, db_url))))
            except ClusterKeyError as exc:
                raise AdminRpcError(str(exc)) from None
            port = (await db_nodes.get_node(session, node)).ports.admin_port
    finally:
        await engine.dispose()
    return await call_node(host, port, token, {**payload, "node": node}, 20.0)


def admin_call(db_url: str, node: str, payload: dict, host: str = "127.0.0.1") -> dict:
    """One admin RPC request; AdminRpcError when refused or unreachable."""
    return asyncio.run(_admin(db_url, host, node, payload))


def _stop_service(db_url: str, node: str) -> str:
    """Stop one running critical service of `node`; its name."""
    services = admin_call(db_url, node, {"op": "service.list"})["services"]
    running = {s["name"] for s in services if s["running"] and s["applicable"] and s["monitored"]}
    name = next((s for s in PREFERRED_SERVICES if s in running), None) or next(iter(sorted(running)), None)
    if name is None:
        raise AdminRpcError(f"no running critical service on {node}")
    admin_call(db_url, node, {"op": "service.stop", "service": name})
    return name


def inject(fault: str, node: str, pid: int | None, db_url: str, cut_db=None) -> Injected:
    """Inject `fault` on `node` now."""
    if fault in SIGNALS:
        if pid is None:
            raise ValueError(f"fault {fault} needs the pid of {node}")
        os.kill(pid, SIGNALS[fault])
        return Injected(fault, node, f"{SIGNALS[fault].name} sent to {node} (pid {pid})", pid)
    if fault == "service":
        name = _stop_service(db_url, node)
        return Injected(fault, node, f"critical service {name} stopped on {node} (admin RPC)", pid, name)
    if fault == "manual":
        admin_call(db_url, node, {"op": "failover"})
        return Injected(fault, node, f"manual failover of {node} (admin RPC, as `ha failover {node}`)", pid)
    if fault == "db" and cut_db is not None:
        cut_db()
        return Injected(fault, node, f"database connections of {node} cut (proxy)", pid)
    raise ValueError(f"fault {fault!r} cannot be injected here")


def restore(injected: Injected | None) -> None:
    """Undo what must be undone once the run is over (a SIGSTOPped node gets SIGCONT)."""
    if injected is not None and injected.fault == "stop" and injected.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(injected.pid, signal.SIGCONT)
