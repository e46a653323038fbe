"""What the admin page and `ha status` show of a cluster: groups, nodes, buttons (SPEC §7).

Rules of this module:
- `read_overview` reads the database, so it works while a node is down: each node's
  stored (state, reason), its database liveness, its admin port, and the users
  assigned to it and served by it. `overlay_live` then asks each node's admin RPC
  (`status`) and a node that answers wins: its live state, its timers, its critical
  services and its SPEC §8 session counters. A node that does not answer is
  unreachable: the page shows it as down, never with its stale state.
- Which buttons a node gets is decided by the SRM table itself (`table_allows`): the
  stored states become a read-only `MachineView` and the first row whose guard
  passes must not refuse. Recovery is offered for a group in a failed state
  (Running in Failed Mode, Unknown). An unreachable node gets no buttons.
- Every disruptive button carries the sentence the page asks the admin to confirm
  (`Button.confirm`): failover, fallback, recovery and stopping a critical service.
- Countdowns: the seconds left on the SRM's timers that end in a move (Critical
  Service Delay, the initial and the running heartbeat timeouts, automatic fallback).
  The heartbeat timeout restarts with every heartbeat, so it is shown only once two
  heartbeats were missed.
- Everything here is pure but `read_overview` and the probe; `page_json` is what the
  page polls.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db import groups, nodes, parameters, srm_state, users
from presence_ha.server.net.admin_rpc import AdminRpcError, call_node
from presence_ha.server.services import StopCause
from presence_ha.server.srm.events import AdminRequestedFailover, AdminRequestedFallback, Event
from presence_ha.server.srm.table import NodeState, Reason, Step, rows_for

FAILED_STATES = frozenset({NodeState.RUNNING_IN_FAILED_MODE, NodeState.UNKNOWN})
NODE_ACTIONS: tuple[tuple[str, Event], ...] = (
    ("failover", AdminRequestedFailover()),
    ("fallback", AdminRequestedFallback()),
)
# A node row without a stored state: the model's defaults (its SRM never started).
NEVER_STARTED = ("Initializing", "Initialization")
PROBE_TIMEOUT_S = 1.0  # a stopped (SIGSTOP) or hung node must not stall the status
EVENTS_SHOWN = 30
# What the end of the Critical Service Delay does, by the node's state (SPEC §6 rows 12, 15, 23).
CRITICAL_SERVICE_OUTCOME = {
    NodeState.NORMAL.value: "critical service down: automatic failover",
    NodeState.RUNNING_IN_BACKUP_MODE.value: "critical service down on the backup: Failed Mode or auto recovery",
}
HELD_BY_ADMIN_OR_FAULT = (StopCause.ADMIN.value, StopCause.FAILED.value)


@dataclass(frozen=True)
class NodeRow:
    name: str
    state: str
    reason: str
    alive: bool
    since: dt.datetime | None = None
    alive_at: dt.datetime | None = None  # its last database liveness
    admin_port: int = 0
    users_assigned: int = 0
    users_served: int = 0
    live: dict[str, Any] | None = None  # its admin RPC's `status` answer (None: none)


@dataclass(frozen=True)
class GroupRow:
    name: str
    ha_enabled: bool
    nodes: tuple[NodeRow, ...]

    def peer_of(self, node: str) -> NodeRow | None:
        return next((n for n in self.nodes if n.name != node), None)


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def is_alive(alive_at: dt.datetime | None, timeout_s: float, now: dt.datetime) -> bool:
    """The node renewed its database liveness within `timeout_s` of `now`."""
    return alive_at is not None and (now - _aware(alive_at)).total_seconds() <= timeout_s


async def read_overview(session: AsyncSession, now: dt.datetime | None = None) -> list[GroupRow]:
    """Every group with its nodes' stored (state, reason), liveness, port and users."""
    now = now or srm_state.utcnow()
    params = await parameters.effective_parameters(session)
    timeout_s = float(params["heartbeat_timeout_s"])
    ports = {n.name: n.ports.admin_port for n in await nodes.list_nodes(session)}
    counts = await users.node_user_counts(session)
    result = []
    for group in await groups.list_groups(session):
        rows = []
        for name in group.nodes:
            stored = await srm_state.read_state(session, name)
            state, reason = (stored.state, stored.reason) if stored and stored.state else NEVER_STARTED
            alive_at = stored.alive_at if stored else None
            assigned, served = counts.get(name, (0, 0))
            rows.append(NodeRow(name, state, reason, is_alive(alive_at, timeout_s, now),
                                stored.since if stored else None, alive_at, ports.get(name, 0), assigned, served))
        result.append(GroupRow(group.name, group.ha_enabled, tuple(rows)))
    return result


Probe = Callable[[str], Awaitable[dict[str, Any] | None]]


async def overlay_live(overview: list[GroupRow], probe: Probe) -> list[GroupRow]:
    """The overview with each reachable node's live status from its admin RPC.

    A node that cannot write its state (it lost the database, SPEC §6 rows 13, 22)
    still answers here; one that does not answer is unreachable.
    """
    names = [node.name for group in overview for node in group.nodes]
    answers = dict(zip(names, await asyncio.gather(*(probe(name) for name in names)), strict=True))

    def merged(node: NodeRow) -> NodeRow:
        live = answers[node.name]
        if live is None:
            return replace(node, alive=False, live=None)
        status = live["status"]
        state, reason = str(status["state"]), str(status["reason"])
        since = node.since if (node.state, node.reason) == (state, reason) else None  # stored: not yet
        return replace(node, state=state, reason=reason, since=since, alive=True, live=live)

    return [replace(group, nodes=tuple(merged(n) for n in group.nodes)) for group in overview]


def rpc_probe(host: str, ports: dict[str, int], token: str, timeout_s: float = PROBE_TIMEOUT_S) -> Probe:
    """A `Probe` asking each node's admin RPC for its status (None: no answer)."""

    async def probe(name: str) -> dict[str, Any] | None:
        try:
            return await call_node(host, ports[name], token, {"op": "status", "node": name}, timeout_s)
        except AdminRpcError:
            return None

    return probe


def overview_json(overview: list[GroupRow]) -> dict[str, Any]:
    """`ha status --json`: the exact keys of the brief, plus `alive` per node."""
    return {"groups": [
        {"name": g.name, "ha": g.ha_enabled,
         "nodes": [{"name": n.name, "state": n.state, "reason": n.reason, "alive": n.alive} for n in g.nodes]}
        for g in overview
    ]}


# --- buttons ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredView:
    """A read-only `MachineView` built from stored states (for the table's guards)."""

    node: str
    peer: str | None
    ha_enabled: bool
    state: NodeState
    reason: Reason
    peer_state: NodeState | None
    move_in_flight: bool = False
    move_retried: bool = False


def table_allows(view: StoredView, request: Event) -> bool:
    """Whether the SRM table would carry `request` out in `view` (machine.allows' rule)."""
    for row in rows_for(view.state, view.peer_state, request):
        if row.guard is None or row.guard(view, request):
            return Step.REFUSE not in row.steps
    return False


def node_buttons(group: GroupRow, node: NodeRow) -> tuple[str, ...]:
    """The admin actions the page offers for `node` in its current state."""
    if not node.alive:
        return ()
    peer = group.peer_of(node.name)
    peer_state = NodeState(peer.state) if peer is not None and peer.alive else None
    view = StoredView(node.name, peer.name if peer else None, group.ha_enabled,
                      NodeState(node.state), Reason(node.reason), peer_state)
    return tuple(op for op, request in NODE_ACTIONS if table_allows(view, request))


def group_buttons(group: GroupRow) -> tuple[str, ...]:
    """Recovery (SPEC §7) for a group with a node in a failed state."""
    failed = any(NodeState(n.state) in FAILED_STATES for n in group.nodes if n.alive)
    return ("recover",) if failed else ()


@dataclass(frozen=True)
class Button:
    """One action of the page: `op` on `node`/`group`/`service`; `confirm` is the
    sentence the admin must confirm first ("" for a harmless action)."""

    op: str
    label: str
    confirm: str = ""
    node: str | None = None
    group: str | None = None
    service: str | None = None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def node_action(group: GroupRow, node: NodeRow, op: str) -> Button:
    peer = group.peer_of(node.name)
    other = peer.name if peer else "its peer"
    if op == "failover":
        served = _plural(node.users_served, "user")
        return Button(op, f"Fail over {node.name}", (
            f"Fail over {node.name}? Its critical services stop and the {served} it serves move to {other}: "
            "their clients carry on over their backup connection or log in again there."), node=node.name)
    return Button(op, f"Fall back to {node.name}", (
        f"Fall back to {node.name}? Its {_plural(node.users_assigned, 'user')} leave {other} and log in "
        f"again on {node.name}."), node=node.name)


def recover_action(group: GroupRow) -> Button:
    names = " and ".join(n.name for n in group.nodes)
    return Button("recover", f"Recover group {group.name}", (
        f"Recover group {group.name}? The SRM of {names} restarts: each node goes through Initializing, "
        "and their clients may be disconnected and log in again."), group=group.name)


def service_actions(node: NodeRow, delay_s: float) -> list[Button]:
    """Stop for each running critical service of a reachable node, start for each one
    that the admin stopped or that failed (not those the SRM holds down: Idle)."""
    buttons = []
    for service in (node.live or {}).get("services", []):
        name = service["name"]
        if not service["applicable"]:
            continue
        if not service["running"]:
            if service["cause"] in HELD_BY_ADMIN_OR_FAULT:  # the SRM's own stops are the SRM's to undo
                buttons.append(Button("service.start", f"Start {name}", node=node.name, service=name))
            continue
        effect = (f"a critical service down for {delay_s:g} s (Critical Service Delay) fails {node.name} over"
                  if service["monitored"] else "it is not monitored: nothing fails over")
        buttons.append(Button("service.stop", f"Stop {name}", f"Stop {service['display_name']} on {node.name}? "
                              f"{effect[0].upper()}{effect[1:]}.", node=node.name, service=name))
    return buttons


# --- countdowns ------------------------------------------------------------------------------


def countdowns(node: NodeRow, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The timers of `node` that end in a move, with what happens then."""
    left: dict[str, float] = (node.live or {}).get("status", {}).get("timers_left", {})
    interval, timeout = float(params["heartbeat_interval_s"]), float(params["heartbeat_timeout_s"])
    shown = []
    for timer, seconds in sorted(left.items()):
        if timer == "critical_service_delay":
            what = CRITICAL_SERVICE_OUTCOME.get(node.state, "critical service down: the SRM acts")
        elif timer == "init_heartbeat_timeout":
            what = "peer not heard since start: takeover of its users"
        elif timer == "heartbeat_timeout" and seconds < timeout - 2 * interval:
            what = "peer silent: takeover of its users"
        elif timer == "auto_fallback":
            what = "automatic fallback"
        else:
            continue
        shown.append({"timer": timer, "what": what, "seconds": seconds})
    return shown


# --- what the page polls -------------------------------------------------------------------


def _iso(moment: dt.datetime | None) -> str | None:
    return _aware(moment).isoformat() if moment else None


def node_json(group: GroupRow, node: NodeRow, params: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """One node as the page shows it; an unreachable one without any state."""
    shown: dict[str, Any] = {
        "name": node.name, "alive": node.alive, "admin_port": node.admin_port,
        "users": {"assigned": node.users_assigned, "served": node.users_served},
        "state": None, "reason": None, "since": None, "sessions": None, "services": None,
        "countdowns": [], "buttons": [],
    }
    if not node.alive:
        seen = (now - _aware(node.alive_at)).total_seconds() if node.alive_at else None
        return {**shown, "last_seen_s": None if seen is None else round(seen)}
    live = node.live or {}
    buttons = [node_action(group, node, op) for op in node_buttons(group, node)]
    buttons += service_actions(node, float(params["critical_service_delay_s"]))
    return {**shown, "state": node.state, "reason": node.reason, "since": _iso(node.since),
            "sessions": live.get("sessions"), "services": live.get("services"),
            "countdowns": countdowns(node, params), "buttons": [asdict(b) for b in buttons]}


def page_json(overview: list[GroupRow], events: list[srm_state.HaEventRecord], params: dict[str, Any],
              served_by: str, now: dt.datetime) -> dict[str, Any]:
    """Everything the admin page shows, as it polls `GET /api/overview`."""
    return {
        "node": served_by, "now": _iso(now),
        "groups": [{"name": g.name, "ha": g.ha_enabled,
                    "buttons": [asdict(recover_action(g)) for _ in group_buttons(g)],
                    "nodes": [node_json(g, n, params, now) for n in g.nodes]} for g in overview],
        "events": [{"at": _iso(e.at), "node": e.node, "from": e.from_state, "to": e.to_state, "reason": e.reason,
                    "event": e.event} for e in events],
    }
