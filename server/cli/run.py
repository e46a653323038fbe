"""Run nodes: `node run`, `node metrics`, and `up` (a local cluster in one command).

Rules of this module:
- `node run` and `node metrics` attach to the provisioning `node` group
  (`server.cli.provision.node_group`); `up` is a top-level command (in SUBCOMMANDS).
- `node run` builds the config with `server.config.load_config` (TOML file < env <
  flags < `--set`), checks the schema is at head, and runs `server.node.run_node`
  until SIGTERM/SIGINT. It prints `node NAME ready` once it accepts clients.
- `up` provisions an empty database (embedded SQLite by default) with `--nodes N`
  nodes in groups of two (HA on for each pair; an odd last node is a group of one),
  users Balanced over them, and N demo users, each the contact of the others of its
  circle of ten (subscription both: presence shows at once), with demo re-login limits
  (`DEMO_RELOGIN_S`, said on the terminal; the SPEC §5 defaults stay for clusters
  provisioned by hand); a client may dial any node (its session is relayed to the
  user's node, `server.cluster`). It starts each node as a real `presence-ha node run`
  subprocess and prints its banner only once every node said `node NAME ready` (all
  its ports listen) and the service address is HAProxy's own. A node (or HAProxy) that
  exits before that stops `up` within `START_DEADLINE_S`, non-zero, with the node's
  own error. Then it writes `DIR/cluster.json` and supervises them: a node that dies
  is reported and started again after `--restart-delay` (systemd's
  `Restart=on-failure`), the others keep serving. Ctrl-C stops the nodes with SIGTERM
  (then SIGKILL).
- Secrets at rest: `up` keeps its data directory 0700 and its files 0600 (the SQLite
  file and its -wal/-shm, node logs, cluster.json with the demo passwords, TLS keys):
  files made before are tightened too. The cluster secret and CA key are sealed with
  `DIR/cluster.key` (`--cluster-key`; made on first use), which the nodes are given.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click

from presence_ha.db import clusters, groups, nodes, parameters, roster, schema, users
from presence_ha.db.engine import make_sqlite_private, sqlite_url_for
from presence_ha.server import cluster_key
from presence_ha.server.cli.common import db_options
from presence_ha.server.cli.database import open_session, run
from presence_ha.server.cli.haproxy import Backend, ServiceAddress, haproxy_binary
from presence_ha.server.cli.provision import node_group
from presence_ha.server.config import DIRECT_TLS_OFFSET, ConfigError, LimitsConfig, QuotasConfig, load_config
from presence_ha.server.net.limits import AuthThrottle
from presence_ha.server.node import NodeStartError, run_node

START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 15.0
RESTART_DELAY_S = 5.0  # `up` starts a dead node again after this (systemd's RestartSec)
STABLE_S = 30.0  # a node that dies sooner after its start waits twice as long next time...
MAX_RESTART_DELAY_S = 60.0  # ...up to this
SERVICE_PORT = 5222  # the cluster's service address (HAProxy); the nodes listen from --base-port
SERVICE = "haproxy"  # its name among the supervised processes
DEMO_RELOGIN_S = (5, 15)  # `up`'s clients come back within seconds (SPEC §5 default: 120-537 s)
DEMO_CIRCLE = 10  # demo users are contacts of the others of their circle (user1-10, user11-20, ...)


def node_command(*args: str) -> list[str]:
    """The argv that runs `presence-ha ARGS...` with this interpreter."""
    script = Path(sys.executable).with_name("presence-ha")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from presence_ha.server.cli import main; main()", *args]


_L, _Q = LimitsConfig(), QuotasConfig()
LIMITS_EPILOG = f"""\b
Client-port limits (the `limits` section; --set limits.KEY=VALUE):
  Login throttle, per account and per source address, applied BEFORE the
  password is checked: the n-th attempt of an account or address (failures of
  the last auth_throttle_window_s={_L.auth_throttle_window_s:g} s plus attempts in flight) waits
  auth_throttle_base_s={_L.auth_throttle_base_s:g} x 2^(n-2) s after the previous one, at most
  auth_throttle_max_s={_L.auth_throttle_max_s:g} s; an attempt that would wait longer is refused
  unchecked (temporary-auth-failure). A success waits like a failure and
  clears the account's failures. An address with no recent failure, and an
  account's first {AuthThrottle.FREE_PARALLEL} attempts in flight, are not slowed. auth_throttle_base_s=0
  turns the throttle off. {_L.max_auth_failures} failures end a stream (max_auth_failures).
  Per address: max_connections_per_address={_L.max_connections_per_address} (over it: policy-violation),
  max_unauthenticated_per_address={_L.max_unauthenticated_per_address} (over it: resource-constraint), both
  refused at once. The login gate (logins_in_progress_min, login_budget_s) is
  fair: when full, an address holding less than the heaviest one still gets in
  and the heaviest gives back its oldest negotiating connection.

\b
Per-account quotas (the `quotas` section; --set quotas.KEY=VALUE):
  roster_max_items={_Q.roster_max_items} (a new item beyond: not-allowed),
  roster_item_max_bytes={_Q.roster_item_max_bytes} (name + groups beyond: not-acceptable),
  max_pending_subscriptions={_Q.max_pending_subscriptions} (unanswered requests; beyond: resource-constraint),
  offline_max_messages={_Q.offline_max_messages} and offline_max_bytes={_Q.offline_max_bytes} (beyond:
  service-unavailable), max_sessions_per_user={_Q.max_sessions_per_user} (resources of one account on
  this node; one more bind: resource-constraint).

\b
TLS (the `tls` section): --set tls.direct_port=PORT also listens for XEP-0368
  direct TLS (ALPN xmpp-client, no STARTTLS) on PORT (off by default; `up` uses
  the client port + 5). SCRAM-*-PLUS (tls-exporter on TLS 1.3, tls-unique on
  TLS 1.2) is offered on every TLS connection.
"""


@node_group.command("run", epilog=LIMITS_EPILOG)
@click.option("--name", "node_name", help="Node name (else $PRESENCE_HA_NODE or the config file).")
@click.option("--db", "db_url", metavar="URL", help="Database URL (else $PRESENCE_HA_DB, config, --data-dir).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data directory (SQLite file, TLS files).")
@click.option("--cluster-key", "cluster_key_file", type=click.Path(dir_okay=False), metavar="PATH",
              help=f"The cluster key (else ${cluster_key.ENV_CLUSTER_KEY}, else DATA_DIR/{cluster_key.KEY_FILE}).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True), help="TOML config file.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. limits.auth_timeout_s=5.")
def node_run(node_name: str | None, db_url: str | None, data_dir: str | None, cluster_key_file: str | None,
             config_file: str | None, sets: tuple[str, ...]) -> None:
    """Run node NAME: serve XMPP clients until SIGTERM/SIGINT, then shut down gracefully.

    The node opens the cluster secret and CA key in the database with the cluster key
    file, which must be the one the cluster was created with (`cluster init`, `up`)."""
    flags = {"node_name": node_name, "db_url": db_url, "data_dir": data_dir, "cluster_key": cluster_key_file}
    try:
        config = load_config(config_file, os.environ, flags, sets)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    current = run(schema.current_revision(config.db_url))
    if current != schema.head_revision():
        raise click.ClickException(f"database schema is at {current or 'nothing'}: run `presence-ha db upgrade` first")
    try:
        run(run_node(config), event_loop=config.event_loop)
    except NodeStartError as exc:
        raise click.ClickException(str(exc)) from exc


@node_group.command("metrics")
@click.argument("name")
@db_options
def node_metrics(db_url: str, name: str) -> None:
    """Print node NAME's Prometheus metrics (from its metrics port)."""

    async def go() -> nodes.NodeInfo:
        async with open_session(db_url) as session:
            return await nodes.get_node(session, name)

    info = run(go())
    url = f"http://{info.host}:{info.ports.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            click.echo(response.read().decode("utf-8"), nl=False)
    except OSError as exc:
        raise click.ClickException(f"node {name} metrics unreachable at {url}: {exc}") from exc


async def provision_demo(db_url: str, domain: str, base_port: int, node_names: list[str],
                         user_count: int, key_path: Path, contacts: bool = True) -> tuple[dict[str, str], list[str]]:
    """Create the schema, cluster, nodes, groups of two (HA on for pairs) and demo users:
    (their passwords, []). An existing cluster is left as it is, but what an older version
    stored in clear is sealed: ({}, what was sealed)."""
    await schema.upgrade(db_url)
    make_sqlite_private(db_url)
    async with open_session(db_url) as session:
        if await clusters.find_cluster(session) is not None:
            return {}, await cluster_key.seal_with(session, key_path)
        await cluster_key.create_cluster(session, "demo", domain, cluster_key.ClusterKey.load_or_create(key_path))
        for index, name in enumerate(node_names):
            await nodes.add_node(session, name, base_port=base_port + index * nodes.PORT_STRIDE)
        for number, members in enumerate(pairs(node_names), start=1):
            await groups.add_group(session, f"group{number}", members, description="presence-ha up")
            if len(members) == 2:
                await groups.edit_group(session, f"group{number}", ha_enabled=True)
        passwords = {f"user{i}": secrets.token_urlsafe(9) for i in range(1, user_count + 1)}
        await users.bulk_import(session, list(passwords.items()))
        names = list(passwords)
        circles = [names[i : i + DEMO_CIRCLE] for i in range(0, len(names), DEMO_CIRCLE)] if contacts else []
        for start in range(0, len(circles), 100):  # bounded IN lists
            await roster.befriend(session, domain, circles[start : start + 100])
        await parameters.set_parameter(session, "relogin_lower_s", str(DEMO_RELOGIN_S[0]))  # lower first:
        await parameters.set_parameter(session, "relogin_upper_s", str(DEMO_RELOGIN_S[1]))  # lower <= upper
    return passwords, []


def pairs(names: list[str]) -> list[list[str]]:
    """`[a, b, c, d, e]` -> `[[a, b], [c, d], [e]]`: the redundancy groups of `up`."""
    return [names[i : i + 2] for i in range(0, len(names), 2)]


async def cluster_layout(db_url: str) -> tuple[str, list[nodes.NodeInfo], tuple[int, int]]:
    """The domain, the nodes and the cluster's re-login limits (lower, upper seconds)."""
    async with open_session(db_url) as session:
        params = await parameters.effective_parameters(session)
        relogin = (int(params["relogin_lower_s"]), int(params["relogin_upper_s"]))
        return (await clusters.get_cluster(session)).domain, await nodes.list_nodes(session), relogin


def wait_for_port(host: str, port: int, process: subprocess.Popen, deadline: float) -> None:
    """Poll until `host:port` accepts a TCP connection; fail if the process exits first."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"the process exited with {process.returncode} before accepting connections")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise click.ClickException(f"nothing listens on {host}:{port} after {START_DEADLINE_S}s")


def stop_processes(processes: list[subprocess.Popen]) -> None:
    """SIGTERM every node (graceful shutdown), SIGKILL what is left after the deadline."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_DEADLINE_S
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@click.command("up")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="Where the database, TLS files and logs go.")
@click.option("--db", "db_url", metavar="URL", help="Use this database instead of DIR's SQLite file.")
@click.option("--cluster-key", "cluster_key_file", type=click.Path(dir_okay=False), metavar="PATH",
              help=f"The cluster key (else ${cluster_key.ENV_CLUSTER_KEY}, else DIR/{cluster_key.KEY_FILE}; "
              "made if missing).")
@click.option("--base-port", type=int, default=nodes.DEFAULT_BASE_PORT, show_default=True,
              help="First node's client port.")
@click.option("--users", "user_count", type=click.IntRange(0, 100_000), default=10, show_default=True)
@click.option("--domain", default="localhost", show_default=True, help="XMPP domain of the cluster.")
@click.option("--nodes", "node_count", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Number of nodes, in groups of two.")
@click.option("--restart-delay", "restart_delay_s", type=click.FloatRange(0.1, 3600), default=RESTART_DELAY_S,
              show_default=True, help="Seconds before a node that died is started again (the others keep serving).")
@click.option("--restart-max-delay", "restart_max_delay_s", type=click.FloatRange(0.1, 3600),
              default=MAX_RESTART_DELAY_S, show_default=True,
              help=f"A node that dies within {STABLE_S:g}s of its start waits twice as long as last time, up to "
                   "this (systemd's RestartMaxDelaySec); set it to --restart-delay for a constant delay.")
@click.option("--service-port", type=click.IntRange(0, 65535), default=SERVICE_PORT, show_default=True,
              help="The cluster's one client address (HAProxy in front of the nodes); 0: none.")
@click.option("--service-host", default="127.0.0.1", show_default=True, help="Where the service address listens.")
@click.option("--demo-contacts/--no-demo-contacts", default=True, show_default=True,
              help=f"Make each demo user a contact (subscription both) of the others of its circle of {DEMO_CIRCLE} "
                   "when provisioning; --no-demo-contacts: empty rosters.")
def up_command(data_dir: str, db_url: str | None, cluster_key_file: str | None, base_port: int, user_count: int,
               domain: str, node_count: int, restart_delay_s: float, restart_max_delay_s: float, service_port: int,
               service_host: str, demo_contacts: bool) -> None:
    """Provision (if empty) and run a local cluster of N nodes in pairs, until Ctrl-C.

    A node that dies is reported and started again after --restart-delay; meanwhile its
    peer serves its users (failover), and it comes back Failed Over until an admin's
    `ha fallback` (SPEC §6 rows 17-18). Ctrl-C stops every node."""
    directory = private_directory(Path(data_dir).resolve())
    url = db_url or sqlite_url_for(directory)
    key = cluster_key.key_path(cluster_key_file, directory).resolve()
    names = [f"node{i}" for i in range(1, node_count + 1)]
    passwords, sealed = run(provision_demo(url, domain, base_port, names, user_count, key, demo_contacts))
    if sealed:
        click.echo(f"{' and '.join(sealed)} (stored in clear by an older version) sealed with the cluster key {key}",
                   err=True)
    domain, infos, relogin = run(cluster_layout(url))
    old = _read_previous_users(directory / "cluster.json")
    passwords = passwords or old
    for sig in (signal.SIGINT, signal.SIGTERM):  # `kill` stops the nodes as Ctrl-C does, and Ctrl-C
        signal.signal(sig, _interrupt)  # works even where a shell started `up` with SIGINT ignored
    proxy = _service_address(directory, domain, service_host, service_port, infos)
    argv = {info.name: _node_argv(directory, url, key, info) for info in infos}
    supervisor = Supervisor(argv | ({SERVICE: proxy.argv()} if proxy else {}), directory, restart_delay_s,
                            max(restart_delay_s, restart_max_delay_s))
    try:
        click.echo(f"starting {len(infos)} node(s) (logs: {directory}/NODE.log)...")
        supervisor.start_all(infos)
        if proxy is not None:
            supervisor.start_service(proxy)
            states = proxy.wait_all_up(START_DEADLINE_S)  # the service address leads somewhere
            if supervisor.processes[SERVICE].poll() is not None:
                raise supervisor.start_error(SERVICE, "exited")
            if not all(s.startswith("UP") for s in states.values()):
                click.echo(f"warning: the service address sees the nodes as {states or 'unknown'}", err=True)
        service = (proxy.host, proxy.port) if proxy is not None else None
        _write_cluster_json(directory / "cluster.json", domain, url, infos, passwords, service, key)
        _print_welcome(domain, infos, passwords, directory, service, demo_contacts)
        _say_relogin(relogin)
        supervisor.watch()
        click.echo("every node exited cleanly; stopping", err=True)
    except KeyboardInterrupt:
        click.echo("\nstopping nodes...")
    except click.ClickException:
        click.echo("a process could not start: stopping the others", err=True)
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not orphan a node
            signal.signal(sig, signal.SIG_IGN)
        supervisor.stop_all()


def _say_relogin(relogin: tuple[int, int]) -> None:
    if relogin == DEMO_RELOGIN_S:
        click.echo(f"re-login limits: {relogin[0]}-{relogin[1]} s (demo values set by `up`; a real cluster keeps the "
                   "SPEC defaults 120-537 s: `presence-ha param reset relogin_lower_s`, then relogin_upper_s)")
    else:
        click.echo(f"re-login limits: {relogin[0]}-{relogin[1]} s (`presence-ha param show` lists them)")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _node_argv(directory: Path, url: str, key: Path, info: nodes.NodeInfo) -> list[str]:
    """A node of `up`, with XEP-0368 direct TLS on its block's free port (client + 5)."""
    return node_command("-v", "node", "run", "--name", info.name, "--db", url, "--data-dir", str(directory),
                        "--cluster-key", str(key), "--set", f"tls.direct_port={direct_tls_port(info)}")


def direct_tls_port(info: nodes.NodeInfo) -> int:
    return info.ports.client_port + DIRECT_TLS_OFFSET


def private_directory(directory: Path) -> Path:
    """`up`'s data directory, made (or kept) 0700 with its log files 0600. An existing
    directory is changed only if this user owns it and it is not a shared sticky one
    (/tmp): there it is used as it is."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid == os.geteuid() and not info.st_mode & 0o1000 and info.st_mode & 0o077:
        directory.chmod(0o700)
        click.echo(f"{directory} made private (0700): it holds the database, keys and demo passwords", err=True)
    for path in directory.glob("*.log"):
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    return directory


class Supervisor:
    """`up`'s nodes, kept running as systemd's `Restart=on-failure` would keep them.

    A node that dies (a signal, or a non-zero exit) is reported and started again after
    `restart_delay_s`; the others keep serving meanwhile. A node that dies again within
    `STABLE_S` of its start waits twice as long before the next start (at most
    `MAX_RESTART_DELAY_S`), so a node that cannot start does not spin. A node that
    exits cleanly (status 0: someone stopped it on purpose) is not started again.
    """

    def __init__(self, argv: dict[str, list[str]], directory: Path, restart_delay_s: float,
                 max_delay_s: float = MAX_RESTART_DELAY_S) -> None:
        self.argv, self.directory, self.restart_delay_s = argv, directory, restart_delay_s
        self.max_delay_s = max_delay_s
        self.processes: dict[str, subprocess.Popen] = {}
        self.started_at: dict[str, float] = {}
        self.delay: dict[str, float] = dict.fromkeys(argv, restart_delay_s)
        self.restart_at: dict[str, float] = {}  # dead nodes and when they start again
        self.log_offset: dict[str, int] = {}  # where each process's output of this start begins

    def log_path(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def spawn(self, name: str) -> subprocess.Popen:
        fd = os.open(self.log_path(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as log:  # the child keeps its own descriptor
            self.log_offset[name] = log.tell()
            process = subprocess.Popen(self.argv[name], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name], self.started_at[name] = process, time.monotonic()
        return process

    def output(self, name: str) -> str:
        """What `name` wrote since its last start."""
        with open(self.log_path(name), "rb") as log:
            log.seek(self.log_offset.get(name, 0))
            return log.read().decode("utf-8", errors="replace")

    def start_error(self, name: str, what: str) -> click.ClickException:
        """`name` could not start: its own error (click's `Error: ...` line of `node run`),
        else its last lines, and where its whole log is."""
        lines = [line.strip() for line in self.output(name).splitlines() if line.strip()]
        errors = [line.removeprefix("Error: ") for line in lines if line.startswith(("Error:", "[ALERT]"))]
        cause = " / ".join(errors[-2:] or lines[-3:]) or "no output"
        return click.ClickException(f"{_title(name)} {what}: {cause} (log: {self.log_path(name)})")

    def start_all(self, infos: list[nodes.NodeInfo]) -> None:
        """Start every node, and return once each said `node NAME ready` (every port of
        it listens); a node that exits first, or is not ready in time, is an error."""
        for info in infos:
            self.spawn(info.name)
        waiting = {info.name for info in infos}
        deadline = time.monotonic() + START_DEADLINE_S
        while waiting:
            for name in sorted(waiting):
                code = self.processes[name].poll()
                if code is not None:
                    raise self.start_error(name, f"could not start ({_exit_text(code)})")
                if f"node {name} ready" in self.output(name):
                    waiting.discard(name)
            if waiting and time.monotonic() > deadline:
                raise self.start_error(sorted(waiting)[0], f"is not ready after {START_DEADLINE_S:g}s")
            time.sleep(0.1)

    def start_service(self, proxy: ServiceAddress) -> None:
        """Start HAProxy on the service address, once it is free, and wait until it is
        HAProxy that answers there (its stats socket, and its process still alive)."""
        try:
            with socket.create_server((proxy.host, proxy.port)):
                pass
        except OSError as exc:
            raise click.ClickException(
                f"the service address {proxy.host}:{proxy.port} is taken ({exc.strerror or exc}): stop what "
                "listens there, or give --service-port another port (0: no service address)") from exc
        process = self.spawn(SERVICE)
        try:
            wait_for_port(proxy.host, proxy.port, process, time.monotonic() + START_DEADLINE_S)
        except click.ClickException as exc:
            raise self.start_error(SERVICE, f"on {proxy.host}:{proxy.port}: {exc.message}") from exc

    def watch(self, poll_s: float = 0.5) -> None:
        """Until every node has exited cleanly (or KeyboardInterrupt): restart the dead."""
        while self.processes or self.restart_at:
            self.check(time.monotonic())
            time.sleep(poll_s)

    def check(self, now: float) -> None:
        for name, process in list(self.processes.items()):
            code = process.poll()
            if code is None:
                continue
            del self.processes[name]
            if code == 0:
                click.echo(f"{_title(name)} exited cleanly; not restarting it", err=True)
                continue
            quick = now - self.started_at[name] < STABLE_S
            self.delay[name] = min(self.max_delay_s, self.delay[name] * 2) if quick else self.restart_delay_s
            self.restart_at[name] = now + self.delay[name]
            click.echo(f"{_title(name)} died ({_exit_text(code)}); the others keep serving; restarting it in "
                       f"{self.delay[name]:g}s (log: {self.directory / (name + '.log')})", err=True)
        for name, when in list(self.restart_at.items()):
            if now >= when:
                del self.restart_at[name]
                self.spawn(name)
                hint = "" if name == SERVICE else (f"; it comes back Failed Over if its peer took over: "
                                                   f"`presence-ha ha fallback {name}` hands its users back")
                click.echo(f"{_title(name)} restarted (pid {self.processes[name].pid}){hint}", err=True)

    def stop_all(self) -> None:
        self.restart_at.clear()
        stop_processes(list(self.processes.values()))


def _title(name: str) -> str:
    return name if name == SERVICE else f"node {name}"


def _service_address(directory: Path, domain: str, host: str, port: int,
                     infos: list[nodes.NodeInfo]) -> ServiceAddress | None:
    """HAProxy in front of the nodes, or None (`--service-port 0`, or no haproxy here)."""
    if port == 0:
        return None
    binary = haproxy_binary()
    if binary is None:
        click.echo("haproxy is not installed (Debian: apt-get install haproxy): no service address; "
                   "clients dial a node directly", err=True)
        return None
    backends = [Backend(i.name, i.host, i.ports.client_port) for i in infos]
    proxy = ServiceAddress(binary, directory, domain, host, port, backends)
    problem = proxy.check_config()
    if problem is not None:
        raise click.ClickException(f"haproxy refuses {proxy.config_path}: {problem}")
    return proxy


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _read_previous_users(path: Path) -> dict[str, str]:
    try:
        return {u["username"]: u["password"] for u in json.loads(path.read_text())["users"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_cluster_json(path: Path, domain: str, url: str, infos: list[nodes.NodeInfo], passwords: dict[str, str],
                        service: tuple[str, int] | None = None, key: Path | None = None) -> None:
    data = {
        "domain": domain,
        "service": {"host": service[0], "port": service[1]} if service else None,
        "database_url": url,
        "cluster_key": str(key) if key else None,
        "nodes": [
            {"name": n.name, "host": n.host, "client_port": n.ports.client_port, "metrics_port": n.ports.metrics_port,
             "direct_tls_port": direct_tls_port(n)}
            for n in infos
        ],
        "users": [{"username": u, "jid": f"{u}@{domain}", "password": p} for u, p in sorted(passwords.items())],
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    path.chmod(0o600)  # written before with another mode
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(data, indent=2) + "\n")


def _print_welcome(domain: str, infos: list[nodes.NodeInfo], passwords: dict[str, str], directory: Path,
                   service: tuple[str, int] | None, contacts: bool = True) -> None:
    if service is not None:
        click.echo(f"service address: {service[0]}:{service[1]} (HAProxy; dial this one: it leads to a live node)")
    for info in infos:
        click.echo(f"node {info.name}: client {info.host}:{info.ports.client_port} "
                   f"(direct TLS {direct_tls_port(info)}), metrics http://{info.host}:{info.ports.metrics_port}/metrics")
    for username, password in sorted(passwords.items())[:5]:
        click.echo(f"  {username}@{domain}  password {password}")
    if len(passwords) > 5:
        click.echo(f"  ... {len(passwords) - 5} more in {directory / 'cluster.json'}")
    if passwords and contacts:
        click.echo(f"  (each demo user has the others of its circle of {DEMO_CIRCLE} as contacts, subscription both)")
    first = service or (infos[0].host, infos[0].ports.client_port)
    click.echo(
        f"Connect any XMPP client to {first[0]}:{first[1]} (STARTTLS; every node's certificate is signed by the "
        f"cluster CA {directory / 'tls' / 'ca.crt'}: trust it once); any node serves any user (relayed to its node). "
        "Ctrl-C stops the cluster."
    )
    click.echo(f"Admin web page (live states, failover, recovery): `presence-ha ha web --data-dir {directory}` "
               "prints a link that logs you in.")
