"""The cluster under test: a private local HA pair, or existing nodes from `cluster.json`.

Rules of this module:
- `provision_pair()` builds an empty database the way `presence-ha up` does (schema,
  cluster, two nodes on free loopback ports, one group with HA on, users Balanced),
  with short SRM timers and re-login limits (SPEC §5 parameters, seconds >= 1).
- `ensure_rosters()` gives every user about 20 mutual contacts spread over both nodes
  (`scenario.roster_pairs`), inserting only the pairs that are missing.
- `NodeProc` is one `presence-ha node run` subprocess we started; we stop it by PID
  (SIGCONT first, since a SIGSTOPped process cannot exit; then SIGTERM, then SIGKILL).
- For nodes we did not start, `pid_listening(port)` finds the process from /proc.
- `start_service()` puts the cluster's service address in front of the pair as `up`
  does (Debian's HAProxy, `server.cli.haproxy`): standard clients dial only that.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from presence_ha.db import clusters, groups, nodes, parameters, schema, srm_state
from presence_ha.db import users as db_users
from presence_ha.db.engine import make_engine, make_session_factory
from presence_ha.db.models import RosterItem, User
from presence_ha.loadtest import scenario
from presence_ha.loadtest.scenario import NodeAddr
from presence_ha.server.cluster_key import ClusterKey, key_path
from presence_ha.server.cluster_key import create_cluster as create_sealed_cluster

FAST_PARAMS = {"heartbeat_interval_s": 1, "heartbeat_timeout_s": 2, "init_heartbeat_timeout_s": 3,
               "critical_service_delay_s": 1, "see_other_host_redirect": "true"}
NODE_LOG_ENV = "PRESENCE_HA_NODE_LOG"  # "info": nodes log at INFO level (default: warnings)
NODE_SETS = ("limits.auth_throttle_base_s=0.2", "limits.auth_throttle_max_s=1")
START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 15.0


async def _in_session(url: str, fn):
    engine = make_engine(url)
    try:
        async with make_session_factory(engine)() as session:
            return await fn(session)
    finally:
        await engine.dispose()


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


async def provision_pair(url: str, domain: str, users: list[tuple[str, str]], relogin: tuple[int, int],
                         redirect: bool = True) -> None:
    """Schema, cluster, n1+n2 in group g1 (HA on), parameters, users Balanced. `redirect`
    False: a node relays a session it does not serve (what `up` does, for standard clients
    behind a service address) instead of answering see-other-host."""
    await schema.upgrade(url)
    cluster_key = ClusterKey.load_or_create(key_path(None, None, url))  # beside the SQLite file: the nodes' data dir

    async def go(session) -> None:
        await create_sealed_cluster(session, "loadtest", domain, cluster_key)
        for name in ("n1", "n2"):
            ports = dict(zip(nodes.PORT_FIELDS, free_ports(5), strict=True))
            await nodes.add_node(session, name, host="127.0.0.1", ports=ports)
        await groups.add_group(session, "g1", ["n1", "n2"], description="loadtest failover")
        params = {**FAST_PARAMS, "relogin_lower_s": relogin[0], "relogin_upper_s": relogin[1],
                  "see_other_host_redirect": "true" if redirect else "false"}
        for key, value in params.items():  # lowered in an order that keeps lower <= upper
            await parameters.set_parameter(session, key, value)
        await db_users.bulk_import(session, users)
        await groups.edit_group(session, "g1", ha_enabled=True)

    await _in_session(url, go)


async def read_layout(url: str) -> tuple[str, list[NodeAddr], dict[str, str], str | None]:
    """(domain, nodes with their re-login limits, {user: active node}, group of the first pair)."""
    async def go(session):
        domain = (await clusters.get_cluster(session)).domain
        addrs = []
        for info in await nodes.list_nodes(session):
            params = await parameters.effective_parameters(session, info.name)
            addrs.append(NodeAddr(info.name, info.host, info.ports.client_port,
                                  float(params["relogin_lower_s"]), float(params["relogin_upper_s"])))
        located = {u.username: u.active_node for u in await db_users.list_users(session) if u.active_node}
        pair = next((g for g in await groups.list_groups(session) if len(g.nodes) == 2 and g.ha_enabled), None)
        return domain, addrs, located, pair.name if pair else None

    return await _in_session(url, go)


async def pair_peers(url: str) -> dict[str, str]:
    """`{node: its HA peer}` for every group of two with HA on (who backs up whom)."""
    async def go(session) -> dict[str, str]:
        pairs = [g.nodes for g in await groups.list_groups(session) if len(g.nodes) == 2 and g.ha_enabled]
        return {a: b for one, two in pairs for a, b in ((one, two), (two, one))}

    return await _in_session(url, go)


async def ensure_rosters(url: str, domain: str, by_node: dict[str, list[str]], contacts: int = 20) -> int:
    """Insert the missing mutual 'both' roster items; return how many were added."""
    roster = scenario.rosters(scenario.roster_pairs(by_node, contacts))

    async def go(session) -> int:
        ids = dict((await session.execute(select(User.username, User.id))).all())
        have = set((await session.execute(select(RosterItem.user_id, RosterItem.contact_jid))).all())
        rows = [{"user_id": ids[u], "contact_jid": f"{c}@{domain}", "subscription": "both", "groups": "[]"}
                for u, cs in roster.items() for c in cs if (ids[u], f"{c}@{domain}") not in have]
        for start in range(0, len(rows), 5000):
            await session.execute(insert(RosterItem), rows[start:start + 5000])
        await session.commit()
        return len(rows)

    return await _in_session(url, go)


async def ha_states(url: str, names: list[str]) -> dict[str, tuple[str, str] | None]:
    async def go(session):
        rows = {n: await srm_state.read_state(session, n) for n in names}
        return {n: (r.state, r.reason) if r else None for n, r in rows.items()}

    return await _in_session(url, go)


@dataclass
class NodeProc:
    """A node process we started (and must stop)."""

    name: str
    url: str
    data_dir: Path
    process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        from presence_ha.server.cli.run import node_command

        verbose = ["-v"] if os.environ.get(NODE_LOG_ENV, "").lower() == "info" else []
        argv = node_command(*verbose, "node", "run", "--name", self.name, "--db", self.url,
                            "--data-dir", str(self.data_dir))
        for item in NODE_SETS:
            argv += ["--set", item]
        with open(self.data_dir / f"{self.name}.log", "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:  # not alive()
            return
        process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_pair(url: str, data_dir: Path) -> list[NodeProc]:
    """Spawn n1 and n2 and wait (deadline) until both SRMs persist Normal / Normal."""
    procs = [NodeProc(name, url, data_dir) for name in ("n1", "n2")]
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + START_DEADLINE_S
        while set(asyncio.run(ha_states(url, ["n1", "n2"])).values()) != {("Normal", "Normal")}:
            dead = [p.name for p in procs if not p.alive()]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"HA pair did not reach Normal/Normal (exited: {dead}); see {data_dir}/*.log")
            time.sleep(0.2)
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return procs


@dataclass
class ServiceProc:
    """HAProxy in front of a pair we started (and must stop): the cluster's service address."""

    proxy: Any  # server.cli.haproxy.ServiceAddress
    process: subprocess.Popen

    @property
    def address(self) -> tuple[str, int]:
        return self.proxy.host, self.proxy.port

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_service(domain: str, node_addrs: list[NodeAddr], data_dir: Path) -> ServiceProc:
    """HAProxy on a free loopback port in front of `node_addrs`, waited for (deadline)
    until its health checks see every node UP; its log is `data_dir/haproxy.log`."""
    from presence_ha.server.cli.haproxy import Backend, ServiceAddress, haproxy_binary  # cli imports loadtest

    binary = haproxy_binary()
    if binary is None:
        raise RuntimeError("haproxy is not installed (Debian: apt-get install haproxy; scripts/ensure-debian.sh)")
    backends = [Backend(n.name, n.host, n.port) for n in node_addrs]
    proxy = ServiceAddress(binary, data_dir, domain, "127.0.0.1", free_ports(1)[0], backends)
    problem = proxy.check_config()
    if problem is not None:
        raise RuntimeError(f"haproxy refuses {proxy.config_path}: {problem}")
    with open(data_dir / "haproxy.log", "ab") as log:
        process = subprocess.Popen(proxy.argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    service = ServiceProc(proxy, process)
    states = proxy.wait_all_up(START_DEADLINE_S)
    if process.poll() is not None or not states or not all(s.startswith("UP") for s in states.values()):
        service.stop()
        raise RuntimeError(f"the service address (haproxy) does not see the nodes UP: {states or 'no answer'}; "
                           f"see {data_dir}/haproxy.log")
    return service


def pid_listening(port: int) -> int | None:
    """The PID of the local process listening on TCP `port` (from /proc), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                return int(pid)
        except OSError:
            continue
    return None


def rss_kb(pid: int | None) -> int | None:
    """VmRSS of `pid` in kB (None if gone or unknown)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
