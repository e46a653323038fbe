"""`Endpoint.parse`: the see-other-host text and `--server` (RFC 6120 §4.9.3.19)."""

from __future__ import annotations

import pytest

from presence_ha.client.policy import Endpoint


@pytest.mark.parametrize(("text", "expected"), [
    ("node1.example:5223", Endpoint("node1.example", 5223)),
    ("127.0.0.1:15222", Endpoint("127.0.0.1", 15222)),
    ("example.test", Endpoint("example.test", 5222)),
    ("[::1]:5333", Endpoint("::1", 5333)),
    ("[2001:db8::1]", Endpoint("2001:db8::1", 5222)),
])
def test_parse(text: str, expected: Endpoint) -> None:
    assert Endpoint.parse(text) == expected


def test_round_trip() -> None:
    for endpoint in (Endpoint("h", 1), Endpoint("::1", 2)):
        assert Endpoint.parse(str(endpoint)) == endpoint
