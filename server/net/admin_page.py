"""The live admin web page (SPEC §7, issue #21): routes, login, CSRF, actions.

Rules of this module:
- The page is one HTML shell (`admin_static/index.html`) plus a small script and a
  style sheet, all served by the node itself (no external assets; a strict
  Content-Security-Policy forbids any other origin and inline code). The script polls
  `GET /api/overview` every second (`admin_overview.page_json`) and redraws: states,
  reachability, users, sessions, services, countdowns, buttons and the HA event log.
- Login: `GET /?token=TOKEN` (the link `ha web` prints) or the login form's
  `POST /login` gives a session cookie (`admin_session`); the token itself never goes
  into a cookie or the page. A bearer token (`Authorization`) works too, for scripts.
- Actions are `POST /api/action` with a JSON body `{"op", "node"|"group", "service"?}`
  and the session's CSRF token in the `X-CSRF-Token` header (the confirmation dialog's
  form carries it); a request from another origin is refused (403). The page asks the
  admin to confirm every disruptive action first (`admin_overview.Button.confirm`).
- Actions on the peer are forwarded to the peer's admin RPC with the admin token;
  recovery goes to every node of the group.
- A node that cannot reach the database still serves the page: the nodes' live states
  over its last database read (users, event log), with `"database": {"ok": false}`.
- Every refusal is one log line with the peer address; an error answer never has a
  stack trace.
- `rekey(server, secret)` switches the node's admin port to the token of a rotated
  cluster secret: the old token is refused from then on, and every session logged in
  with it is void (its MAC was keyed with the old token).
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from presence_ha.db import groups, nodes, parameters, srm_state
from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.db.errors import ProvisioningError
from presence_ha.server.net.admin_overview import (
    EVENTS_SHOWN,
    GroupRow,
    overlay_live,
    page_json,
    read_overview,
    rpc_probe,
)
from presence_ha.server.net.admin_rpc import (
    DEFAULT_BIND_HOST,
    AdminRpcError,
    AdminServer,
    HttpRequest,
    HttpResponse,
    NodeOperations,
    RpcCall,
    SrmControl,
    admin_token,
    call_node,
    error_response,
    json_response,
    token_matches,
)
from presence_ha.server.net.admin_session import (
    CSRF_HEADER,
    SESSION_COOKIE,
    csrf_token,
    csrf_valid,
    issue_session,
    same_origin,
    session_cookie,
    session_valid,
)
from presence_ha.server.services import CriticalServices

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("admin_static")
ASSETS = {"/admin.js": ("admin.js", "text/javascript; charset=utf-8"),
          "/admin.css": ("admin.css", "text/css; charset=utf-8")}
PAGE_OPS = ("failover", "fallback", "recover", "service.stop", "service.start")
SERVICE_DONE = {"service.stop": "stopped", "service.start": "started"}
SECURITY_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"),
    ("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
)


@functools.cache
def _static(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def _html(status: int, body: str, *headers: tuple[str, str]) -> HttpResponse:
    return HttpResponse(status, body.encode(), "text/html; charset=utf-8", (*SECURITY_HEADERS, *headers))


def render_login(error: str = "") -> str:
    message = f"<p class='note error'>{html.escape(error)}</p>" if error else ""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>presence-ha admin login</title>"
        "<link rel='stylesheet' href='/admin.css'></head><body class='login'>"
        f"<h1>presence-ha admin</h1>{message}<form method='post' action='/login'>"
        "<label>Admin token <input type='password' name='token' id='token' autocomplete='off' autofocus></label> "
        "<button type='submit' id='login'>Log in</button></form>"
        "<p><code>presence-ha ha web</code> prints a link that logs you in.</p></body></html>")


def render_shell(node_name: str, csrf: str) -> str:
    """The page's shell: the script fills it in from `/api/overview`."""
    return Template(_static("index.html")).substitute(node=html.escape(node_name), csrf=html.escape(csrf))


def _done(op: str, target: str, service: str | None, answer: dict[str, Any]) -> str:
    if op in SERVICE_DONE:
        return f"{service} {SERVICE_DONE[op]} on {target}"
    return f"{op} {target}: {answer.get('message', 'done')}"


class PageBackend(Protocol):
    """What the page needs of its node: the overview, a group's nodes, and actions."""

    async def overview(self) -> dict[str, Any]: ...
    async def members(self, group: str) -> list[str]: ...
    async def dispatch(self, call: RpcCall, target: str) -> dict[str, Any]: ...  # raises AdminRpcError


@dataclass
class AdminPage:
    """`GET /`, `/admin.js`, `/admin.css`, `/api/overview`; `POST /login`, `/logout`, `/api/action`."""

    node_name: str
    token: str
    backend: PageBackend
    clock: Callable[[], float] = field(default=time.time)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        route = (request.method, request.path)
        if request.method == "GET" and request.path in ASSETS:
            name, content_type = ASSETS[request.path]
            return HttpResponse(200, _static(name).encode(), content_type, SECURITY_HEADERS)
        if route == ("POST", "/login"):
            return self._login(request)
        if route == ("GET", "/"):
            return self._index(request)
        session = self._session(request)
        if route == ("GET", "/api/overview"):
            if session is None and not self._bearer(request):
                return error_response(401, "log in first: open the link `presence-ha ha web` prints")
            return json_response(200, {"ok": True, **await self.backend.overview()})
        if route in (("POST", "/api/action"), ("POST", "/logout")):
            refusal = self._refuse_action(request, session)
            if refusal is not None:
                return refusal
            if request.path == "/logout":
                return HttpResponse(200, b'{"ok": true}\n', headers=(session_cookie("", 0),))
            return await self._action(request)
        return _html(404, "<!DOCTYPE html><title>not found</title><p>No such page.</p>")

    # --- authentication ------------------------------------------------------------------

    def _session(self, request: HttpRequest) -> str | None:
        value = request.cookie(SESSION_COOKIE)
        return value if session_valid(self.token, value, self.clock()) else None

    def _bearer(self, request: HttpRequest) -> bool:
        return token_matches(self.token, request.bearer())

    def _new_session(self) -> str:
        return issue_session(self.token, self.clock(), os.urandom(16))

    def _shell(self, session: str, fresh: bool) -> HttpResponse:
        headers = (session_cookie(session),) if fresh else ()
        return _html(200, render_shell(self.node_name, csrf_token(self.token, session)), *headers)

    def _index(self, request: HttpRequest) -> HttpResponse:
        if "token" in request.query:  # the link of `ha web`
            if token_matches(self.token, request.query["token"]):
                return self._shell(self._new_session(), fresh=True)
            log.warning("admin page: rejected a login from %s: wrong token", request.peer)
            return _html(401, render_login("wrong token"))
        session = self._session(request)
        if session is not None:
            return self._shell(session, fresh=False)
        if self._bearer(request):
            return self._shell(self._new_session(), fresh=True)
        return _html(401, render_login())

    def _login(self, request: HttpRequest) -> HttpResponse:
        if not token_matches(self.token, request.form().get("token")):
            log.warning("admin page: rejected a login from %s: wrong token", request.peer)
            return _html(401, render_login("wrong token"))
        return _html(303, "", ("Location", "/"), session_cookie(self._new_session()))

    def _refuse_action(self, request: HttpRequest, session: str | None) -> HttpResponse | None:
        """None if `request` may act: same origin, and a bearer token or a session with
        its CSRF token in the header (issue #19: the cookie alone never acts)."""
        why = None
        if not same_origin(request.headers):
            why, status = "cross-origin request refused", 403
        elif self._bearer(request):
            return None
        elif session is None:
            why, status = "log in first", 401
        elif not csrf_valid(self.token, session, request.headers.get(CSRF_HEADER)):
            why, status = "missing or wrong CSRF token", 403
        if why is None:
            return None
        log.warning("admin page: rejected %s %s from %s: %s", request.method, request.path, request.peer, why)
        return error_response(status, why)

    # --- actions -----------------------------------------------------------------------------

    async def _action(self, request: HttpRequest) -> HttpResponse:
        try:
            data = json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return error_response(400, f"malformed JSON: {exc}")
        if not isinstance(data, dict) or data.get("op") not in PAGE_OPS:
            return error_response(400, f"op must be one of {', '.join(PAGE_OPS)}")
        op = data["op"]
        if op == "recover":
            targets = await self.backend.members(str(data.get("group", "")))
            if not targets:
                return error_response(404, f"unknown group {data.get('group')!r}")
        elif isinstance(data.get("node"), str) and data["node"]:
            targets = [data["node"]]
        else:
            return error_response(400, f"{op} needs a node")
        service = data.get("service") if isinstance(data.get("service"), str) else None
        notes, ok = [], True
        for target in targets:
            try:
                answer = await self.backend.dispatch(RpcCall(op, target, service), target)
                notes.append(_done(op, target, service, answer))
            except AdminRpcError as exc:
                ok = False
                notes.append(f"{op} {target} refused: {exc}")
        log.info("admin page: %s from %s: %s", op, request.peer, "; ".join(notes))
        return json_response(200 if ok else 409, {"ok": ok, "notes": notes})


# (groups and nodes, HA event log, parameters, when): what the page last read from the database
StoredRead = tuple[list[GroupRow], list[srm_state.HaEventRecord], dict[str, Any], dt.datetime]


@dataclass
class NodeBackend:
    """The `PageBackend` of node `node_name`: the database, its own admin operations,
    and its peers' admin RPCs on `peer_host`."""

    node_name: str
    token: str
    local: NodeOperations
    session_factory: async_sessionmaker[AsyncSession]
    peer_host: str = DEFAULT_BIND_HOST
    _read: StoredRead | None = field(default=None, init=False)  # the last database read

    async def overview(self) -> dict[str, Any]:
        """The page's JSON; with the database unreachable from this node, the last
        database read (users, event log) under the nodes' live states, and says so."""
        now = srm_state.utcnow()
        database: dict[str, Any] = {"ok": True}
        try:
            async with self.session_factory() as session:
                stored = await read_overview(session, now)
                events = await srm_state.list_events(session, limit=EVENTS_SHOWN)
                self._read = (stored, events, await parameters.effective_parameters(session), now)
        except DatabaseUnavailable as exc:
            if self._read is None:
                raise
            database = {"ok": False, "error": str(exc), "as_of": self._read[3].isoformat()}
        stored, events, params, _ = self._read
        remote = rpc_probe(self.peer_host, {n.name: n.admin_port for g in stored for n in g.nodes}, self.token)

        async def probe(name: str) -> dict[str, Any] | None:
            return await self.local.perform(RpcCall("status")) if name == self.node_name else await remote(name)

        return {**page_json(await overlay_live(stored, probe), events, params, self.node_name, now),
                "database": database}

    async def members(self, group: str) -> list[str]:
        async with self.session_factory() as session:
            try:
                return list((await groups.get_group(session, group)).nodes)
            except ProvisioningError:
                return []

    async def dispatch(self, call: RpcCall, target: str) -> dict[str, Any]:
        if target == self.node_name:
            answer = await self.local.perform(call)
            if answer.get("ok") is False:
                raise AdminRpcError(answer["error"], answer.get("status"))
            return answer
        try:
            async with self.session_factory() as session:
                port = (await nodes.get_node(session, target)).ports.admin_port
        except (ProvisioningError, DatabaseUnavailable) as exc:
            raise AdminRpcError(str(exc)) from None
        payload = {"op": call.op, "node": target, **({"service": call.service} if call.service else {})}
        return await call_node(self.peer_host, port, self.token, payload)


def build_admin_server(
    node_name: str, secret: str, srm: SrmControl, services: CriticalServices,
    session_factory: async_sessionmaker[AsyncSession], sessions: Callable[[], dict[str, int]] = dict,
    peer_host: str = DEFAULT_BIND_HOST,
) -> AdminServer:
    """The admin port of node `node_name`: JSON operations plus this page."""
    token = admin_token(secret)
    local = NodeOperations(node_name, srm, services, sessions)
    backend = NodeBackend(node_name, token, local, session_factory, peer_host)
    return AdminServer(token, local, AdminPage(node_name, token, backend))


def rekey(server: AdminServer, secret: str) -> None:
    """Accept only the admin token of `secret` from now on (a rotated cluster secret)."""
    token = admin_token(secret)
    server.token = token
    page = server.page
    if isinstance(page, AdminPage):
        page.token = token
        if isinstance(page.backend, NodeBackend):
            page.backend.token = token
