"""Provisioning commands: `db`, `cluster`, `node` and `group` (SPEC §1, §3, §5).

Rules of this module:
- Commands are thin: parse options, call one `db/` function, print the result. Every
  rule lives in `db/` and comes back as a `ProvisioningError`, printed as one line
  with a non-zero exit (see `server.cli.database.run`).
- Adding a group re-runs the Sync Agent (users rebalanced over the new nodes,
  SPEC §2) unless a node is failed over; then it says so and leaves users alone.
- `group edit --ha on` stores the switch after checking the pair and the database
  replication; whether the critical services run is checked at runtime by the SRM.
- Secrets (`server.cluster_key`): `cluster init` seals the new cluster's secret and CA
  key with the cluster key, creating the key file (0600) unless one is there;
  `db upgrade` seals what an older version stored in clear (creating the key file if
  needed) and makes an SQLite file 0600; `cluster rotate-secret` replaces the secret,
  then waits until each node it can reach answers the new admin token.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import click

from presence_ha.db import assignments, clusters, groups, nodes, parameters, schema, srm_state
from presence_ha.db.engine import make_sqlite_private
from presence_ha.db.errors import FailoverInProgress
from presence_ha.server import cluster_key
from presence_ha.server.cli.common import db_key_options, db_options
from presence_ha.server.cli.database import echo_json, echo_table, json_help, json_option, on_off, open_session, run
from presence_ha.server.cluster_key import ClusterKey
from presence_ha.server.net.admin_rpc import AdminRpcError, admin_token, call_node

ENV_ADMIN_HOST = "PRESENCE_HA_ADMIN_HOST"  # as `ha` (server.cli.ha)
ROTATE_WAIT_S = 10.0  # nodes read the stored secret every 2 s (server.node.SECRET_REFRESH_S)

PORT_OPTIONS = (
    ("--client-port", "client_port", "XMPP client-to-server port"),
    ("--srm-port", "srm_port", "SRM peer-to-peer (heartbeat) port"),
    ("--admin-port", "admin_port", "admin RPC port"),
    ("--link-port", "link_port", "node-to-node routing link port"),
    ("--metrics-port", "metrics_port", "Prometheus metrics port"),
)


@click.group("db")
def db_group() -> None:
    """Create or upgrade the availability database schema."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target Alembic revision.")
@db_key_options
def db_upgrade(db_url: str, key_path: Path, revision: str) -> None:
    """Bring the database to the latest schema (safe to run from two nodes at once).

    A cluster secret or CA key an older version stored in clear is sealed with the
    cluster key (the key file is created, 0600, if there is none); an SQLite file and
    its -wal/-shm are made 0600."""
    reached = run(schema.upgrade(db_url, revision))
    for path in make_sqlite_private(db_url):
        click.echo(f"{path} made private (0600)")
    click.echo(f"database schema at revision {reached}")
    if reached == schema.head_revision():
        sealed, key = run(_seal_stored(db_url, key_path))
        if sealed:
            click.echo(f"{' and '.join(sealed)} sealed with the cluster key {key}: copy it (0600) to every "
                       "node's host; the database alone no longer reveals them")


async def _seal_stored(db_url: str, key_path: Path) -> tuple[list[str], Path]:
    """What an older version stored in clear, sealed (the key needed only then)."""
    async with open_session(db_url) as session:
        if await clusters.find_cluster(session) is None or not await cluster_key.has_clear_values(session):
            return [], key_path
        return await cluster_key.seal_with(session, key_path), key_path


@db_group.command("revision", epilog=json_help('{"current": REVISION or null, "head": REVISION, "at_head": bool}'))
@json_option
@db_options
def db_revision(db_url: str, as_json: bool) -> None:
    """Show the database's schema revision and the head revision of this software."""
    current = run(schema.current_revision(db_url))
    if as_json:
        echo_json({"current": current, "head": schema.head_revision(), "at_head": current == schema.head_revision()})
        return
    click.echo(f"current: {current or 'none (empty database)'}\nhead:    {schema.head_revision()}")


@click.group("cluster")
def cluster_group() -> None:
    """Create and show the cluster (one per database)."""


@cluster_group.command("init")
@click.option("--name", required=True, help="Cluster name, 1-128 of A-Z a-z 0-9 _ . -")
@click.option("--domain", required=True, help="XMPP domain served by every node (e.g. example.com).")
@db_key_options
def cluster_init(db_url: str, key_path: Path, name: str, domain: str) -> None:
    """Create the cluster with a fresh random shared secret and CA; refuses if one exists.

    The secret and the CA's private key are stored sealed with the cluster key, a file
    (mode 0600) created unless one is there: every node and every admin command needs
    it, so copy it to each node's host (see --cluster-key)."""

    async def go() -> tuple[clusters.ClusterInfo, ClusterKey]:
        async with open_session(db_url) as session:
            await clusters.refuse_second_cluster(session)  # before a key file is made for nothing
            key = ClusterKey.load_or_create(key_path)
            return await cluster_key.create_cluster(session, name, domain, key), key

    info, key = run(go())
    click.echo(f"cluster {info.name!r} created for domain {info.domain}, with its own CA "
               "(`presence-ha cluster ca` prints the certificate clients should trust)")
    click.echo(f"its secret and CA key are sealed with the cluster key {key.path} (mode 0600): every node "
               "and admin command needs that file; copy it to each node's host")


@cluster_group.command("rotate-secret")
@click.option("--admin-host", default=lambda: os.environ.get(ENV_ADMIN_HOST, "127.0.0.1"), show_default="127.0.0.1",
              help=f"Where the nodes' admin RPC listens, to confirm they switched (else ${ENV_ADMIN_HOST}).")
@click.option("--wait", "wait_s", type=click.FloatRange(0, 600), default=ROTATE_WAIT_S, show_default=True,
              help="Seconds to wait for each reachable node to answer the new admin token.")
@db_key_options
def cluster_rotate_secret(db_url: str, key_path: Path, admin_host: str, wait_s: float) -> None:
    """Replace the cluster secret: a new admin token and new node-link credentials.

    Running nodes read the new secret from the database within 2 s: from then on they
    refuse the old admin token and authenticate new node links with the new secret,
    while links up and connected clients stay as they are (no restart). A node that is
    down takes it up at its next start. Then this command checks each node it can
    reach at --admin-host (a node on another host switches by itself)."""
    infos, secret = run(_rotate(db_url, key_path))
    click.echo(f"cluster secret rotated (sealed with {key_path}); the old admin token is no longer valid")
    outcome = run(_confirm(admin_host, infos, admin_token(secret), wait_s))
    for name, note in outcome.items():
        click.echo(f"node {name}: {note}")


async def _rotate(db_url: str, key_path: Path) -> tuple[list[nodes.NodeInfo], str]:
    async with open_session(db_url) as session:
        key = ClusterKey.load(key_path)
        await cluster_key.rotate_secret(session, key)
        return await nodes.list_nodes(session), await cluster_key.cluster_secret(session, key)


async def _confirm(host: str, infos: list[nodes.NodeInfo], token: str, wait_s: float) -> dict[str, str]:
    """{node: whether it answers the new token}, polling each until `wait_s` is over."""

    async def one(info: nodes.NodeInfo) -> str:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                await call_node(host, info.ports.admin_port, token, {"op": "status", "node": info.name}, 2.0)
                return "uses the new secret"
            except AdminRpcError as exc:
                if exc.status is None:  # nobody answers there
                    return (f"not reachable at {host}:{info.ports.admin_port} (down, or on another host): it "
                            "takes the new secret up by itself within 2 s, or at its next start")
                if exc.status != 401:  # past authentication: the token is accepted
                    return f"uses the new secret (and answered: {exc})"
                if time.monotonic() > deadline:
                    return f"still refuses the new admin token after {wait_s:g}s ({exc}): is its cluster key right?"
            await asyncio.sleep(0.2)

    return dict(zip([i.name for i in infos], await asyncio.gather(*(one(i) for i in infos)), strict=True))


@cluster_group.command("ca")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), help="Write it to this file instead.")
@db_key_options
def cluster_ca(db_url: str, key_path: Path, out: str | None) -> None:
    """Print the cluster CA's certificate (PEM): trust it in clients, and every node is trusted.

    Nodes configured with `tls.cert_path`/`tls.key_path` (an ACME or enterprise
    certificate) present that instead, and clients need no extra trust."""

    async def go() -> str:
        async with open_session(db_url) as session:
            # the key is needed only to make a CA (`cluster init` made one): not to print it
            cert, _sealed_key = await clusters.cluster_ca(
                session, lambda domain: cluster_key.sealed_ca(domain, ClusterKey.load(key_path)))
            return cert

    pem = run(go())
    if out is None:
        click.echo(pem, nl=False)
    else:
        Path(out).write_text(pem)
        Path(out).chmod(0o644)  # a certificate, meant to be handed out
        click.echo(f"cluster CA certificate written to {out}")


CLUSTER_JSON = """{"name", "domain", "user_assignment_mode", "groups": COUNT, "assigned_users": COUNT,
 "nodes": [{"name", "group", "position", "users"}]}"""


@cluster_group.command("show", epilog=json_help(CLUSTER_JSON))
@json_option
@db_options
def cluster_show(db_url: str, as_json: bool) -> None:
    """Show the cluster, its groups and nodes and the user count per node."""

    async def go() -> None:
        async with open_session(db_url) as session:
            info = await clusters.get_cluster(session)
            mode = await parameters.assignment_mode(session)
            loads = await assignments.node_loads(session)
            all_nodes = await nodes.list_nodes(session)
            all_groups = await groups.list_groups(session)
        if as_json:
            echo_json({
                "name": info.name, "domain": info.domain, "user_assignment_mode": mode.value,
                "groups": len(all_groups), "assigned_users": sum(loads.values()),
                "nodes": [{"name": n.name, "group": n.group, "position": n.group_position,
                           "users": loads.get(n.name, 0)} for n in all_nodes],
            })
            return
        click.echo(f"cluster: {info.name}\ndomain:  {info.domain}\nuser assignment mode: {mode.value}")
        click.echo(f"groups: {len(all_groups)}  nodes: {len(all_nodes)}  assigned users: {sum(loads.values())}")
        echo_table(
            ("node", "group", "position", "users"),
            [(n.name, n.group, n.group_position, loads.get(n.name, 0)) for n in all_nodes],
        )

    run(go())


@click.group("node")
def node_group() -> None:
    """Register and list nodes (node processes and their addresses)."""


def _port_options(func):
    for flag, dest, text in reversed(PORT_OPTIONS):
        func = click.option(flag, dest, type=int, help=f"{text} (default: from the base port).")(func)
    return func


@node_group.command("add")
@click.argument("name")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the node listens on.")
@click.option(
    "--base-port", type=int,
    help="Port scheme: client=B, srm=B+1, admin=B+2, link=B+3, metrics=B+4 "
    f"(default: first free block from {nodes.DEFAULT_BASE_PORT} in steps of {nodes.PORT_STRIDE}).",
)
@_port_options
@click.option("--version", "software_version", help="Software version (default: the installed one).")
@db_options
def node_add(db_url: str, name: str, host: str, base_port: int | None, software_version: str | None, **ports) -> None:
    """Register node NAME; its five ports must be distinct from other nodes on HOST."""
    given = {key: value for key, value in ports.items() if value is not None}

    async def go() -> nodes.NodeInfo:
        async with open_session(db_url) as session:
            return await nodes.add_node(
                session, name, host=host, base_port=base_port, ports=given, software_version=software_version
            )

    info = run(go())
    p = info.ports
    click.echo(
        f"node {info.name!r} added on {info.host}: client {p.client_port}, srm {p.srm_port}, "
        f"admin {p.admin_port}, link {p.link_port}, metrics {p.metrics_port}, version {info.software_version}"
    )


NODE_JSON = """{"nodes": [{"name", "group", "position", "host", "version",
  "ports": {"client", "srm", "admin", "link", "metrics"},
  "state", "reason"}]}   (state and reason: the stored SPEC §6 words, null if never started)"""


def _node_json(n: nodes.NodeInfo, state: srm_state.HaState | None) -> dict[str, object]:
    p = n.ports
    return {
        "name": n.name, "group": n.group, "position": n.group_position, "host": n.host,
        "version": n.software_version,
        "ports": {"client": p.client_port, "srm": p.srm_port, "admin": p.admin_port, "link": p.link_port,
                  "metrics": p.metrics_port},
        "state": state.state if state else None, "reason": state.reason if state else None,
    }


@node_group.command("list", epilog=json_help(NODE_JSON))
@json_option
@db_options
def node_list(db_url: str, as_json: bool) -> None:
    """List nodes with group, addresses, version and stored HA state."""

    async def go() -> list[tuple[nodes.NodeInfo, srm_state.HaState | None]]:
        async with open_session(db_url) as session:
            return [(n, await srm_state.read_state(session, n.name)) for n in await nodes.list_nodes(session)]

    listed = run(go())
    if as_json:
        echo_json({"nodes": [_node_json(n, state) for n, state in listed]})
        return
    rows = [
        (n.name, n.group, n.group_position, n.host, n.ports.client_port, n.ports.srm_port, n.ports.admin_port,
         n.ports.link_port, n.ports.metrics_port, n.software_version,
         f"{state.state} / {state.reason}" if state else "never started")
        for n, state in listed
    ]
    echo_table(("node", "group", "pos", "host", "client", "srm", "admin", "link", "metrics", "version",
                "HA state"), rows)


@click.group("group")
def group_group() -> None:
    """Presence redundancy groups: one node or a pair (SPEC §3)."""


async def _rebalance_after_change(session) -> str:
    try:
        moved = await assignments.rebalance(session)
    except FailoverInProgress as exc:
        return f"users not rebalanced: {exc}"
    return f"users rebalanced: {moved} moved"


@group_group.command("add")
@click.argument("name")
@click.option("--description", default="", help='At most 128 characters, none of " % & \\ < >.')
@click.option("--node", "node_names", multiple=True, required=True,
              help="A member node; give one or two (first = primary).")
@db_options
def group_add(db_url: str, name: str, description: str, node_names: tuple[str, ...]) -> None:
    """Create group NAME of one node or a pair, with HA off; rebalance users."""

    async def go() -> tuple[groups.GroupInfo, str]:
        async with open_session(db_url) as session:
            info = await groups.add_group(session, name, node_names, description=description)
            return info, await _rebalance_after_change(session)

    info, note = run(go())
    click.echo(f"group {info.name!r} created with {', '.join(info.nodes)} (HA off); {note}")


@group_group.command("edit")
@click.argument("name")
@click.option("--description", help='New description (at most 128 characters, none of " % & \\ < >).')
@click.option(
    "--ha", type=click.Choice(["on", "off"]),
    help="High availability. 'on' needs a pair and no broken database replication (dbreplication); "
    "the SRM then checks the critical services at runtime (SPEC §3).",
)
@db_options
def group_edit(db_url: str, name: str, description: str | None, ha: str | None) -> None:
    """Change group NAME's description or HA switch."""
    if description is None and ha is None:
        raise click.UsageError("nothing to change: give --description and/or --ha")

    async def go() -> groups.GroupInfo:
        async with open_session(db_url) as session:
            return await groups.edit_group(
                session, name, description=description, ha_enabled=None if ha is None else ha == "on"
            )

    info = run(go())
    click.echo(f"group {info.name!r}: HA {on_off(info.ha_enabled)}, description {info.description!r}")


@group_group.command("list", epilog=json_help('{"groups": [{"name", "nodes": [NODE, ...], "ha": bool, "epoch", '
                                              '"description"}]}   (nodes: primary first)'))
@json_option
@db_options
def group_list(db_url: str, as_json: bool) -> None:
    """List groups with their nodes, HA switch and fencing epoch."""

    async def go() -> list[groups.GroupInfo]:
        async with open_session(db_url) as session:
            return await groups.list_groups(session)

    listed = run(go())
    if as_json:
        echo_json({"groups": [{"name": g.name, "nodes": list(g.nodes), "ha": g.ha_enabled, "epoch": g.epoch,
                               "description": g.description} for g in listed]})
        return
    rows = [(g.name, " ".join(g.nodes), on_off(g.ha_enabled), g.epoch, g.description) for g in listed]
    echo_table(("group", "nodes", "HA", "epoch", "description"), rows)
