"""The per-frame MAC is exactly HMAC-SHA256 (RFC 2104), only faster to repeat."""

import hmac

from hypothesis import given
from hypothesis import strategies as st

from server.link.crypto import FrameMac, mac


@given(st.binary(max_size=200), st.lists(st.binary(max_size=3000), max_size=4))
def test_frame_mac_equals_hmac_sha256(key, parts):
    expected = hmac.digest(key, b"".join(parts), "sha256")
    assert FrameMac(key).digest(*parts) == expected == mac(key, *parts)


def test_frame_mac_is_reusable():
    frame_mac = FrameMac(b"k" * 32)
    first = frame_mac.digest(b"one")
    frame_mac.digest(b"two")
    assert frame_mac.digest(b"one") == first
