"""High availability commands: `ha status|failover|fallback|recover|web` and `service` (SPEC §7).

Rules of this module:
- `ha status` reads the database, so it works while nodes are down, then asks each
  node's admin RPC (1 s) for its live state, which wins when it answers (a node that
  lost the database cannot store its state). `--json` prints
  `{"groups": [{"name", "ha", "nodes": [{"name", "state", "reason", "alive"}]}]}`
  with the SPEC §6 words.
- Every other command talks to a node's admin RPC (`server.net.admin_rpc`): the node's
  admin port comes from the database, the token is computed from the cluster secret
  there, opened with the cluster key (`--cluster-key`, `server.cluster_key`). The
  admin RPC listens on loopback by default, so the commands connect to `--admin-host`
  (default 127.0.0.1, or $PRESENCE_HA_ADMIN_HOST); each request names its node, and a
  node refuses a request meant for another one.
- Which SRM receives a request follows the SRM table: only a Normal node accepts
  `AdminRequestedFailover` (it fails itself over) and only an Idle or Failed Over node
  accepts `AdminRequestedFallback` (it takes its users back), so both go to the node
  named. `ha recover GROUP` restarts the SRM of every node of the group, which may
  disconnect their clients: it says so and asks first (`--yes` skips the question; no
  answer, as with no terminal, is a refusal).
- `ha web` prints a link that logs in to a node's admin page. With no node named it
  links to the first node that answers its admin RPC (1 s), never to a dead one; a
  named node that does not answer still gets its link, with a warning.
- A refused or failed request prints one line with the reason and exits non-zero.
- A refusal by the SRM (HTTP 409) is printed as the node words it, in the admin's terms
  ("fallback is not possible while n1 is Normal: ...").
- `ha status --json` and `service list --json` print one object whose keys are in
  their `--help`.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import click

from presence_ha.db import groups, nodes
from presence_ha.server.cli.common import db_key_options
from presence_ha.server.cli.database import echo_json, echo_table, json_help, on_off, open_session, run
from presence_ha.server.cluster_key import ClusterKey, cluster_secret
from presence_ha.server.net.admin_overview import GroupRow, overlay_live, overview_json, read_overview, rpc_probe
from presence_ha.server.net.admin_rpc import AdminRpcError, admin_token, call_node

ENV_ADMIN_HOST = "PRESENCE_HA_ADMIN_HOST"
DEFAULT_ADMIN_HOST = "127.0.0.1"
RPC_TIMEOUT_S = 20.0
REFUSED = 409  # the SRM table refuses the request in the node's state (server.net.admin_rpc)
HA_STATUS_JSON = """{"groups": [{"name", "ha": bool, "nodes": [{"name", "state", "reason", "alive": bool}]}]}
  (state and reason: the SPEC §6 words)"""
SERVICE_JSON = """{"node", "services": [{"name", "display_name", "running": bool, "applicable": bool,
  "monitored": bool, "cause"}]}   (cause: why it is down, "" while running)"""


def admin_host_option(func):
    return click.option(
        "--admin-host", default=lambda: os.environ.get(ENV_ADMIN_HOST, DEFAULT_ADMIN_HOST),
        show_default=DEFAULT_ADMIN_HOST, help=f"Where the node's admin RPC listens (else ${ENV_ADMIN_HOST}).",
    )(func)


async def _targets(db_url: str, key_path: Path, names: list[str]) -> tuple[str, dict[str, int]]:
    """(admin token, {node: admin port}) read from the database."""
    async with open_session(db_url) as session:  # first: a missing database is the first thing to say
        secret = await cluster_secret(session, ClusterKey.load(key_path))
        ports = {name: (await nodes.get_node(session, name)).ports.admin_port for name in names}
    return admin_token(secret), ports


async def _call(db_url: str, key_path: Path, host: str, node: str, payload: dict[str, Any]) -> dict[str, Any]:
    token, ports = await _targets(db_url, key_path, [node])
    return await call_node(host, ports[node], token, {**payload, "node": node}, RPC_TIMEOUT_S)


def call_or_fail(db_url: str, key_path: Path, host: str, node: str, payload: dict[str, Any],
                 what: str) -> dict[str, Any]:
    """One admin RPC call; a refusal or an unreachable node is a one-line error, exit 1."""
    try:
        return run(_call(db_url, key_path, host, node, payload))
    except AdminRpcError as exc:
        if exc.status == REFUSED:  # the node's own words: what is not possible, and why
            raise click.ClickException(str(exc)) from exc
        raise click.ClickException(f"{what} failed: {exc} (is node {node} running?)") from exc


@click.group("ha")
def ha_group() -> None:
    """High availability: status, manual failover/fallback, recovery, web page."""


async def _overview(db_url: str, key_path: Path, host: str, offline: bool) -> list[GroupRow]:
    async with open_session(db_url) as session:
        overview = await read_overview(session)
        if offline:
            return overview
        secret = await cluster_secret(session, ClusterKey.load(key_path))
        ports = {n.name: n.ports.admin_port for n in await nodes.list_nodes(session)}
    return await overlay_live(overview, rpc_probe(host, ports, admin_token(secret)))


@ha_group.command("status", epilog=json_help(HA_STATUS_JSON))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (keys below).")
@click.option("--offline", is_flag=True, help="Database only: do not ask the nodes (alive = recent database liveness).")
@admin_host_option
@db_key_options
def ha_status(db_url: str, key_path: Path, as_json: bool, offline: bool, admin_host: str) -> None:
    """Every group: HA on/off, each node's state and reason.

    The states come from the database, so this works with every node down; a node
    that answers its admin RPC (within 1 s) overrides its stored state with its live
    one (a node that lost the database cannot store it). `alive` says whether it
    answered (with --offline: whether its database liveness is recent); the table shows
    a node that did not as DOWN, with its last stored state in brackets.
    """
    overview = run(_overview(db_url, key_path, admin_host, offline))
    if as_json:
        click.echo(json.dumps(overview_json(overview)))
        return
    # A node that does not answer is shown DOWN, never with its stale state as if it ran;
    # what the database last holds for it follows in brackets.
    rows = [
        (g.name, on_off(g.ha_enabled), n.name, n.state if n.alive else "DOWN",
         n.reason if n.alive else f"(last stored: {n.state} / {n.reason})")
        for g in overview for n in g.nodes
    ]
    echo_table(("GROUP", "HA", "NODE", "STATE", "REASON"), rows)


def _request(op: str, node: str, db_url: str, key_path: Path, admin_host: str) -> None:
    answer = call_or_fail(db_url, key_path, admin_host, node, {"op": op}, f"{op} of {node}")
    click.echo(f"{op} of {node} accepted: {answer.get('message', 'done')}")


@ha_group.command("failover")
@click.argument("node")
@admin_host_option
@db_key_options
def ha_failover(db_url: str, key_path: Path, node: str, admin_host: str) -> None:
    """Manual failover of NODE: its users move to its peer (only from Normal)."""
    _request("failover", node, db_url, key_path, admin_host)


@ha_group.command("fallback")
@click.argument("node")
@admin_host_option
@db_key_options
def ha_fallback(db_url: str, key_path: Path, node: str, admin_host: str) -> None:
    """Manual fallback to NODE: its users come home (only from Idle / Failed Over)."""
    _request("fallback", node, db_url, key_path, admin_host)


async def _members(db_url: str, group_name: str) -> list[str]:
    async with open_session(db_url) as session:
        return list((await groups.get_group(session, group_name)).nodes)


async def _recover(db_url: str, key_path: Path, host: str, members: list[str]) -> dict[str, str]:
    token, ports = await _targets(db_url, key_path, members)

    async def one(node: str) -> str:
        try:
            await call_node(host, ports[node], token, {"op": "recover", "node": node}, RPC_TIMEOUT_S)
            return ""
        except AdminRpcError as exc:
            return str(exc)

    return dict(zip(members, await asyncio.gather(*(one(n) for n in members)), strict=True))


def confirm_or_abort(question: str, yes: bool) -> None:
    """Ask `question` unless `yes`; no answer (no terminal, end of input) is a refusal."""
    if yes:
        return
    try:
        answer = click.confirm(question, default=False)
    except click.Abort:
        click.echo()  # end the prompt's line
        raise click.ClickException("not confirmed (no answer): nothing done; add --yes to skip the question") from None
    if not answer:
        raise click.ClickException("not confirmed: nothing done")


@ha_group.command("recover")
@click.argument("group")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (scripts).")
@admin_host_option
@db_key_options
def ha_recover(db_url: str, key_path: Path, group: str, admin_host: str, yes: bool) -> None:
    """Recovery: restart the SRM on every node of GROUP (SPEC §7).

    Each node goes through Initializing and its clients may be disconnected (they log
    in again), so it asks first; --yes skips the question.
    """
    members = run(_members(db_url, group))
    names = " and ".join(members)
    confirm_or_abort(f"Recovery restarts the SRM of {names} (group {group}); their clients may be "
                     "disconnected and log in again. Go ahead?", yes)
    outcome = run(_recover(db_url, key_path, admin_host, members))
    failed = {node: error for node, error in outcome.items() if error}
    for node in outcome:
        click.echo(f"SRM of {node}: {'restart failed: ' + failed[node] if node in failed else 'restarted'}")
    if failed:
        raise click.ClickException(f"recovery of {group} incomplete: {', '.join(sorted(failed))} not restarted")


async def _web_link(db_url: str, key_path: Path, host: str, node: str | None) -> tuple[str, str]:
    """(the link, a warning or "") of NODE's admin page, or of the first live node."""
    async with open_session(db_url) as session:  # first: a missing database is the first thing to say
        secret = await cluster_secret(session, ClusterKey.load(key_path))
        listed = await nodes.list_nodes(session)
    if not listed:
        raise click.ClickException("no nodes in this database")
    token = admin_token(secret)
    ports = {n.name: n.ports.admin_port for n in listed}
    if node is not None and node not in ports:
        raise click.ClickException(f"node {node!r} does not exist")
    probe = rpc_probe(host, ports, token)
    names = [node] if node else list(ports)
    answers = await asyncio.gather(*(probe(name) for name in names))
    live = [name for name, answer in zip(names, answers, strict=True) if answer is not None]
    if node is None and not live:
        raise click.ClickException(
            f"no node answers its admin RPC on {host} ({', '.join(names)}); start one, or name one: ha web NODE")
    chosen = node or live[0]
    warning = "" if live else f"warning: node {chosen} does not answer its admin RPC at {host}:{ports[chosen]}"
    return f"http://{host}:{ports[chosen]}/?token={token}", warning


@ha_group.command("web")
@click.argument("node", required=False)
@admin_host_option
@db_key_options
def ha_web(db_url: str, key_path: Path, node: str | None, admin_host: str) -> None:
    """Print the link that logs in to the admin web page of NODE (default: the first
    node that answers). Open it in a browser on this machine: the page listens on
    loopback and updates itself every second."""
    link, warning = run(_web_link(db_url, key_path, admin_host, node))
    if warning:
        click.echo(warning, err=True)
    click.echo(link)


@click.group("service")
def service_group() -> None:
    """A node's critical services (SPEC §4): list, stop, start."""


@service_group.command("list", epilog=json_help(SERVICE_JSON))
@click.argument("node")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (keys below).")
@admin_host_option
@db_key_options
def service_list(db_url: str, key_path: Path, node: str, admin_host: str, as_json: bool) -> None:
    """List NODE's critical services and whether each runs."""
    services = call_or_fail(db_url, key_path, admin_host, node, {"op": "service.list"},
                            f"service list on {node}")["services"]
    if as_json:
        echo_json({"node": node, "services": services})
        return
    rows = [
        (s["name"], s["display_name"], "running" if s["running"] else "stopped",
         "yes" if s["applicable"] else "not applicable", "yes" if s["monitored"] else "no")
        for s in services
    ]
    echo_table(("SERVICE", "NAME", "STATUS", "APPLICABLE", "MONITORED"), rows)


@service_group.command("stop")
@click.argument("node")
@click.argument("service")
@admin_host_option
@db_key_options
def service_stop(db_url: str, key_path: Path, node: str, service: str, admin_host: str) -> None:
    """Stop SERVICE on NODE (a critical service down triggers a failover, SPEC §4)."""
    call_or_fail(db_url, key_path, admin_host, node, {"op": "service.stop", "service": service},
                 f"stop {service} on {node}")
    click.echo(f"{service} stopped on {node}")


@service_group.command("start")
@click.argument("node")
@click.argument("service")
@admin_host_option
@db_key_options
def service_start(db_url: str, key_path: Path, node: str, service: str, admin_host: str) -> None:
    """Start SERVICE on NODE."""
    call_or_fail(db_url, key_path, admin_host, node, {"op": "service.start", "service": service},
                 f"start {service} on {node}")
    click.echo(f"{service} started on {node}")
