"""The lab's replicated availability database: PostgreSQL 15 under Patroni, etcd as quorum.

Rules of this module:
- The witness host runs one etcd member (the quorum store of Patroni); each database
  host runs one Patroni, which runs (initdb, basebackup, promotes, demotes) its own
  PostgreSQL 15. Patroni and PostgreSQL run as the `postgres` OS user (initdb refuses
  root), etcd as root; all inside their host's namespace (`netns.ns_argv`).
- Replication is synchronous (`synchronous_mode`): a commit returns once the standby
  has it, and Patroni only ever promotes the synchronous standby, so a promotion
  loses no committed write. Not `synchronous_mode_strict`: with two database hosts,
  strict mode would stop all writes whenever either host is down (a host power-off
  would take the pair down with it); non-strict, Patroni drops the dead standby from
  `synchronous_standby_names` within one loop and the survivor carries on alone.
- Timers (`PatroniTimers`) are chosen for a quick promotion and a quiet idle lab:
  `loop_wait + 2 * retry_timeout <= ttl` (Patroni's rule). etcd's heartbeat sets its
  minimum lease TTL (1.5 election timeouts), which must stay below Patroni's ttl.
- Config files are JSON (a subset of YAML, which Patroni reads), built by pure
  functions (`etcd_argv`, `patroni_config`) that the unit tests check.
- The readiness and role checks read Patroni's REST API (`/cluster`) from the root
  namespace over the bridge.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from presence_ha.loadtest.lab.netns import Host, LabError, LabNet

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PORT = 5432
PATRONI_PORT = 8008
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
SCOPE = "presence-ha-lab"
APP_DATABASE = "presence"
APP_ROLE = "presence"
LEADER_ROLES = frozenset({"leader", "master", "primary"})


@dataclass(frozen=True)
class PatroniTimers:
    """Patroni's DCS timers (seconds) and etcd's raft timers (milliseconds)."""

    ttl_s: int = 8
    loop_wait_s: int = 3
    retry_timeout_s: int = 2
    etcd_heartbeat_ms: int = 500
    etcd_election_ms: int = 2500

    def __post_init__(self) -> None:
        if self.loop_wait_s + 2 * self.retry_timeout_s > self.ttl_s:
            raise LabError("Patroni needs loop_wait + 2 * retry_timeout <= ttl")
        if 1.5 * self.etcd_election_ms / 1000 >= self.ttl_s:
            raise LabError("etcd's minimum lease (1.5 election timeouts) must stay below Patroni's ttl")


@dataclass(frozen=True)
class Secrets:
    """Passwords of the database roles (kept in the lab's state file, mode 0600)."""

    superuser: str
    replication: str
    app: str


def etcd_argv(witness: Host, data_dir: Path, timers: PatroniTimers, token: str) -> list[str]:
    """The etcd command line of the single witness member."""
    client = f"http://{witness.address}:{ETCD_CLIENT_PORT}"
    peer = f"http://{witness.address}:{ETCD_PEER_PORT}"
    return [
        "etcd", "--name", witness.name, "--data-dir", str(data_dir),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{witness.name}={peer}", "--initial-cluster-state", "new",
        "--initial-cluster-token", token,
        "--heartbeat-interval", str(timers.etcd_heartbeat_ms), "--election-timeout", str(timers.etcd_election_ms),
        "--snapshot-count", "10000", "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "10m",
        "--logger", "zap", "--log-level", "warn",
    ]


def _dcs_parameters() -> dict[str, object]:
    # Small and quiet. fsync off: a lab "power off" is SIGKILL, which leaves the kernel's
    # page cache (and so every written block) intact; synchronous replication still
    # waits for the standby, so a committed write is on both hosts.
    return {
        "max_connections": 100, "shared_buffers": "32MB", "wal_level": "replica", "hot_standby": "on",
        "max_wal_senders": 5, "max_replication_slots": 5, "wal_keep_size": "128MB", "wal_log_hints": "on",
        "synchronous_commit": "on", "fsync": "off", "wal_receiver_status_interval": "10s",
        # A standby cut off silently (a partition) holds every commit until its walsender
        # gives up and Patroni drops it from synchronous_standby_names: 5 s, not 60.
        "wal_sender_timeout": "5s", "wal_receiver_timeout": "5s",
        "password_encryption": "scram-sha-256",
    }


def patroni_config(net: LabNet, host: Host, db_dir: Path, timers: PatroniTimers, secrets: Secrets) -> dict:
    """Patroni's configuration for database host `host` (written as JSON)."""
    witness = net.host("w")
    subnet = str(net.subnet)
    return {
        "scope": SCOPE, "name": host.name,
        "log": {"level": "INFO", "format": "%(asctime)s %(levelname)s: %(message)s"},
        "restapi": {"listen": f"{host.address}:{PATRONI_PORT}", "connect_address": f"{host.address}:{PATRONI_PORT}"},
        "etcd3": {"hosts": [f"{witness.address}:{ETCD_CLIENT_PORT}"], "protocol": "http"},
        "bootstrap": {
            "dcs": {
                "ttl": timers.ttl_s, "loop_wait": timers.loop_wait_s, "retry_timeout": timers.retry_timeout_s,
                "maximum_lag_on_failover": 1048576,
                "synchronous_mode": True, "synchronous_mode_strict": False,
                "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": _dcs_parameters()},
            },
            "initdb": ["data-checksums", {"encoding": "UTF8"}, {"locale": "C"}],
        },
        "postgresql": {
            "listen": f"{host.address}:{PG_PORT}", "connect_address": f"{host.address}:{PG_PORT}",
            "data_dir": str(db_dir / "data"), "bin_dir": str(PG_BIN), "pgpass": str(db_dir / "pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": secrets.superuser},
                "replication": {"username": "replicator", "password": secrets.replication},
            },
            "parameters": {"unix_socket_directories": ""},  # TCP only: the hosts share one /run
            "pg_hba": [
                f"host replication replicator {subnet} scram-sha-256",
                f"host all all {subnet} scram-sha-256",
            ],
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }


def app_url(net: LabNet, secrets: Secrets, hosts: tuple[str, ...] = ("h1", "h2")) -> str:
    """The nodes' multi-host URL: asyncpg tries each host and keeps the read-write one."""
    query = "&".join(f"host={net.host(h).address}:{PG_PORT}" for h in hosts)
    return f"postgresql://{APP_ROLE}:{secrets.app}@/{APP_DATABASE}?{query}&target_session_attrs=read-write"


def superuser_dsn(host: Host, secrets: Secrets, database: str = "postgres") -> str:
    return f"postgresql://postgres:{secrets.superuser}@{host.address}:{PG_PORT}/{database}"


# --- Patroni's view, read over its REST API ---------------------------------------------

def cluster_view(hosts: list[Host], timeout_s: float = 1.0) -> list[dict]:
    """The members list of `/cluster` from the first Patroni that answers ([] if none)."""
    for host in hosts:
        url = f"http://{host.address}:{PATRONI_PORT}/cluster"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return list(json.loads(response.read()).get("members", []))
        except (OSError, ValueError, urllib.error.URLError):
            continue
    return []


def leader_name(members: list[dict]) -> str | None:
    """The running leader's member name, or None."""
    for member in members:
        if member.get("role") in LEADER_ROLES and member.get("state") == "running":
            return str(member["name"])
    return None


def sync_standby_name(members: list[dict]) -> str | None:
    for member in members:
        if member.get("role") == "sync_standby" and member.get("state") in ("running", "streaming"):
            return str(member["name"])
    return None


def wait_replicated(hosts: list[Host], deadline_s: float, exclude_leader: str | None = None) -> tuple[str, str]:
    """Poll until a leader (not `exclude_leader`) and a synchronous standby run; (leader, standby)."""
    deadline = time.monotonic() + deadline_s
    members: list[dict] = []
    while time.monotonic() < deadline:
        members = cluster_view(hosts)
        leader, standby = leader_name(members), sync_standby_name(members)
        if leader and standby and leader != exclude_leader:
            return leader, standby
        time.sleep(0.25)
    raise LabError(f"no leader with a synchronous standby after {deadline_s:.0f}s; Patroni says: {members}")


def wait_leader(hosts: list[Host], deadline_s: float, exclude: str | None = None) -> str:
    """Poll until a leader other than `exclude` runs; its name."""
    deadline = time.monotonic() + deadline_s
    members: list[dict] = []
    while time.monotonic() < deadline:
        members = cluster_view(hosts, timeout_s=0.5)
        leader = leader_name(members)
        if leader and leader != exclude:
            return leader
        time.sleep(0.1)
    raise LabError(f"no new leader after {deadline_s:.0f}s; Patroni says: {members}")


async def wait_writable(url: str, deadline_s: float) -> str:
    """Poll until a fresh connection of multi-host `url` reaches a writable primary; its address."""
    import asyncpg

    from presence_ha.db.engine import make_engine

    deadline = time.monotonic() + deadline_s
    while True:
        engine = make_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                result = await conn.exec_driver_sql("SELECT host(inet_server_addr()), pg_is_in_recovery()")
                address, in_recovery = tuple(result.one())
            if not in_recovery:
                return str(address)
        except (OSError, asyncpg.PostgresError, SQLAlchemyError):
            pass
        finally:
            await engine.dispose()
        if time.monotonic() > deadline:
            raise LabError(f"no writable primary behind {url} after {deadline_s:.0f}s")
        await asyncio.sleep(0.1)


async def create_app_database(primary: Host, secrets: Secrets) -> None:
    """The nodes' role and database on the primary (replicated to the standby)."""
    import asyncpg

    conn = await asyncpg.connect(superuser_dsn(primary, secrets), timeout=10)
    try:
        # Applied on the standby before we go on: a multi-host connection that tries the
        # standby first must find the database there (asyncpg stops at "no such database").
        await conn.execute("SET synchronous_commit = remote_apply")
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_ROLE)
        if not exists:
            password = secrets.app.replace("'", "''")
            await conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{password}'")
            # pg_stat_replication shows a standby's state only to superusers and pg_monitor:
            # `group edit --ha on` and `dbreplication` read it through the nodes' role.
            await conn.execute(f"GRANT pg_monitor TO {APP_ROLE}")
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", APP_DATABASE):
            await conn.execute(f"CREATE DATABASE {APP_DATABASE} OWNER {APP_ROLE}")
    finally:
        await conn.close()


def switchover(hosts: list[Host], leader: str, candidate: str, deadline_s: float) -> None:
    """Patroni's planned switchover from `leader` to `candidate` (REST `POST /switchover`);
    returns once `candidate` leads with a synchronous standby again."""
    body = json.dumps({"leader": leader, "candidate": candidate}).encode()
    host = next(h for h in hosts if h.name == leader)
    request = urllib.request.Request(f"http://{host.address}:{PATRONI_PORT}/switchover", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except (OSError, urllib.error.URLError) as exc:
        raise LabError(f"Patroni refused the switchover {leader} -> {candidate}: {exc}") from exc
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        members = cluster_view(hosts)
        if leader_name(members) == candidate and sync_standby_name(members) == leader:
            return
        time.sleep(0.25)
    raise LabError(f"switchover to {candidate} not done after {deadline_s:.0f}s; Patroni says: {cluster_view(hosts)}")
