"""The admin RPC's pure parts: the token, HTTP heads, JSON operations, answers."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from presence_ha.server.net.admin_rpc import (
    MAX_BODY_BYTES,
    OPS,
    AdminRpcError,
    HttpError,
    HttpRequest,
    HttpResponse,
    RpcCall,
    _parse_answer,
    admin_token,
    body_length,
    parse_call,
    parse_head,
    to_json,
    token_matches,
)
from presence_ha.server.srm.table import NodeState


def test_token_is_hmac_sha256_of_the_cluster_secret() -> None:
    expected = hmac.new(b"s3cret", b"admin-rpc", hashlib.sha256).hexdigest()
    assert admin_token("s3cret") == expected
    assert admin_token("s3cret") != admin_token("other")


@pytest.mark.parametrize("given", [None, "", "x", admin_token("other")])
def test_wrong_or_missing_token_never_matches(given: str | None) -> None:
    assert not token_matches(admin_token("s3cret"), given)


def test_right_token_matches() -> None:
    assert token_matches(admin_token("s3cret"), admin_token("s3cret"))


def test_parse_head_reads_method_path_query_and_headers() -> None:
    method, path, query, headers = parse_head(
        b"GET /?token=abc&note=hi%20there HTTP/1.1\r\nHost: x\r\nCookie: a=b"
    )
    assert (method, path) == ("GET", "/")
    assert query == {"token": "abc", "note": "hi there"}
    assert headers == {"host": "x", "cookie": "a=b"}


@pytest.mark.parametrize(
    "head", [b"GARBAGE", b"GET / SPDY/3", b"GET /\r\n", b"GET / HTTP/1.0\r\nno colon here", b"G-T / HTTP/1.0"])
def test_parse_head_rejects_malformed_heads(head: bytes) -> None:
    with pytest.raises(HttpError) as caught:
        parse_head(head)
    assert caught.value.status == 400


def test_body_length_limits() -> None:
    assert body_length("GET", {}) == 0
    assert body_length("POST", {"content-length": "12"}) == 12
    with pytest.raises(HttpError) as too_big:
        body_length("POST", {"content-length": str(MAX_BODY_BYTES + 1)})
    assert too_big.value.status == 413
    for headers, status in (({}, 411), ({"transfer-encoding": "chunked"}, 411), ({"content-length": "-1"}, 400)):
        with pytest.raises(HttpError) as caught:
            body_length("POST", headers)
        assert caught.value.status == status


def test_parse_call_accepts_every_operation() -> None:
    for op in OPS:
        call = parse_call(json.dumps({"op": op, "node": "n1", "service": "router"}).encode())
        assert call == RpcCall(op, "n1", "router")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"op": "reboot"}', "op must be one of"),
        (b'{"op": "status", "extra": 1}', "unknown field 'extra'"),
        (b'{"op": "status", "node": 5}', "node must be a string"),
        (b'{"op": "service.stop"}', "needs a service"),
    ],
)
def test_parse_call_rejects_bad_input_with_a_clear_message(body: bytes, words: str) -> None:
    with pytest.raises(HttpError) as caught:
        parse_call(body)
    assert caught.value.status == 400 and words in caught.value.message


def test_request_token_sources() -> None:
    bearer = HttpRequest("POST", "/rpc", {}, {"authorization": "Bearer abc"})
    cookie = HttpRequest("GET", "/", {}, {"cookie": "presence_ha_admin=xyz; other=1"})
    assert bearer.bearer() == "abc" and bearer.cookie("presence_ha_admin") is None
    assert cookie.cookie("presence_ha_admin") == "xyz" and cookie.bearer() is None
    assert HttpRequest("POST", "/rpc", {}, {"authorization": "Basic abc"}).bearer() is None
    form = HttpRequest("POST", "/action", {}, {}, b"token=t&op=failover&node=n%201")
    assert form.form() == {"token": "t", "op": "failover", "node": "n 1"}


def test_response_encoding_and_answer_parsing_round_trip() -> None:
    raw = HttpResponse(409, b'{"ok": false, "error": "not Normal"}').encode()
    assert raw.startswith(b"HTTP/1.0 409 Conflict\r\n") and b"Content-Length: 36\r\n" in raw
    with pytest.raises(AdminRpcError) as refused:
        _parse_answer(raw, "here")
    assert refused.value.status == 409 and str(refused.value) == "not Normal"
    ok = HttpResponse(200, b'{"ok": true, "x": 1}').encode()
    assert _parse_answer(ok, "here") == {"ok": True, "x": 1}
    with pytest.raises(AdminRpcError, match="malformed answer"):
        _parse_answer(b"junk", "here")


def test_to_json_renders_enums_as_spec_words() -> None:
    assert to_json({"state": NodeState.RUNNING_IN_BACKUP_MODE, "pair": (NodeState.IDLE, None)}) == {
        "state": "Running in Backup Mode", "pair": ["Idle", None],
    }
