"""Sessions and CSRF tokens of the admin page (issue #19 item 6)."""

from __future__ import annotations

import pytest

from presence_ha.server.net.admin_session import (
    SESSION_TTL_S,
    csrf_token,
    csrf_valid,
    issue_session,
    same_origin,
    session_cookie,
    session_valid,
)

TOKEN = "a" * 64
NOW = 1_800_000_000.0


def test_a_session_is_valid_for_its_token_until_it_expires() -> None:
    session = issue_session(TOKEN, NOW, b"\x01" * 16)
    assert TOKEN not in session
    assert session_valid(TOKEN, session, NOW) and session_valid(TOKEN, session, NOW + SESSION_TTL_S)
    assert not session_valid(TOKEN, session, NOW + SESSION_TTL_S + 1)
    assert not session_valid(TOKEN, session, NOW - 10)  # issued in the future: forged clock
    assert not session_valid("b" * 64, session, NOW)  # another cluster (or a new secret)


@pytest.mark.parametrize("forged", [None, "", "x", "1.2", "1.2.3.4", f"{int(NOW)}.{'01' * 16}.{'0' * 64}"])
def test_forged_sessions_are_invalid(forged: str | None) -> None:
    assert not session_valid(TOKEN, forged, NOW)


def test_a_later_issue_time_does_not_keep_the_mac() -> None:
    issued, nonce, mac = issue_session(TOKEN, NOW, b"\x02" * 16).split(".")
    assert not session_valid(TOKEN, f"{int(issued) + 3600}.{nonce}.{mac}", NOW + 3600)


def test_csrf_token_belongs_to_its_session() -> None:
    one, two = issue_session(TOKEN, NOW, b"\x01" * 16), issue_session(TOKEN, NOW, b"\x02" * 16)
    assert csrf_valid(TOKEN, one, csrf_token(TOKEN, one))
    assert not csrf_valid(TOKEN, one, csrf_token(TOKEN, two))
    assert not csrf_valid(TOKEN, one, None) and not csrf_valid(TOKEN, one, "")
    assert csrf_token(TOKEN, one) != TOKEN


@pytest.mark.parametrize(
    ("headers", "same"),
    [
        ({"host": "127.0.0.1:20075"}, True),  # curl: no Origin
        ({"host": "127.0.0.1:20075", "origin": "http://127.0.0.1:20075", "sec-fetch-site": "same-origin"}, True),
        ({"host": "127.0.0.1:20075", "origin": "http://127.0.0.1:8000"}, False),  # another port: another origin
        ({"host": "127.0.0.1:20075", "origin": "null"}, False),
        ({"host": "127.0.0.1:20075", "sec-fetch-site": "same-site"}, False),
        ({"host": "127.0.0.1:20075", "sec-fetch-site": "cross-site"}, False),
    ],
)
def test_same_origin(headers: dict[str, str], same: bool) -> None:
    assert same_origin(headers) is same


def test_session_cookie_is_http_only_and_strict() -> None:
    name, value = session_cookie("v")
    assert name == "Set-Cookie" and "HttpOnly" in value and "SameSite=Strict" in value and "Path=/" in value
    assert "Max-Age=0" in session_cookie("", 0)[1]
