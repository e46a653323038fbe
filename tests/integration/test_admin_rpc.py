"""The admin RPC and web page of real node processes (SPEC §7).

Scenarios: a request without the token or with a wrong one gets 401 and a log line;
the admin port listens on loopback only; malformed, oversize or misaddressed requests
get clear errors and the node carries on; the web page shows each node's state and
reason and only the buttons the state allows, and its buttons act.
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

from presence_ha.db.clusters import cluster_secret
from presence_ha.server.net.admin_rpc import MAX_BODY_BYTES, admin_token
from tests.conftest import _new_postgres_url, _pg_drop
from tests.integration.test_admin_pair import HaPair, db_read, is_postgres, start_pair

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
    return admin_token(db_read(pair.db_url, cluster_secret))


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


def fetch(url: str, data: dict | None = None) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(url, body, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode() + exc.headers.get("Location", "")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def node_row(page: str, node: str) -> str:
    return re.search(rf"<tr id='node-{node}'>.*?</tr>", page).group(0)


def test_web_page_shows_states_and_only_the_allowed_buttons(pair: HaPair) -> None:
    base = pair.admin("ha", "web", "n1").strip().split("?")[0]
    assert fetch(base)[0] == 401 and "type='password' name='token'" in fetch(base)[1]  # the login form
    assert fetch(base + "?token=wrong")[0] == 401
    status, page = fetch(base + "?token=" + token(pair))
    assert status == 200 and "<script" not in page and "src=" not in page and "href=" not in page
    for node in ("n1", "n2"):
        row = node_row(page, node)
        assert "<td class='state'>Normal</td><td class='reason'>Normal</td>" in row
        assert f"id='failover-{node}'" in row and "fallback" not in row  # Normal: failover only
    assert "id='recover-g1'" not in page  # not a failed group
    assert fetch(base + "action", {"token": "wrong", "op": "failover", "node": "n2"})[0] == 401
    pair.wait_for({"n1": ("Normal", "Normal"), "n2": ("Normal", "Normal")}, deadline_s=2)
    status, location = fetch(base + "action", {"token": token(pair), "op": "failover", "node": "n2"})
    assert status == 303 and "failover%20n2" in location  # forwarded by n1 to n2's admin RPC
    pair.wait_for({"n1": ("Running in Backup Mode", "On Admin Request"), "n2": ("Idle", "On Admin Request")})
    page = fetch(base + "?token=" + token(pair))[1]
    assert "<td class='state'>Idle</td><td class='reason'>On Admin Request</td>" in node_row(page, "n2")
    assert "id='fallback-n2'" in node_row(page, "n2") and "<form" not in node_row(page, "n1")
    status, _ = fetch(base + "action", {"token": token(pair), "op": "fallback", "node": "n2"})
    assert status == 303
    pair.wait_normal()
