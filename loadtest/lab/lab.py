"""A lab of separate hosts on this machine: h1 and h2 (a node and a PostgreSQL each), w (etcd).

Rules of this module:
- `Lab.up` builds everything from nothing, after tearing down whatever an earlier run
  left (found by name: `netns.destroy`, and the state file `DIR/lab.json`): the
  namespaces and bridge, etcd on w, Patroni + PostgreSQL on h1 and h2 (waits for a
  leader and a synchronous standby), the nodes' role and database, the schema and
  cluster (through the same `db/` functions as `presence-ha up`: one group of n1 on
  h1 and n2 on h2 with HA on, demo users), then the two `presence-ha node run`
  processes (waits until both serve and their SRMs are Normal / Normal), then the
  service address (`loadtest.lab.vip`): HAProxy and keepalived in h1 and in h2 (waits
  until both HAProxies see both nodes UP and one host holds the virtual IP). It writes
  `DIR/cluster.json` as `up` does (`service` is VIP:5222), plus each node's lab host
  and namespace, the cluster CA's certificate (`ca_cert`) and a `lab` section.
- Directories: `DIR/<host>/` per host (node TLS files and log; `db/` with Patroni's
  config, log and the PostgreSQL data dir, owned by `postgres`); `DIR/w/etcd`. A new
  `up` wipes them; `down` leaves them for reading. `DIR` (when `up` makes it) and the
  host directories are 0711, whatever the umask: the `postgres` user must pass through
  them to its `db/`, and may list none of them. Every file in them is 0600 (umask 077).
- Secrets: the cluster secret and CA key are sealed with `DIR/cluster.key` (0600,
  `server.cluster_key`), copied into each node host's directory, where its node reads
  it (`--cluster-key DIR/<host>/cluster.key`) and where `presence_ha()` points the
  commands it runs there.
- `Lab.down` kills every process of the lab's namespaces (SIGKILL: a lab is thrown
  away, its data is rebuilt by the next `up`) and deletes namespaces and bridge.
- A foreground `lab up` records its PID in `DIR/lab-up.pid`; `down` (and the next
  `up`) SIGTERMs it only if that process's argv still says `lab up`.
- SRM parameters: the load test's fast timers with a 3 s heartbeat (`LAB_PARAMS`);
  `lab up` adds `RELAY_PARAMS` (relay, not see-other-host, behind the service address).
- Faults for tests and the load test: `power_off(host)` (every process of the host
  stopped, then killed: none sees its siblings die, as when the power goes; the host
  keeps its own address, whose ports then refuse, but not the VIP, which its dead
  keepalived can no longer drop), `kill_db_primary()`,
  `partition()`, `isolate(host)`, `heal()`; `restart_db(host)` brings a killed
  database host back as a standby. They act at once and return; the waits
  (`wait_new_leader`, `postgres.wait_replicated`, `postgres.wait_writable`) are separate.
  `start_wan(model)` puts the delaying proxy (`loadtest.lab.wanproxy`) between h1 and h2;
  `move_db_primary(host)` is a Patroni switchover; `live_states()` and `presence_ha()` run
  `presence-ha` inside a node's host, where its admin RPC listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import secrets as random_secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from presence_ha.db import groups, nodes, parameters, schema
from presence_ha.db import users as db_users
from presence_ha.db.engine import DatabaseUnavailable, make_engine, make_session_factory
from presence_ha.db.errors import ProvisioningError
from presence_ha.loadtest.lab import netns, postgres, vip
from presence_ha.loadtest.lab.netns import Host, LabError, LabNet
from presence_ha.loadtest.lab.postgres import PatroniTimers, Secrets
from presence_ha.loadtest.lab.wanproxy import DEFAULT_PORT as WAN_PORT
from presence_ha.loadtest.lab.wanproxy import WanModel, redirect_rules
from presence_ha.loadtest.localpair import FAST_PARAMS, NODE_SETS, ha_states
from presence_ha.server.cluster_key import ENV_CLUSTER_KEY, KEY_FILE, ClusterKey
from presence_ha.server.cluster_key import create_cluster as create_sealed_cluster

STATE_FILE = "lab.json"
FOREGROUND_FILE = "lab-up.pid"
NODE_HOSTS = {"n1": "h1", "n2": "h2"}
DB_HOSTS = ("h1", "h2")
SERVICE_HOSTS = tuple(NODE_HOSTS.values())  # each runs HAProxy and keepalived (loadtest.lab.vip)
REQUIRED_TOOLS = (
    ("ip", "iproute2"), ("nft", "nftables"), ("etcd", "etcd-server"), ("patroni", "patroni"),
    ("runuser", "util-linux"), (str(postgres.PG_BIN / "initdb"), "postgresql-15"), ("haproxy", "haproxy"),
    ("keepalived", "keepalived"), ("sysctl", "procps"), ("bash", "bash"),
)
# The load test's fast SRM timers, with a 3 s heartbeat: a dead peer is still seen at
# once (its ports refuse), and an idle lab stays under 5% of one core.
LAB_PARAMS = {**FAST_PARAMS, "heartbeat_interval_s": 3, "heartbeat_timeout_s": 6, "init_heartbeat_timeout_s": 9}
# `lab up` (and any client behind the service address) wants a node to relay a session it
# does not serve, as under `presence-ha up`: a client dials one address, and slixmpp, given
# a host, follows a see-other-host back to that same address. The load test's dual clients
# dial their own node and follow redirects: LAB_PARAMS keeps redirects on for them.
RELAY_PARAMS = {"see_other_host_redirect": "false"}
ETCD_DEADLINE_S = 20.0
DB_DEADLINE_S = 90.0
NODE_DEADLINE_S = 60.0
POWER_OFF_S = 5.0  # SIGKILLed processes are gone within this
SERVICE_DEADLINE_S = 30.0  # HAProxy's checks rise (2 s), keepalived's first master (about 3.5 s)


@dataclass(frozen=True)
class LabNode:
    name: str
    host: Host
    client_port: int
    metrics_port: int


@dataclass
class Lab:
    """Lab `net` with its files in `data_dir`; `procs` are the processes this object started."""

    data_dir: Path
    net: LabNet
    secrets: Secrets
    timers: PatroniTimers = field(default_factory=PatroniTimers)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @classmethod
    def create(cls, data_dir: Path, lab_id: int = 0, timers: PatroniTimers | None = None) -> Lab:
        fresh = Secrets(*(random_secrets.token_urlsafe(12) for _ in range(3)))
        return cls(data_dir.resolve(), LabNet(lab_id), fresh, timers or PatroniTimers())

    @classmethod
    def load(cls, data_dir: Path) -> Lab | None:
        """The lab whose state file is in `data_dir`, or None."""
        try:
            state = json.loads((data_dir / STATE_FILE).read_text())
            return cls(data_dir.resolve(), LabNet(int(state["lab_id"])), Secrets(**state["secrets"]),
                       PatroniTimers(**state["timers"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # --- paths and addresses ----------------------------------------------------------

    def host_dir(self, name: str) -> Path:
        return self.data_dir / name

    def db_dir(self, name: str) -> Path:
        return self.host_dir(name) / "db"

    @property
    def db_url(self) -> str:
        return postgres.app_url(self.net, self.secrets, DB_HOSTS)

    @property
    def db_hosts(self) -> list[Host]:
        return [self.net.host(name) for name in DB_HOSTS]

    # --- bring up -----------------------------------------------------------------------

    def up(self, users: int, base_port: int, domain: str, params: dict | None = None,
           wan: WanModel | None = None, db_primary: str | None = None) -> dict:
        """Build the whole lab (see the module rules); return what cluster.json holds.

        `params`: SRM parameters set on top of `LAB_PARAMS` before the nodes start.
        `wan`: put the delaying proxy between h1 and h2 before anything connects.
        `db_primary`: the host whose PostgreSQL is primary (a switchover before the nodes start).
        """
        check_prerequisites()
        teardown_leftovers(self.data_dir, self.net)
        self._prepare_dirs()
        try:
            netns.create(self.net)
            if wan is not None:
                self.start_wan(wan)
            self._start_etcd()
            for name in DB_HOSTS:
                self._start_patroni(name)
            leader, standby = postgres.wait_replicated(self.db_hosts, DB_DEADLINE_S)
            if db_primary is not None and db_primary != leader:
                postgres.switchover(self.db_hosts, leader, standby, DB_DEADLINE_S)
                leader = standby
            asyncio.run(postgres.create_app_database(self.net.host(leader), self.secrets))
            key = ClusterKey.load_or_create(self.data_dir / KEY_FILE)
            passwords = asyncio.run(provision(self.db_url, domain, self.net, base_port, users, params, key))
            self._copy_key_to_hosts()
            lab_nodes = asyncio.run(self._read_nodes())
            self._start_nodes(lab_nodes)
            self._start_service_address(domain, lab_nodes)
            data = self.cluster_json(domain, lab_nodes, passwords)
        except (ProvisioningError, DatabaseUnavailable, OSError) as exc:
            self.down()
            raise LabError(f"lab up failed: {exc}") from exc
        except BaseException:
            self.down()
            raise
        path = self.data_dir / "cluster.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        path.chmod(0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(data, indent=2) + "\n")
        return data

    def _prepare_dirs(self) -> None:
        passable_dirs(self.data_dir)
        (self.data_dir / FOREGROUND_FILE).unlink(missing_ok=True)  # a killed run's
        for host in self.net.host_names:
            shutil.rmtree(self.host_dir(host), ignore_errors=True)
            self.host_dir(host).mkdir()
            self.host_dir(host).chmod(0o711)
        postgres_user = pwd.getpwnam("postgres")
        for name in DB_HOSTS:
            self.db_dir(name).mkdir(mode=0o700)
            os.chown(self.db_dir(name), postgres_user.pw_uid, postgres_user.pw_gid)
        probe = netns.sh("runuser", "-u", "postgres", "--", "test", "-w", str(self.db_dir("h1")), check=False)
        if probe.returncode != 0:
            raise LabError(f"the postgres user cannot reach {self.data_dir} (a parent directory is not "
                           "searchable by others): choose a data dir under a world-searchable path, e.g. /var/tmp")
        state = {"lab_id": self.net.lab_id, "secrets": asdict(self.secrets), "timers": asdict(self.timers)}
        state_path = self.data_dir / STATE_FILE
        fd = os.open(state_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        state_path.chmod(0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(state, indent=2) + "\n")

    def _copy_key_to_hosts(self) -> None:
        """The cluster key in each node host's directory (what an admin copies to each host)."""
        key = (self.data_dir / KEY_FILE).read_bytes()
        for host in NODE_HOSTS.values():
            fd = os.open(self.host_dir(host) / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(key)

    def _spawn(self, host: Host, argv: list[str], log: Path) -> subprocess.Popen:
        with os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
            proc = subprocess.Popen(netns.ns_argv(host, argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _start_etcd(self) -> None:
        witness = self.net.host("w")
        argv = postgres.etcd_argv(witness, self.host_dir("w") / "etcd", self.timers, self.net.prefix)
        proc = self._spawn(witness, argv, self.host_dir("w") / "etcd.log")
        url = f"http://{witness.address}:{postgres.ETCD_CLIENT_PORT}/health"
        deadline = time.monotonic() + ETCD_DEADLINE_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"etcd exited with {proc.returncode}; see {self.host_dir('w') / 'etcd.log'}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if json.loads(response.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise LabError(f"etcd not healthy after {ETCD_DEADLINE_S:.0f}s; see {self.host_dir('w') / 'etcd.log'}")

    def _start_patroni(self, name: str, fresh: bool = True) -> None:
        host, db_dir = self.net.host(name), self.db_dir(name)
        config = db_dir / "patroni.yml"
        if not fresh:
            self._spawn(host, ["runuser", "-u", "postgres", "--", "patroni", str(config)], db_dir / "patroni.log")
            return
        settings = postgres.patroni_config(self.net, host, db_dir, self.timers, self.secrets)
        config.write_text(json.dumps(settings, indent=2))
        postgres_user = pwd.getpwnam("postgres")
        os.chown(config, postgres_user.pw_uid, postgres_user.pw_gid)
        config.chmod(0o600)
        self._spawn(host, ["runuser", "-u", "postgres", "--", "patroni", str(config)], db_dir / "patroni.log")

    async def _read_nodes(self) -> list[LabNode]:
        async with open_session(self.db_url) as session:
            infos = await nodes.list_nodes(session)
        return [LabNode(i.name, self.net.host(NODE_HOSTS[i.name]), i.ports.client_port, i.ports.metrics_port)
                for i in infos]

    def _start_nodes(self, lab_nodes: list[LabNode]) -> None:
        from presence_ha.server.cli.run import node_command

        started = []
        for node in lab_nodes:
            host_dir = self.host_dir(node.host.name)  # the flag wins over a $PRESENCE_HA_CLUSTER_KEY around
            argv = node_command("-v", "node", "run", "--name", node.name, "--db", self.db_url,
                                "--data-dir", str(host_dir), "--cluster-key", str(host_dir / KEY_FILE))
            for item in NODE_SETS:
                argv += ["--set", item]
            started.append(self._spawn(node.host, argv, self.host_dir(node.host.name) / f"{node.name}.log"))
        deadline = time.monotonic() + NODE_DEADLINE_S
        names = [n.name for n in lab_nodes]
        while set(asyncio.run(ha_states(self.db_url, names)).values()) != {("Normal", "Normal")}:
            if any(p.poll() is not None for p in started) or time.monotonic() > deadline:
                raise LabError(f"nodes {names} did not reach Normal / Normal; see {self.data_dir}/h*/n*.log")
            time.sleep(0.3)

    def _start_service_address(self, domain: str, lab_nodes: list[LabNode]) -> None:
        """HAProxy (both nodes as checked servers) in each node host; once every HAProxy
        sees every node UP, keepalived on h1 and, once h1 holds the VIP, on h2 (so the
        VIP starts on h1: with `nopreempt`, whoever is master first stays master)."""
        from presence_ha.server.cli.haproxy import Backend, ServiceAddress  # server.cli imports us

        backends = [Backend(n.name, n.host.address, n.client_port) for n in lab_nodes]
        proxies = []
        for name in SERVICE_HOSTS:
            host, directory = self.net.host(name), self.host_dir(name)
            vip.allow_nonlocal_bind(host)
            proxy = ServiceAddress(netns.program("haproxy"), directory, domain, self.net.vip, vip.SERVICE_PORT,
                                   backends, also_bind=(host.address,), monitor=vip.monitor_address())
            problem = proxy.check_config()
            if problem is not None:
                raise LabError(f"haproxy refuses {proxy.config_path}: {problem}")
            proxies.append((name, self._spawn(host, proxy.argv(), directory / "haproxy.log"), proxy))
        for name, process, proxy in proxies:
            states = proxy.wait_all_up(SERVICE_DEADLINE_S)
            if process.poll() is not None or not states or not all(s.startswith("UP") for s in states.values()):
                raise LabError(f"HAProxy on {name} sees the nodes as {states or 'unknown'}; "
                               f"see {self.host_dir(name)}/haproxy.log")
        for name, peer in zip(SERVICE_HOSTS, reversed(SERVICE_HOSTS), strict=True):
            host, directory = self.net.host(name), self.host_dir(name)
            vip.write_files(self.net, host, self.net.host(peer), directory)
            self._spawn(host, vip.keepalived_argv(netns.program("keepalived"), directory), directory / "keepalived.log")
            if name == SERVICE_HOSTS[0]:
                vip.wait_holder(self.net, SERVICE_HOSTS, SERVICE_DEADLINE_S)

    def service_holder(self) -> str | None:
        """The node host that holds the service address's VIP now, or None."""
        found = vip.holders(self.net, SERVICE_HOSTS)
        return found[0] if len(found) == 1 else None

    def cluster_json(self, domain: str, lab_nodes: list[LabNode], passwords: dict[str, str]) -> dict:
        """`presence-ha up`'s cluster.json (`service`: the VIP), plus the lab host of each
        node, the cluster CA's certificate and a `lab` section."""
        return {
            "domain": domain,
            "service": {"host": self.net.vip, "port": vip.SERVICE_PORT},
            "ca_cert": str(self.host_dir(SERVICE_HOSTS[0]) / "tls" / "ca.crt"),
            "database_url": self.db_url,
            "cluster_key": str(self.data_dir / KEY_FILE),
            "nodes": [
                {"name": n.name, "host": n.host.address, "client_port": n.client_port, "metrics_port": n.metrics_port,
                 "lab_host": n.host.name, "netns": n.host.netns}
                for n in lab_nodes
            ],
            "users": [{"username": u, "jid": f"{u}@{domain}", "password": p} for u, p in sorted(passwords.items())],
            "lab": {
                "lab_id": self.net.lab_id, "subnet": str(self.net.subnet), "bridge": self.net.bridge,
                "root_address": self.net.root_address,
                "hosts": {h.name: {"address": h.address, "netns": h.netns} for h in self.net.hosts},
                "etcd": f"http://{self.net.host('w').address}:{postgres.ETCD_CLIENT_PORT}",
                "patroni": {n: f"http://{self.net.host(n).address}:{postgres.PATRONI_PORT}" for n in DB_HOSTS},
                "haproxy": {n: f"{self.net.host(n).address}:{vip.SERVICE_PORT}" for n in SERVICE_HOSTS},
            },
        }

    # --- take down ------------------------------------------------------------------------

    def down(self) -> None:
        """Kill every lab process and delete the namespaces and the bridge."""
        netns.destroy(self.net)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def cpu_share(self, seconds: float) -> dict[tuple[str, str], float]:
        """Share of one core used over the next `seconds` by each (host, command) of the lab.

        Processes that end during the window are not counted; on an idle lab none do.
        """
        before = {h.name: netns.cpu_seconds(h) for h in self.net.hosts}
        time.sleep(seconds)
        share = {}
        for host in self.net.hosts:
            for command, used in netns.cpu_seconds(host).items():
                share[(host.name, command)] = max(0.0, used - before[host.name].get(command, 0.0)) / seconds
        return share

    # --- faults ---------------------------------------------------------------------------

    def power_off(self, name: str) -> None:
        """Host `name` loses power: every process in its namespace (node, database, HAProxy,
        keepalived) is stopped, then killed, so none reacts to another's death (keepalived's
        VRRP process, told of its parent's death, would send a priority-0 advert and hand
        the VIP over at once: a clean stop, not a power loss). Once they are gone (their
        sockets closed, as the host's ports now refuse), the VIP goes too, which no
        keepalived removed."""
        host = self.net.host(name)
        pids = netns.pids_in(host)
        netns.kill_pids(pids, signal.SIGSTOP)
        netns.kill_pids(pids, signal.SIGKILL)
        deadline = time.monotonic() + POWER_OFF_S
        while (left := netns.pids_in(host)) and time.monotonic() < deadline:
            netns.kill_pids(left, signal.SIGKILL)  # any forked before the stop reached its parent
            time.sleep(0.02)  # (a zombie has left its namespace: `pids_in` no longer lists it)
        if name in SERVICE_HOSTS:
            vip.drop_vip(self.net, name)

    def db_leader(self) -> str | None:
        return postgres.leader_name(postgres.cluster_view(self.db_hosts))

    def kill_db_primary(self) -> str:
        """SIGKILL Patroni and PostgreSQL on the primary's host (its node lives on); the host's name."""
        leader = self.db_leader()
        if leader is None:
            raise LabError("no database leader to kill")
        uid = pwd.getpwnam("postgres").pw_uid
        netns.kill_pids(netns.pids_in(self.net.host(leader), uid=uid), signal.SIGKILL)
        return leader

    def restart_db(self, name: str) -> None:
        """Start host `name`'s Patroni again after a fault; it rejoins (pg_rewind) as a standby."""
        self._start_patroni(name, fresh=False)

    def move_db_primary(self, to: str) -> None:
        """Make `to` the database primary (a Patroni switchover, when it is not already)."""
        leader, _standby = postgres.wait_replicated(self.db_hosts, DB_DEADLINE_S)  # Patroni's precondition
        if leader != to:
            postgres.switchover(self.db_hosts, leader, to, DB_DEADLINE_S)

    def wait_new_leader(self, old: str, deadline_s: float) -> str:
        return postgres.wait_leader(self.db_hosts, deadline_s, exclude=old)

    def partition(self, a: str = "h1", b: str = "h2") -> None:
        """Cut `a` from `b` both ways; each still reaches the witness."""
        netns.cut(self.net, a, b)

    def isolate(self, name: str) -> None:
        netns.isolate(self.net, name)

    def heal(self) -> None:
        netns.heal(self.net)

    def start_wan(self, model: WanModel) -> None:
        """A WAN between h1 and h2 (`loadtest.lab.wanproxy`): a delaying proxy in each node host
        and the nft rule sending its connections to the other node host through it."""
        for name, peer in (("h1", "h2"), ("h2", "h1")):
            host = self.net.host(name)
            argv = [sys.executable, "-m", "presence_ha.loadtest.lab.wanproxy", "--port", str(WAN_PORT), *model.argv()]
            proc = self._spawn(host, argv, self.host_dir(name) / "wanproxy.log")
            connect = f"import socket;socket.create_connection(('127.0.0.1',{WAN_PORT}),timeout=1)"
            probe = [sys.executable, "-c", connect]
            deadline = time.monotonic() + 15
            while netns.sh(*netns.ns_argv(host, probe), check=False).returncode != 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise LabError(f"the WAN proxy on {name} did not listen; see {self.host_dir(name)}/wanproxy.log")
                time.sleep(0.2)
            netns.apply_rules(host, redirect_rules(self.net.host(peer).address, WAN_PORT))

    # --- the nodes, seen from their hosts ---------------------------------------------------

    def node_pid(self, name: str) -> int | None:
        """PID of node `name`'s `presence-ha node run` process (in its host), or None."""
        for pid in netns.pids_in(self.net.host(NODE_HOSTS[name])):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"run" in argv and b"--name" in argv and argv[argv.index(b"--name") + 1:][:1] == [name.encode()]:
                return pid
        return None

    def presence_ha(self, host: str, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """`presence-ha ARGS --db URL` run inside `host` (where that host's admin RPC listens)."""
        from presence_ha.server.cli.run import node_command

        argv = netns.ns_argv(self.net.host(host), node_command(*args, "--db", self.db_url))
        env = {**os.environ, ENV_CLUSTER_KEY: str(self.host_dir(host) / KEY_FILE)}  # that host's copy
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False, env=env)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(argv, 124, "", f"no answer within {timeout_s:.0f}s: {exc}")

    def live_states(self) -> dict[str, tuple[str, str] | None]:
        """Each node's SRM (state, reason) as it runs (`ha status` in its host); None: no answer."""
        states: dict[str, tuple[str, str] | None] = {}
        for name, host in NODE_HOSTS.items():
            done = self.presence_ha(host, "ha", "status", "--json")
            states[name] = None
            if done.returncode != 0:
                continue
            for group in json.loads(done.stdout)["groups"]:
                for node in group["nodes"]:
                    if node["name"] == name and node["alive"]:
                        states[name] = (node["state"], node["reason"])
        return states


@contextlib.asynccontextmanager
async def open_session(url: str):
    """A session on `url`; the engine is disposed on exit (no `server.cli` import: it imports us)."""
    engine = make_engine(url)
    try:
        async with make_session_factory(engine)() as session:
            yield session
    finally:
        await engine.dispose()


def check_prerequisites() -> None:
    netns.require_root()
    packages = netns.missing_tools(REQUIRED_TOOLS)
    if packages:
        raise LabError(f"missing programs: install them with `apt-get install {' '.join(packages)}`")
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise LabError("no `postgres` OS user: install postgresql-15 (`apt-get install postgresql-15`)") from exc


def teardown_leftovers(data_dir: Path, net: LabNet) -> None:
    """Stop an earlier `lab up` of `data_dir` and remove what any run of `net` left."""
    previous = Lab.load(data_dir)
    if previous is not None:
        stop_foreground(data_dir)
        netns.destroy(previous.net)
    netns.destroy(net)


def record_foreground(data_dir: Path) -> None:
    """Note that this process is a foreground `lab up` of `data_dir` (for `stop_foreground`)."""
    (data_dir / FOREGROUND_FILE).write_text(f"{os.getpid()}\n")


def stop_foreground(data_dir: Path) -> None:
    """SIGTERM the foreground `lab up` that still runs for `data_dir` (it takes its lab down)."""
    try:
        pid = int((data_dir / FOREGROUND_FILE).read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    is_lab_up = any(argv[i:i + 2] == [b"lab", b"up"] for i in range(len(argv)))
    if pid == os.getpid() or not is_lab_up:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)


def passable_dirs(path: Path) -> None:
    """`path` and its missing parents made 0711 (what exists already is left as it is)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        directory.chmod(0o711)


async def provision(url: str, domain: str, net: LabNet, base_port: int, user_count: int,
                    params: dict | None, cluster_key: ClusterKey) -> dict[str, str]:
    """Schema, cluster (sealed with `cluster_key`), n1 on h1 and n2 on h2 in group g1 (HA on),
    fast SRM timers, demo users."""
    await schema.upgrade(url)
    passwords = {f"user{i}": random_secrets.token_urlsafe(9) for i in range(1, user_count + 1)}

    async with open_session(url) as session:
        await create_sealed_cluster(session, "lab", domain, cluster_key)
        for index, (name, host) in enumerate(NODE_HOSTS.items()):
            # Distinct blocks although the hosts differ: the admin RPC listens on each host's
            # loopback, so `ha` commands run inside h1 must not find n1 at n2's port.
            port = base_port + index * nodes.PORT_STRIDE
            await nodes.add_node(session, name, host=net.host(host).address, base_port=port)
        await groups.add_group(session, "g1", list(NODE_HOSTS), description="presence-ha lab")
        for key, value in {**LAB_PARAMS, **(params or {})}.items():
            await parameters.set_parameter(session, key, value)
        await db_users.bulk_import(session, list(passwords.items()))
        await groups.edit_group(session, "g1", ha_enabled=True)
    return passwords
