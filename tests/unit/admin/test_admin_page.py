"""The admin page's routes: login, the session cookie, CSRF and origin checks, actions.

The page's backend (overview, group members, dispatch to a node) is a recording stand-in
here; the real one, against real node processes and a real browser, is tested in
tests/integration/test_admin_rpc.py and test_admin_browser.py.
"""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from typing import Any

import pytest

from presence_ha.server.net.admin_page import AdminPage, render_shell
from presence_ha.server.net.admin_rpc import AdminRpcError, HttpRequest, HttpResponse, RpcCall
from presence_ha.server.net.admin_session import SESSION_COOKIE, csrf_token

TOKEN = "t" * 64
HOST = "127.0.0.1:20075"


class Backend:
    def __init__(self) -> None:
        self.calls: list[tuple[RpcCall, str]] = []

    async def overview(self) -> dict[str, Any]:
        return {"node": "n1", "groups": [], "events": []}

    async def members(self, group: str) -> list[str]:
        return ["n1", "n2"] if group == "g1" else []

    async def dispatch(self, call: RpcCall, target: str) -> dict[str, Any]:
        self.calls.append((call, target))
        if target == "n2" and call.op == "fallback":
            raise AdminRpcError("not allowed on n2 in state Normal", 409)
        return {"message": "accepted"}


@pytest.fixture
def page() -> AdminPage:
    return AdminPage("n1", TOKEN, Backend(), clock=lambda: 1_800_000_000.0)


def request(method: str, path: str, query: dict | None = None, body: bytes = b"", **headers: str) -> HttpRequest:
    named = {k.replace("_", "-"): v for k, v in headers.items()}
    return HttpRequest(method, path, query or {}, {"host": HOST, **named}, body, "127.0.0.1:5555")


def header(response: HttpResponse, name: str) -> str:
    return next((v for k, v in response.headers if k == name), "")


def session_of(response: HttpResponse) -> str:
    return SimpleCookie(header(response, "Set-Cookie"))[SESSION_COOKIE].value


async def logged_in(page: AdminPage) -> str:
    response = await page.handle(request("GET", "/", {"token": TOKEN}))
    assert response.status == 200
    return session_of(response)


async def test_login_link_gives_a_session_and_a_page_without_the_token(page: AdminPage) -> None:
    response = await page.handle(request("GET", "/", {"token": TOKEN}))
    session = session_of(response)
    body = response.body.decode()
    assert TOKEN not in body and TOKEN not in header(response, "Set-Cookie")
    assert f"value=\"{csrf_token(TOKEN, session)}\"" in body
    assert "default-src 'self'" in header(response, "Content-Security-Policy")
    assert header(response, "X-Frame-Options") == "DENY"
    again = await page.handle(request("GET", "/", cookie=f"{SESSION_COOKIE}={session}"))
    assert again.status == 200 and header(again, "Set-Cookie") == ""


async def test_without_a_valid_credential_the_page_is_the_login_form(page: AdminPage) -> None:
    for response in (await page.handle(request("GET", "/")),
                     await page.handle(request("GET", "/", {"token": "wrong"})),
                     await page.handle(request("GET", "/", cookie=f"{SESSION_COOKIE}={TOKEN}")),  # the old cookie
                     await page.handle(request("POST", "/login", body=b"token=wrong"))):
        assert response.status == 401 and b"name='token'" in response.body
    assert (await page.handle(request("GET", "/api/overview"))).status == 401


async def test_login_form_redirects_with_a_session(page: AdminPage) -> None:
    response = await page.handle(request("POST", "/login", body=f"token={TOKEN}".encode()))
    assert response.status == 303 and header(response, "Location") == "/"
    overview = await page.handle(request("GET", "/api/overview", cookie=f"{SESSION_COOKIE}={session_of(response)}"))
    assert overview.status == 200 and json.loads(overview.body) == {"ok": True, "node": "n1", "groups": [],
                                                                    "events": []}


def action(body: dict, **headers: str) -> HttpRequest:
    return request("POST", "/api/action", body=json.dumps(body).encode(), content_type="application/json", **headers)


async def test_the_cookie_alone_never_acts(page: AdminPage) -> None:
    session = await logged_in(page)
    cookie = f"{SESSION_COOKIE}={session}"
    csrf = csrf_token(TOKEN, session)
    failover = {"op": "failover", "node": "n1"}
    assert (await page.handle(action(failover, cookie=cookie))).status == 403  # no CSRF token
    assert (await page.handle(action(failover, cookie=cookie, x_csrf_token="0" * 64))).status == 403
    assert (await page.handle(action(failover, cookie=cookie, x_csrf_token=csrf,
                                     origin="http://127.0.0.1:8000"))).status == 403  # another origin
    assert (await page.handle(action(failover, cookie=cookie, x_csrf_token=csrf,
                                     sec_fetch_site="same-site"))).status == 403
    assert (await page.handle(action(failover))).status == 401
    assert page.backend.calls == []
    done = await page.handle(action(failover, cookie=cookie, x_csrf_token=csrf, origin=f"http://{HOST}",
                                    sec_fetch_site="same-origin"))
    assert done.status == 200 and json.loads(done.body) == {"ok": True, "notes": ["failover n1: accepted"]}


async def test_actions_reach_their_nodes(page: AdminPage) -> None:
    bearer = {"authorization": f"Bearer {TOKEN}"}  # a script: no cookie, no CSRF token needed
    recover = await page.handle(action({"op": "recover", "group": "g1"}, **bearer))
    assert recover.status == 200 and [(c.op, t) for c, t in page.backend.calls] == [("recover", "n1"),
                                                                                      ("recover", "n2")]
    refused = await page.handle(action({"op": "fallback", "node": "n2"}, **bearer))
    assert refused.status == 409 and json.loads(refused.body)["notes"] == [
        "fallback n2 refused: not allowed on n2 in state Normal"]
    stop = await page.handle(action({"op": "service.stop", "node": "n1", "service": "presence-engine"}, **bearer))
    assert json.loads(stop.body)["notes"] == ["presence-engine stopped on n1"]
    assert page.backend.calls[-1] == (RpcCall("service.stop", "n1", "presence-engine"), "n1")
    for bad, status in (({"op": "reboot", "node": "n1"}, 400), ({"op": "failover"}, 400),
                        ({"op": "recover", "group": "nosuch"}, 404)):
        assert (await page.handle(action(bad, **bearer))).status == status
    assert (await page.handle(request("POST", "/api/action", body=b"{oops", **bearer))).status == 400


async def test_logout_needs_the_csrf_token_and_clears_the_cookie(page: AdminPage) -> None:
    session = await logged_in(page)
    cookie = f"{SESSION_COOKIE}={session}"
    assert (await page.handle(request("POST", "/logout", cookie=cookie))).status == 403
    out = await page.handle(request("POST", "/logout", cookie=cookie, x_csrf_token=csrf_token(TOKEN, session)))
    assert out.status == 200 and "Max-Age=0" in header(out, "Set-Cookie")


async def test_assets_and_unknown_routes(page: AdminPage) -> None:
    script = await page.handle(request("GET", "/admin.js"))
    assert script.status == 200 and script.content_type.startswith("text/javascript") and b"fetch(" in script.body
    assert (await page.handle(request("GET", "/admin.css"))).status == 200
    assert (await page.handle(request("GET", "/nosuch"))).status == 404


def test_shell_escapes_the_node_name() -> None:
    shell = render_shell("n1<i>", "c'sr\"f")
    assert "n1&lt;i&gt;" in shell and "<i>" not in shell and "c&#x27;sr&quot;f" in shell
    assert "<script src=\"/admin.js\"" in shell and "http" not in shell  # no other origin
