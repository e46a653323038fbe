"""`presence-ha lab up|down|status`: the lab of separate hosts (see `loadtest.lab.lab`).

Rules of this module:
- Thin commands over `Lab`: every failure is a `LabError` printed as one line with a
  non-zero exit; a partly built lab is taken down before the error is printed.
- `up` stays in the foreground until Ctrl-C or SIGTERM and then takes the lab down;
  with `--detach` it returns once the lab serves, and `down` takes it down later.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import click

from presence_ha.db import nodes
from presence_ha.loadtest.lab import netns, postgres, vip
from presence_ha.loadtest.lab.lab import RELAY_PARAMS, Lab, LabError, record_foreground, teardown_leftovers
from presence_ha.loadtest.lab.netns import LabNet

data_dir_option = click.option(
    "--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="The lab's directory: cluster.json, lab.json, one folder per host (must be searchable by the postgres user).",
)


@click.group("lab")
def lab_group() -> None:
    """A lab of separate hosts on this machine (root; Linux network namespaces).

    Hosts h1 and h2 each run a node and a PostgreSQL 15 (Patroni, synchronous streaming
    replication), and HAProxy with keepalived: the service address 198.18.ID.100:5222 is
    a virtual IP that moves to the other host when its holder dies. The witness w runs
    etcd, Patroni's quorum. Addresses are from 198.18.0.0/15; this machine reaches the
    hosts over the bridge. Needs the Debian packages iproute2, nftables, etcd-server,
    patroni, postgresql-15, haproxy and keepalived.
    """


@lab_group.command("up")
@data_dir_option
@click.option("--users", "user_count", type=click.IntRange(0, 100_000), default=10, show_default=True,
              help="Demo users user1..userN (passwords in cluster.json).")
@click.option("--base-port", type=int, default=nodes.DEFAULT_BASE_PORT, show_default=True,
              help=f"n1's client port (then srm, admin, link, metrics); n2's block starts {nodes.PORT_STRIDE} higher.")
@click.option("--domain", default="localhost", show_default=True, help="XMPP domain of the cluster.")
@click.option("--lab-id", type=click.IntRange(0, 255), default=0, show_default=True,
              help="Lab number: subnet 198.18.ID.0/24, namespaces phalabID-h1, -h2, -w.")
@click.option("--detach", is_flag=True, help="Return once the lab serves (take it down with `lab down`).")
def lab_up(data_dir: Path, user_count: int, base_port: int, domain: str, lab_id: int, detach: bool) -> None:
    """Bring the lab up (after removing any earlier one), write DIR/cluster.json, run until Ctrl-C."""
    lab = Lab.create(data_dir, lab_id)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        data = lab.up(user_count, base_port, domain, params=RELAY_PARAMS)
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_summary(lab, data, time.monotonic() - started)
    if detach:
        return
    record_foreground(lab.data_dir)
    click.echo("Ctrl-C takes the lab down.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("\ntaking the lab down...")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        lab.down()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _print_summary(lab: Lab, data: dict, seconds: float) -> None:
    leader = lab.db_leader()
    service = data["service"]
    click.echo(f"service address: {service['host']}:{service['port']} (keepalived VIP, now on "
               f"{lab.service_holder() or '?'}; HAProxy on h1 and h2 leads to a live node)")
    click.echo(f"lab {lab.net.lab_id} up in {seconds:.0f}s on {lab.net.subnet} (this machine: {lab.net.root_address})")
    for host in lab.net.hosts:
        role = {"w": "etcd (witness)"}.get(host.name, "PostgreSQL " + ("primary" if host.name == leader else "standby"))
        served = [n["name"] for n in data["nodes"] if n["lab_host"] == host.name]
        click.echo(f"  {host.name} {host.address} (netns {host.netns}): {role}"
                   + "".join(f", node {n}" for n in served))
    for node in data["nodes"]:
        click.echo(f"node {node['name']}: client {node['host']}:{node['client_port']}")
    click.echo(f"cluster CA (trust it in clients): {data['ca_cert']}")
    click.echo(f"database: {lab.db_url}")
    for user in data["users"][:3]:
        click.echo(f"  {user['jid']}  password {user['password']}")
    click.echo(f"everything in {lab.data_dir / 'cluster.json'}; "
               f"a shell on a host: ip netns exec {lab.net.host('h1').netns} bash")


@lab_group.command("down")
@data_dir_option
@click.option("--lab-id", type=click.IntRange(0, 255), default=None,
              help="Also remove lab ID's leftovers (default: the lab recorded in DIR).")
def lab_down(data_dir: Path, lab_id: int | None) -> None:
    """Stop every lab process and remove its namespaces and bridge (the files stay in DIR)."""
    try:
        netns.require_root()
        recorded = Lab.load(data_dir)
        net = LabNet(lab_id if lab_id is not None else recorded.net.lab_id if recorded else 0)
        teardown_leftovers(data_dir, net)
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    left = netns.exists(net)
    if left:
        raise click.ClickException(f"could not remove: {', '.join(left)}")
    click.echo(f"lab {net.lab_id} is down")


@lab_group.command("status")
@data_dir_option
@click.option("--cpu", "cpu_seconds", type=click.FloatRange(1, 600), default=None, metavar="SECONDS",
              help="Also measure each process's share of one core over SECONDS (e.g. 60 on an idle lab).")
def lab_status(data_dir: Path, cpu_seconds: float | None) -> None:
    """Patroni's members (role, state, lag), how many processes each host runs, optionally CPU use."""
    lab = Lab.load(data_dir)
    if lab is None:
        raise click.ClickException(f"no lab recorded in {data_dir}")
    for member in postgres.cluster_view(lab.db_hosts) or [{"name": "-", "role": "no Patroni answers"}]:
        click.echo(f"{member.get('name')}: {member.get('role')} {member.get('state', '')} lag {member.get('lag', '-')}")
    holder = lab.service_holder()
    click.echo(f"service address {lab.net.vip}:{vip.SERVICE_PORT}: "
               + (f"held by {holder}" if holder else "held by no single host"))
    for host in lab.net.hosts:
        click.echo(f"{host.name} ({host.netns}): {len(netns.pids_in(host))} processes")
    if cpu_seconds:
        share = lab.cpu_share(cpu_seconds)
        for (host_name, command), used in sorted(share.items(), key=lambda kv: -kv[1]):
            click.echo(f"  {host_name} {command}: {100 * used:.2f}% of one core")
        click.echo(f"lab total: {100 * sum(share.values()):.2f}% of one core over {cpu_seconds:.0f}s")
