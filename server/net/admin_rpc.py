"""The admin RPC on a node's admin port: JSON operations and the admin web page (SPEC §7).

Rules of this module:
- Transport: a small HTTP/1.0 server on the node's loop (hypercorn-style lifecycle:
  `start`, serve, `stop`), one request per connection, `Connection: close`. Bound to
  127.0.0.1 unless the node says otherwise. Heads are capped at `MAX_HEAD_BYTES`,
  bodies at `MAX_BODY_BYTES` (413), the whole request at `READ_TIMEOUT_S`.
- Authentication: the admin token is HMAC-SHA256(cluster secret, "admin-rpc") as hex.
  The CLI reads the secret from the database and computes the same token. Comparison
  is constant time. A missing or wrong token is 401 plus one log line with the peer
  address; nothing else happens.
- `POST /rpc` takes its credential from the `Authorization: Bearer TOKEN` header only
  (issue #19: never from a cookie or the query, which any page of the same host could
  make a browser send). It takes `{"op": OP, "node": NAME?, "service": NAME?}`; OP is
  one of `OPS`. Answers are JSON objects with `"ok"`; errors are
  `{"ok": false, "error": "..."}` with 400 (malformed), 401, 404 (unknown
  node/service/route), 409 (refused by the SRM), 413 (too large).
- `status` answers the SRM status (with the seconds left on its timers), the critical
  services and the SPEC §8 session counters: everything the admin page shows of a node.
- Every other route is the web page (`admin_page.AdminPage`), which authenticates its
  own requests (a signed session cookie plus a CSRF token for actions).
- A bad request never takes the node down: every failure becomes a response.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from http.cookies import CookieError, SimpleCookie
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from presence_ha.db.engine import DatabaseUnavailable
from presence_ha.server.services import CriticalServices, ServiceError, UnknownService
from presence_ha.server.srm.events import AdminRequestedFailover, AdminRequestedFallback, Event

log = logging.getLogger(__name__)

TOKEN_LABEL = b"admin-rpc"
MAX_HEAD_BYTES = 8 * 1024
MAX_BODY_BYTES = 16 * 1024
READ_TIMEOUT_S = 10.0
DEFAULT_BIND_HOST = "127.0.0.1"
OPS = ("status", "failover", "fallback", "recover", "service.list", "service.stop", "service.start")
REASONS = {
    200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 411: "Length Required", 413: "Payload Too Large",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
}


def admin_token(cluster_secret: str) -> str:
    """The admin token of a cluster: HMAC-SHA256(secret, "admin-rpc"), hex."""
    return hmac.new(cluster_secret.encode(), TOKEN_LABEL, hashlib.sha256).hexdigest()


def token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison; a missing token never matches."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


class HttpError(Exception):
    """A request the server answers with `status` and a one-line `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    peer: str = "?"

    def form(self) -> dict[str, str]:
        """The urlencoded body as {name: first value}."""
        return _first_values(parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True))

    def bearer(self) -> str | None:
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    def cookie(self, name: str) -> str | None:
        try:
            jar = SimpleCookie(self.headers.get("cookie", ""))
        except CookieError:
            return None
        return jar[name].value if name in jar else None


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        head = [f"HTTP/1.0 {self.status} {REASONS.get(self.status, 'Error')}",
                f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}",
                "Cache-Control: no-store", "Connection: close", *(f"{k}: {v}" for k, v in self.headers)]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


def json_response(status: int, payload: dict[str, Any]) -> HttpResponse:
    return HttpResponse(status, json.dumps(payload).encode() + b"\n")


def error_response(status: int, message: str) -> HttpResponse:
    return json_response(status, {"ok": False, "error": message})


def _first_values(multi: dict[str, list[str]]) -> dict[str, str]:
    return {key: values[0] for key, values in multi.items()}


def parse_head(data: bytes) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """(method, path, query, headers) of a request head, or `HttpError(400)`."""
    try:
        lines = data.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise HttpError(400, "malformed request line") from None
    if not version.startswith("HTTP/1.") or not method.isalpha():
        raise HttpError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in filter(None, lines[1:]):
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or " " in name.strip():
            raise HttpError(400, f"malformed header line {line[:40]!r}")
        headers[name.strip().lower()] = value.strip()
    url = urlsplit(target)
    return method.upper(), url.path or "/", _first_values(parse_qs(url.query, keep_blank_values=True)), headers


def body_length(method: str, headers: dict[str, str]) -> int:
    """How many body bytes follow the head; `HttpError` for what this server refuses."""
    if "transfer-encoding" in headers:
        raise HttpError(411, "chunked bodies are not accepted; send Content-Length")
    raw = headers.get("content-length")
    if raw is None:
        if method == "POST":
            raise HttpError(411, "POST needs a Content-Length")
        return 0
    if not raw.isdigit():
        raise HttpError(400, f"bad Content-Length {raw[:20]!r}")
    if int(raw) > MAX_BODY_BYTES:
        raise HttpError(413, f"body of {raw} bytes is over the {MAX_BODY_BYTES}-byte limit")
    return int(raw)


@dataclass(frozen=True)
class RpcCall:
    """One parsed JSON operation."""

    op: str
    node: str | None = None
    service: str | None = None


def parse_call(body: bytes) -> RpcCall:
    """A JSON body as an `RpcCall`, or `HttpError(400)` naming what is wrong."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HttpError(400, f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HttpError(400, "the request must be a JSON object")
    unknown = sorted(set(data) - {"op", "node", "service"})
    if unknown:
        raise HttpError(400, f"unknown field {unknown[0]!r}")
    op = data.get("op")
    if op not in OPS:
        raise HttpError(400, f"op must be one of {', '.join(OPS)}; got {op!r}")
    for key in ("node", "service"):
        if key in data and not isinstance(data[key], str):
            raise HttpError(400, f"{key} must be a string")
    if op in ("service.stop", "service.start") and not data.get("service"):
        raise HttpError(400, f"{op} needs a service")
    return RpcCall(op, data.get("node"), data.get("service"))


def to_json(value: Any) -> Any:
    """Status objects (dataclasses, enums, tuples) as plain JSON values."""
    if hasattr(value, "__dataclass_fields__"):
        return {name: to_json(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, Enum):
        return value.value  # NodeState / Reason: the SPEC display string
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


class Operations(Protocol):
    """What the admin RPC drives: one node's SRM and critical services."""

    node_name: str

    async def perform(self, call: RpcCall) -> dict[str, Any]: ...


class SrmControl(Protocol):
    """The part of `server.srm.runner.SrmRunner` the admin RPC uses."""

    def status(self) -> Any: ...
    async def admin_request(self, event: Event) -> tuple[bool, str]: ...
    async def restart(self) -> None: ...


ADMIN_REQUESTS: dict[str, type[Event]] = {"failover": AdminRequestedFailover, "fallback": AdminRequestedFallback}


class NodeOperations:
    """The JSON operations on one node: its SRM runner and its critical services."""

    def __init__(self, node_name: str, srm: SrmControl, services: CriticalServices,
                 sessions: Callable[[], dict[str, int]] = dict) -> None:
        self.node_name, self.srm, self.services, self.sessions = node_name, srm, services, sessions

    async def perform(self, call: RpcCall) -> dict[str, Any]:
        """The answer to `call`; `{"ok": False, "error", "status"}` when refused."""
        if call.op == "status":
            return {"status": to_json(self.srm.status()), "services": to_json(self.services.list()),
                    "sessions": self.sessions()}
        if call.op in ADMIN_REQUESTS:
            accepted, reason = await self.srm.admin_request(ADMIN_REQUESTS[call.op]())
            log.info("admin RPC: %s of %s %s: %s",
                     call.op, self.node_name, "accepted" if accepted else "refused", reason)
            if not accepted:
                return {"ok": False, "error": reason, "status": 409}
            return {"message": reason, "status": to_json(self.srm.status())}
        if call.op == "recover":
            log.info("admin RPC: recovery: restarting the SRM of %s", self.node_name)
            await self.srm.restart()
            return {"message": "SRM restarted", "status": to_json(self.srm.status())}
        return await self._service(call)

    async def _service(self, call: RpcCall) -> dict[str, Any]:
        try:
            if call.op == "service.stop":
                await self.services.stop(call.service or "")
            elif call.op == "service.start":
                await self.services.start(call.service or "")
        except UnknownService as exc:
            return {"ok": False, "error": str(exc), "status": 404}
        except ServiceError as exc:
            return {"ok": False, "error": str(exc), "status": 409}
        if call.op != "service.list":
            log.info("admin RPC: %s %s on %s", call.op, call.service, self.node_name)
        return {"services": to_json(self.services.list())}


class PageHandler(Protocol):
    async def handle(self, request: HttpRequest) -> HttpResponse: ...


@dataclass
class AdminServer:
    """The admin port: authenticates, routes to the JSON operations or the web page."""

    token: str
    operations: Operations
    page: PageHandler | None = None
    _server: asyncio.Server | None = field(default=None, init=False)

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True,
                                                  limit=MAX_HEAD_BYTES * 2)
        log.info("admin RPC on http://%s:%d/", host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        try:
            request = await asyncio.wait_for(read_request(reader, peer_text), READ_TIMEOUT_S)
            response = await self.respond(request)
        except HttpError as exc:
            response = error_response(exc.status, exc.message)
        except DatabaseUnavailable as exc:
            response = error_response(503, f"database unavailable: {exc}")
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()  # the client went quiet or away: nobody to answer
            return
        except Exception as exc:  # a bug in one request must not take the node down
            log.exception("admin RPC: internal error from %s", peer_text)
            response = error_response(500, f"internal error: {exc!r}")
        try:
            writer.write(response.encode())
            await writer.drain()
        except ConnectionError:
            pass  # the client went away; nothing to tell it
        finally:
            writer.close()

    async def respond(self, request: HttpRequest) -> HttpResponse:
        """The response to one parsed request (every error becomes a response)."""
        if request.path != "/rpc":
            return await self.page.handle(request) if self.page is not None else error_response(
                404, f"no route {request.path}")
        if request.method != "POST":
            return error_response(405, "use POST /rpc")
        if not token_matches(self.token, request.bearer()):
            log.warning("admin RPC: rejected %s /rpc from %s: missing or wrong token%s", request.method,
                        request.peer, " (a cookie is no credential here)" if "cookie" in request.headers else "")
            return error_response(401, "missing or wrong admin token")
        return await self._rpc(request)

    async def _rpc(self, request: HttpRequest) -> HttpResponse:
        try:
            call = parse_call(request.body)
            if call.node is not None and call.node != self.operations.node_name:
                raise HttpError(404, f"unknown node {call.node!r}: this is node {self.operations.node_name!r}")
            result = await self.operations.perform(call)
        except HttpError as exc:
            return error_response(exc.status, exc.message)
        status = 200 if result.get("ok", True) else result.pop("status", 409)
        return json_response(status, {"ok": status == 200, **result})


async def read_request(reader: asyncio.StreamReader, peer: str = "?") -> HttpRequest:
    """Read one request (head, then exactly Content-Length body bytes)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(413, f"request head over {MAX_HEAD_BYTES} bytes") from None
    if len(head) > MAX_HEAD_BYTES:
        raise HttpError(413, f"request head over {MAX_HEAD_BYTES} bytes")
    method, path, query, headers = parse_head(head[:-4])
    body = await reader.readexactly(body_length(method, headers))
    return HttpRequest(method, path, query, headers, body, peer)


class AdminRpcError(Exception):
    """A client-side failure: unreachable node, or an error answer (`status`, message)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def call_node(host: str, port: int, token: str, payload: dict[str, Any],
                    timeout_s: float = 15.0) -> dict[str, Any]:
    """POST `payload` to a node's `/rpc`; the JSON answer if ok, else `AdminRpcError`."""
    body = json.dumps(payload).encode()
    head = (f"POST /rpc HTTP/1.0\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise AdminRpcError(f"admin RPC unreachable at {host}:{port}: {exc or 'timed out'}") from None
    try:
        writer.write(head.encode("latin-1") + body)
        raw = await asyncio.wait_for(reader.read(), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise AdminRpcError(f"admin RPC at {host}:{port} did not answer: {exc or 'timed out'}") from None
    finally:
        writer.close()
    return _parse_answer(raw, f"{host}:{port}")


def _parse_answer(raw: bytes, where: str) -> dict[str, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
        answer = json.loads(body.decode("utf-8"))
    except (IndexError, ValueError):
        raise AdminRpcError(f"admin RPC at {where} sent a malformed answer") from None
    if status != 200 or not isinstance(answer, dict) or not answer.get("ok"):
        message = answer.get("error") if isinstance(answer, dict) else None
        raise AdminRpcError(str(message or f"HTTP {status}"), status)
    return answer
