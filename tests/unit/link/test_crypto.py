"""The link's MACs: handshake MACs are HMAC-SHA256 (RFC 2104); frame tags are keyed
BLAKE2b-128 (RFC 7693), the same as hashlib's one-shot keyed hash, only cheaper to repeat."""

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from presence_ha.server.link.crypto import TAG_LEN, FrameTag, mac


@given(st.binary(max_size=200), st.lists(st.binary(max_size=3000), max_size=4))
def test_mac_is_hmac_sha256(key, parts):
    assert mac(key, *parts) == hmac.digest(key, b"".join(parts), "sha256")


@given(st.binary(min_size=1, max_size=64), st.integers(0, 2**62), st.binary(max_size=3000), st.binary(max_size=300))
def test_frame_tag_is_keyed_blake2b_over_counter_and_body(key, counter, body, more):
    expected = hashlib.blake2b(counter.to_bytes(8, "big") + body + more, key=key, digest_size=TAG_LEN).digest()
    assert FrameTag(key).tag(counter, body, more) == expected and len(expected) == 16


def test_frame_tag_is_reusable_and_keyed():
    frame_tag = FrameTag(b"k" * 32)
    first = frame_tag.tag(1, b"one")
    frame_tag.tag(2, b"two")
    assert frame_tag.tag(1, b"one") == first != FrameTag(b"j" * 32).tag(1, b"one") != frame_tag.tag(2, b"one")


@pytest.mark.parametrize("key", [b"", b"k" * 65])
def test_frame_tag_refuses_a_bad_key(key):
    with pytest.raises(ValueError, match="frame key must be"):
        FrameTag(key)
