"""The admin web page (SPEC §7): groups, node states and reasons, and the allowed buttons.

Rules of this module:
- What the page (and `presence-ha ha status`) shows is read from the database by
  `read_overview`, so it works while a node is down; a node whose database liveness
  is older than the heartbeat timeout is shown as unreachable.
- Which buttons a node gets is decided by the SRM table itself (`table_allows`): the
  stored states become a read-only `MachineView` and the first row whose guard
  passes must not refuse. Recovery is offered for a group in a failed state
  (Running in Failed Mode, Unknown). An unreachable node gets no buttons.
- Every action is a POST carrying the token in its form (a cookie alone is not
  enough: no cross-site request can act). The page is one self-contained HTML
  document: no scripts, no external assets; every value is HTML-escaped.
- Actions on the peer are forwarded to the peer's admin RPC with the same token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from presence_ha.db import groups, nodes, parameters, srm_state
from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.db.errors import ProvisioningError
from presence_ha.server.net.admin_rpc import (
    DEFAULT_BIND_HOST,
    TOKEN_COOKIE,
    AdminRpcError,
    AdminServer,
    HttpRequest,
    HttpResponse,
    NodeOperations,
    RpcCall,
    SrmControl,
    admin_token,
    call_node,
    token_matches,
)
from presence_ha.server.services import CriticalServices
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


@dataclass(frozen=True)
class NodeRow:
    name: str
    state: str
    reason: str
    alive: bool
    since: dt.datetime | None = None


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
    """Every group with its nodes' stored (state, reason) and liveness."""
    now = now or srm_state.utcnow()
    params = await parameters.effective_parameters(session)
    timeout_s = float(params["heartbeat_timeout_s"])
    result = []
    for group in await groups.list_groups(session):
        rows = []
        for name in group.nodes:
            stored = await srm_state.read_state(session, name)
            state, reason = (stored.state, stored.reason) if stored and stored.state else NEVER_STARTED
            alive_at = stored.alive_at if stored else None
            rows.append(NodeRow(name, state, reason, is_alive(alive_at, timeout_s, now),
                                stored.since if stored else None))
        result.append(GroupRow(group.name, group.ha_enabled, tuple(rows)))
    return result


Probe = Callable[[str], Awaitable[dict[str, Any] | None]]


async def overlay_live(overview: list[GroupRow], probe: Probe) -> list[GroupRow]:
    """The overview with each reachable node's live (state, reason) from its admin RPC.

    A node that cannot write its state (it lost the database, SPEC §6 rows 13, 22)
    still answers here; one that does not answer is shown unreachable, with the last
    state it stored.
    """
    names = [node.name for group in overview for node in group.nodes]
    answers = dict(zip(names, await asyncio.gather(*(probe(name) for name in names)), strict=True))

    def merged(node: NodeRow) -> NodeRow:
        live = answers[node.name]
        if live is None:
            return replace(node, alive=False)
        return replace(node, state=str(live["state"]), reason=str(live["reason"]), alive=True)

    return [replace(group, nodes=tuple(merged(n) for n in group.nodes)) for group in overview]


def rpc_probe(host: str, ports: dict[str, int], token: str, timeout_s: float = PROBE_TIMEOUT_S) -> Probe:
    """A `Probe` asking each node's admin RPC for its status (None: no answer)."""

    async def probe(name: str) -> dict[str, Any] | None:
        try:
            answer = await call_node(host, ports[name], token, {"op": "status", "node": name}, timeout_s)
        except AdminRpcError:
            return None
        return answer.get("status")

    return probe


def overview_json(overview: list[GroupRow]) -> dict[str, Any]:
    """`ha status --json`: the exact keys of the brief, plus `alive` per node."""
    return {"groups": [
        {"name": g.name, "ha": g.ha_enabled,
         "nodes": [{"name": n.name, "state": n.state, "reason": n.reason, "alive": n.alive} for n in g.nodes]}
        for g in overview
    ]}


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
    failed = any(NodeState(n.state) in FAILED_STATES for n in group.nodes)
    return ("recover",) if failed else ()


# --- HTML -------------------------------------------------------------------------------

_STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
    "td,th{border:1px solid #999;padding:.3em .7em;text-align:left}.note{background:#ffd;padding:.5em}"
    "form{display:inline}.down{color:#a00}"
)


def _document(title: str, body: str) -> bytes:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>").encode()


def _button(token: str, op: str, target_field: str, target: str) -> str:
    e = html.escape
    return (f"<form method='post' action='/action' id='{e(op)}-{e(target)}'>"
            f"<input type='hidden' name='token' value='{e(token)}'>"
            f"<input type='hidden' name='op' value='{e(op)}'>"
            f"<input type='hidden' name='{target_field}' value='{e(target)}'>"
            f"<button type='submit'>{e(op.capitalize())} {e(target)}</button></form>")


def _node_cells(group: GroupRow, node: NodeRow, token: str) -> str:
    e = html.escape
    buttons = " ".join(_button(token, op, "node", node.name) for op in node_buttons(group, node))
    alive = "" if node.alive else " <span class='down'>(unreachable)</span>"
    return (f"<tr id='node-{e(node.name)}'><td>{e(node.name)}{alive}</td><td class='state'>{e(node.state)}</td>"
            f"<td class='reason'>{e(node.reason)}</td><td>{buttons}</td></tr>")


def render_page(overview: list[GroupRow], node_name: str, token: str, note: str = "") -> bytes:
    """The overview page as served by node `node_name`."""
    e = html.escape
    parts = [f"<h1>Presence redundancy groups</h1><p>Served by node {e(node_name)}.</p>"]
    if note:
        parts.append(f"<p class='note'>{e(note)}</p>")
    for group in overview:
        recover = " ".join(_button(token, op, "group", group.name) for op in group_buttons(group))
        ha = "on" if group.ha_enabled else "off"
        parts.append(f"<h2 id='group-{e(group.name)}'>Group {e(group.name)} (HA {ha}) {recover}</h2>")
        parts.append("<table><tr><th>node</th><th>state</th><th>reason</th><th>actions</th></tr>")
        parts.extend(_node_cells(group, node, token) for node in group.nodes)
        parts.append("</table>")
    return _document("presence-ha admin", "".join(parts))


def render_login(error: str = "") -> bytes:
    message = f"<p class='note'>{html.escape(error)}</p>" if error else ""
    return _document("presence-ha admin login", (
        f"<h1>presence-ha admin</h1>{message}<form method='post' action='/login'>"
        "<label>Admin token <input type='password' name='token' autocomplete='off'></label> "
        "<button type='submit'>Log in</button></form><p>`presence-ha ha web` prints a link with the token.</p>"))


# --- the page's routes --------------------------------------------------------------------

Dispatch = Callable[[RpcCall, str], Awaitable[dict[str, Any]]]


def _html(status: int, body: bytes, *headers: tuple[str, str]) -> HttpResponse:
    return HttpResponse(status, body, "text/html; charset=utf-8", headers)


def _cookie(token: str) -> tuple[str, str]:
    return ("Set-Cookie", f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict")


@dataclass
class AdminPage:
    """`GET /`, `POST /login`, `POST /action` of the admin port."""

    node_name: str
    token: str
    overview: Callable[[], Awaitable[list[GroupRow]]]
    dispatch: Dispatch  # (call, target node) -> the answer; raises AdminRpcError

    async def handle(self, request: HttpRequest, authenticated: bool) -> HttpResponse:
        route = (request.method, request.path)
        if route == ("POST", "/login"):
            return self._login(request)
        if route == ("POST", "/action"):
            return await self._action(request)
        if route != ("GET", "/"):
            return _html(404, _document("not found", "<p>No such page.</p>"))
        if not authenticated:
            return _html(401, render_login("wrong token" if "token" in request.query else ""))
        page = render_page(await self.overview(), self.node_name, self.token, request.query.get("note", ""))
        return _html(200, page, _cookie(self.token))

    def _login(self, request: HttpRequest) -> HttpResponse:
        if not token_matches(self.token, request.form().get("token")):
            return _html(401, render_login("wrong token"))
        return _html(303, b"", ("Location", "/"), _cookie(self.token))

    async def _action(self, request: HttpRequest) -> HttpResponse:
        form = request.form()
        if not token_matches(self.token, form.get("token")):
            return _html(401, render_login("wrong token"))
        note = await self._perform(form)
        return _html(303, b"", ("Location", "/?note=" + quote(note)))

    async def _perform(self, form: dict[str, str]) -> str:
        op = form.get("op", "")
        if op in ("failover", "fallback") and form.get("node"):
            targets = [form["node"]]
        elif op == "recover" and form.get("group"):
            group = next((g for g in await self.overview() if g.name == form["group"]), None)
            if group is None:
                return f"unknown group {form['group']!r}"
            targets = [n.name for n in group.nodes]
        else:
            return f"unknown action {op!r}"
        notes = []
        for target in targets:
            try:
                answer = await self.dispatch(RpcCall(op, target), target)
                notes.append(f"{op} {target}: {answer.get('message', 'done')}")
            except AdminRpcError as exc:
                notes.append(f"{op} {target} refused: {exc}")
        return "; ".join(notes)


def build_admin_server(
    node_name: str, secret: str, srm: SrmControl, services: CriticalServices,
    session_factory: async_sessionmaker[AsyncSession], peer_host: str = DEFAULT_BIND_HOST,
) -> AdminServer:
    """The admin port of node `node_name`: JSON operations plus this page."""
    token = admin_token(secret)
    local = NodeOperations(node_name, srm, services)

    async def overview() -> list[GroupRow]:
        async with session_factory() as session:
            stored = await read_overview(session)
            ports = {n.name: n.ports.admin_port for n in await nodes.list_nodes(session)}
        remote = rpc_probe(peer_host, ports, token)

        async def probe(name: str) -> dict[str, Any] | None:
            return (await local.perform(RpcCall("status")))["status"] if name == node_name else await remote(name)

        return await overlay_live(stored, probe)

    async def dispatch(call: RpcCall, target: str) -> dict[str, Any]:
        if target == node_name:
            answer = await local.perform(call)
            if answer.get("ok") is False:
                raise AdminRpcError(answer["error"], answer.get("status"))
            return answer
        try:
            async with session_factory() as session:
                port = (await nodes.get_node(session, target)).ports.admin_port
        except (ProvisioningError, DatabaseUnavailable) as exc:
            raise AdminRpcError(str(exc)) from None
        return await call_node(peer_host, port, token, {"op": call.op, "node": target})

    return AdminServer(token, local, AdminPage(node_name, token, overview, dispatch))
