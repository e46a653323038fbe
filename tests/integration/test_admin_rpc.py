"""The admin RPC and web page of real node processes (SPEC §7).

Scenarios: a request without the token or with a wrong one gets 401 and a log line;
the admin port listens on loopback only; malformed, oversize or misaddressed requests
get clear errors and the node carries on; the web page shows each node's state and
reason and only the buttons the state allows; it logs in with a session, never the token
itself, and no request a browser sends by itself (the cookie alone, another origin) can
act (issue #19 item 6).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.error
import urllib.parse
import urllib.request

import pytest

from presence_ha.server.net.admin_rpc import MAX_BODY_BYTES, admin_token
from tests.conftest import _new_postgres_url, _pg_drop
from tests.integration.cluster import cluster_secret
from tests.integration.test_admin_pair import HaPair, is_postgres, start_pair

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def pair(request, tmp_path_factory):
    url = (f"sqlite:///{tmp_path_factory.mktemp('admin') / 'presence-ha.sqlite3'}"
           if request.param == "sqlite" else _new_postgres_url())
    started = start_pair(url, tmp_path_factory.mktemp("pair"))
    yield started
    started.close()
    if is_postgres(url):
        asyncio.run(_pg_drop(url))


def token(pair: HaPair) -> str:
    return admin_token(cluster_secret(pair.db_url))


def raw(pair: HaPair, node: str, data: bytes) -> tuple[int, bytes]:
    """Send raw bytes to `node`'s admin port; (status, body) of the answer."""
    with socket.create_connection(("127.0.0.1", pair.ports[node][2]), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def rpc(pair: HaPair, node: str, body: bytes, auth: str | None) -> tuple[int, dict]:
    headers = f"Authorization: Bearer {auth}\r\n" if auth is not None else ""
    head = f"POST /rpc HTTP/1.0\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
    status, answer = raw(pair, node, head.encode() + body)
    return status, json.loads(answer)


@pytest.mark.parametrize("auth", [None, "", "wrong", admin_token("another cluster's secret")])
def test_rpc_without_the_right_token_is_rejected_and_logged(pair: HaPair, auth: str | None) -> None:
    status, answer = rpc(pair, "n1", b'{"op": "failover"}', auth)
    assert (status, answer) == (401, {"ok": False, "error": "missing or wrong admin token"})
    assert "rejected POST /rpc from 127.0.0.1" in pair.nodes["n1"].log()
    assert pair.pair() == {"n1": ("Normal", "Normal"), "n2": ("Normal", "Normal")}  # nothing happened


def test_admin_port_listens_on_loopback_only(pair: HaPair) -> None:
    port = pair.ports["n1"][2]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet sent: only picks this host's outward address
        outward = probe.getsockname()[0]
    if outward.startswith("127."):
        pytest.skip("this host has no non-loopback address to test with")
    with pytest.raises(OSError):  # noqa: PT011 -- refused, unreachable or timed out: each is a pass
        socket.create_connection((outward, port), timeout=2).close()
    socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{oops", 400, "malformed JSON"),
        (b'{"op": "reboot"}', 400, "op must be one of"),
        (b'{"op": "status", "node": "n2"}', 404, "unknown node 'n2': this is node 'n1'"),
        (b'{"op": "service.stop", "service": "nosuch"}', 404, "unknown service 'nosuch'"),
        (b'{"op": "service.stop", "service": "sip-proxy"}', 409, "not applicable"),
        (b'{"op": "fallback"}', 409, "fallback is not possible while n1 is Normal"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_node_carries_on(pair: HaPair, body: bytes, status: int,
                                                              words: str) -> None:
    got, answer = rpc(pair, "n1", body, token(pair))
    assert got == status and answer["ok"] is False and words in answer["error"], answer
    ok, answer = rpc(pair, "n1", b'{"op": "status"}', token(pair))
    assert ok == 200 and answer["status"]["state"] == "Normal"


def test_oversize_and_garbage_requests(pair: HaPair) -> None:
    big = b"x" * (MAX_BODY_BYTES + 1)
    status, _ = raw(pair, "n1", f"POST /rpc HTTP/1.0\r\nContent-Length: {len(big)}\r\n\r\n".encode() + big)
    assert status == 413
    assert raw(pair, "n1", b"\x16\x03\x01 not http at all\r\n\r\n")[0] == 400
    assert raw(pair, "n1", b"POST /rpc HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")[0] == 411
    assert raw(pair, "n1", b"GET /" + b"a" * 20_000 + b" HTTP/1.0\r\n\r\n")[0] == 413
    assert rpc(pair, "n1", b'{"op": "status"}', token(pair))[0] == 200


def fetch(url: str, data: bytes | None = None, **headers: str) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) of one request; no redirect is followed."""
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, data, {k.replace("_", "-"): v for k, v in headers.items()})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_web_page_login_gives_a_session_not_the_token(pair: HaPair) -> None:
    base = pair.admin("ha", "web", "n1").strip().split("?")[0]
    status, page, _ = fetch(base)
    assert status == 401 and "type='password' name='token'" in page  # the login form
    assert fetch(base + "?token=wrong")[0] == 401
    assert "admin page: rejected a login from 127.0.0.1" in pair.nodes["n1"].log()
    status, page, headers = fetch(base + "?token=" + token(pair))
    assert status == 200 and token(pair) not in page and token(pair) not in headers["Set-Cookie"]
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "src=\"/admin.js\"" in page and "http://" not in page  # served by the node itself
    cookie = headers["Set-Cookie"].split(";")[0]
    status, body, _ = fetch(base + "api/overview", Cookie=cookie)
    data = json.loads(body)
    assert status == 200 and data["node"] == "n1"
    (group,) = data["groups"]
    for node in group["nodes"]:  # each node's live status, through its own admin RPC
        assert (node["alive"], node["state"], node["reason"]) == (True, "Normal", "Normal")
        assert [b["op"] for b in node["buttons"]][:1] == ["failover"]
        assert set(node["sessions"]) >= {"JsmSessionsClient", "JsmSessionsClientInactive"}
        assert {s["name"] for s in node["services"]} >= {"xcp-router", "presence-engine"}
        assert node["users"] == {"assigned": 1, "served": 1}
    assert fetch(base + "api/overview")[0] == 401


def action(base: str, body: dict, **headers: str) -> tuple[int, dict]:
    status, answer, _ = fetch(base + "api/action", json.dumps(body).encode(), Content_Type="application/json",
                              **headers)
    return status, json.loads(answer)


def test_the_cookie_alone_never_acts(pair: HaPair) -> None:
    """Issue #19 item 6: no request that a browser would send by itself can act."""
    base = pair.admin("ha", "web", "n1").strip().split("?")[0]
    _, page, headers = fetch(base + "?token=" + token(pair))
    cookie = headers["Set-Cookie"].split(";")[0]
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page).group(1)
    rpc_body = b'{"op": "failover", "node": "n2"}'
    for extra in ({"Cookie": cookie}, {}):  # /rpc: the bearer header only, never the cookie or the query
        status, _, _ = fetch(base + "rpc", rpc_body, Content_Type="application/json", **extra)
        assert status == 401
    assert fetch(base + "rpc?token=" + token(pair), rpc_body)[0] == 401
    assert action(base, {"op": "failover", "node": "n2"}, Cookie=cookie)[0] == 403  # no CSRF token
    foreign = {"Cookie": cookie, "X_CSRF_Token": csrf, "Origin": "http://127.0.0.1:8000"}
    assert action(base, {"op": "failover", "node": "n2"}, **foreign)[0] == 403
    pair.wait_for({"n1": ("Normal", "Normal"), "n2": ("Normal", "Normal")}, deadline_s=2)  # nothing happened
    assert "rejected POST /api/action from 127.0.0.1" in pair.nodes["n1"].log()

    status, answer = action(base, {"op": "failover", "node": "n2"}, Cookie=cookie, X_CSRF_Token=csrf,
                            Origin=base.rstrip("/"))
    assert status == 200 and answer["notes"][0].startswith("failover n2: ")  # forwarded by n1 to n2's admin RPC
    pair.wait_for({"n1": ("Running in Backup Mode", "On Admin Request"), "n2": ("Idle", "On Admin Request")})
    _, body, _ = fetch(base + "api/overview", Cookie=cookie)
    n1, n2 = json.loads(body)["groups"][0]["nodes"]
    assert [b["op"] for b in n2["buttons"]][:1] == ["fallback"] and "failover" not in [b["op"] for b in n1["buttons"]]
    status, answer = action(base, {"op": "fallback", "node": "n2"}, Authorization=f"Bearer {token(pair)}")
    assert status == 200, answer
    pair.wait_normal()


def test_a_node_without_its_database_still_serves_the_page(pair: HaPair) -> None:
    """SPEC §6 row 13 on the page: n1 lost the database; its page shows both nodes' live
    states over its last database read, and says the database is unreachable."""
    if not is_postgres(pair.db_url):
        pytest.skip("SQLite is one embedded file shared by both processes: one node cannot lose it alone")
    base = pair.admin("ha", "web", "n1").strip().split("?")[0]
    bearer = {"Authorization": f"Bearer {token(pair)}"}
    assert json.loads(fetch(base + "api/overview", **bearer)[1])["database"] == {"ok": True}
    pair.cut_database("n1")
    try:
        pair.wait_for({"n1": ("Failed Over with Critical Services Not Running", "Database Failure"),
                       "n2": ("Running in Backup Mode", "Database Failure")})
        status, body, _ = fetch(base + "api/overview", **bearer)
        data = json.loads(body)
        assert status == 200 and data["database"]["ok"] is False and data["database"]["as_of"]
        n1, n2 = data["groups"][0]["nodes"]
        assert (n1["alive"], n1["reason"], n2["alive"], n2["state"]) == (
            True, "Database Failure", True, "Running in Backup Mode")
    finally:
        pair.heal_database("n1")
    pair.wait_for({"n1": ("Failed Over", "Database Failure")})
    pair.admin("ha", "fallback", "n1")
    pair.wait_normal()
