"""Mutual HMAC challenge-response: who gets in, who does not, and what each side sees."""

import hmac

import pytest

from presence_ha.server.link import frames as f
from presence_ha.server.link.frames import Kind
from presence_ha.server.link.protocol import ConnState, HandshakeComplete, LinkConnection, Message, ProtocolFailed, Role
from presence_ha.server.link.state import LinkConfig, LocalProtocolError

from .helpers import SECRET, Pair, node, nonce, session

WRONG = b"not-the-cluster-secret-at-all!!"


def test_handshake_succeeds_and_names_each_peer():
    pair = Pair(node("a", 1), node("b", 2))
    pair.run()
    assert pair.a.of(HandshakeComplete) == [HandshakeComplete("b", session(2), False)]
    assert pair.b.of(HandshakeComplete) == [HandshakeComplete("a", session(1), False)]
    assert pair.a.conn.state is pair.b.conn.state is ConnState.ESTABLISHED
    assert pair.failures() == []


def test_the_secret_never_crosses_the_wire():
    pair = Pair(node("a", 1), node("b", 2))
    pair.send(pair.a, Kind.STANZA, b"hello")
    pair.run()
    assert pair.established()
    assert SECRET not in pair.wire and SECRET[:8] not in pair.wire


@pytest.mark.parametrize("wrong_side", ["a", "b"])
def test_wrong_secret_on_either_side_fails_both(wrong_side):
    a = node("a", 1, WRONG if wrong_side == "a" else SECRET)
    b = node("b", 2, WRONG if wrong_side == "b" else SECRET)
    pair = Pair(a, b)
    pair.send(pair.a, Kind.STANZA, b"must not arrive")
    pair.run()
    assert not pair.a.of(HandshakeComplete) and not pair.b.of(HandshakeComplete)
    assert "wrong cluster secret" in pair.a.of(ProtocolFailed)[0].reason
    assert "peer reported" in pair.b.of(ProtocolFailed)[0].reason
    assert pair.b.received() == []


def _responder_after_hello(links, name="mallory"):
    """A responder that got a HELLO from `name`; returns (conn, hello body, challenge body)."""
    conn = LinkConnection(Role.RESPONDER, links, nonce())
    hello = f.encode_hello(f.Hello(nonce(), session(66), 1, name))
    conn.receive_data(f.frame(hello))
    out = conn.data_to_send()
    return conn, hello, out[4:]


def test_initiator_that_cannot_prove_the_secret_is_refused():
    b = node("b", 2)
    conn, _, challenge = _responder_after_hello(b)
    assert f.decode_challenge(challenge).name == "b"
    conn.receive_data(f.frame(f.encode_auth_unproven(0) + b"\x00" * 32))
    [failed] = [e for e in conn.events() if isinstance(e, ProtocolFailed)]
    assert "failed authentication" in failed.reason
    assert conn.state is ConnState.FAILED
    assert conn.data_to_send()[4] == f.FrameType.ERROR
    assert "mallory" not in b._links  # an unauthenticated name leaves no state behind


def test_replayed_initiator_handshake_is_refused():
    a, b = node("a", 1), node("b", 2)
    pair = Pair(a, b)
    pair.run()
    recorded = pair.wire  # HELLO, CHALLENGE, AUTH, ...
    frames, reader = [], f.FrameReader(1 << 20)
    reader.feed(bytes(recorded))
    while (body := reader.next_body()) is not None:
        frames.append(body)
    hello, auth = frames[0], frames[2]
    victim = LinkConnection(Role.RESPONDER, b, nonce())
    victim.receive_data(f.frame(hello) + f.frame(auth))
    events = victim.events()
    assert not any(isinstance(e, HandshakeComplete) for e in events)
    assert "failed authentication" in events[-1].reason


def test_replayed_challenge_is_refused():
    a, b = node("a", 1), node("b", 2)
    pair = Pair(a, b)
    pair.run()
    reader = f.FrameReader(1 << 20)
    reader.feed(bytes(pair.wire))
    reader.next_body()
    challenge = reader.next_body()
    fresh = LinkConnection(Role.INITIATOR, a, nonce(), "b")
    fresh.receive_data(f.frame(challenge))
    [failed] = fresh.events()
    assert "failed authentication" in failed.reason


def test_initiator_checks_the_expected_peer_name():
    pair = Pair(node("a", 1), node("b", 2), expected="c")
    pair.run()
    assert "expected peer 'c', got 'b'" in pair.a.of(ProtocolFailed)[0].reason
    assert not pair.b.of(HandshakeComplete)


def test_responder_checks_allowed_peers():
    pair = Pair(node("a", 1), node("b", 2, allowed_peers=frozenset({"c"})))
    pair.run()
    assert "not an allowed cluster node" in pair.b.of(ProtocolFailed)[0].reason
    assert "peer reported" in pair.a.of(ProtocolFailed)[0].reason


def test_peer_claiming_our_own_name_is_refused():
    pair = Pair(node("b", 1), node("b", 2), expected="b")
    pair.run()
    assert "our own name" in pair.b.of(ProtocolFailed)[0].reason


def test_other_protocol_version_is_refused():
    conn = LinkConnection(Role.RESPONDER, node("b", 2), nonce())
    conn.receive_data(f.frame(f.encode_hello(f.Hello(nonce(), session(1), 1, "a", version=9))))
    assert "version 9" in conn.events()[0].reason


@pytest.mark.parametrize("garbage", [
    b"\x00\x00\x00\x05\xffjunk",                    # unknown frame type
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",          # a stray HTTP client: huge "length"
    f.frame(f.encode_ack(3)),                       # valid frame, wrong state
    f.frame(b"\x01short"),                          # truncated HELLO
])
def test_garbage_before_the_handshake_fails_cleanly(garbage):
    conn = LinkConnection(Role.RESPONDER, node("b", 2), nonce())
    conn.receive_data(garbage)
    [failed] = conn.events()
    assert isinstance(failed, ProtocolFailed)
    assert conn.data_to_send()[4] == f.FrameType.ERROR
    conn.receive_data(garbage)  # a failed connection ignores further input
    assert conn.events() == [] and conn.data_to_send() == b""


def test_oversized_frame_after_the_handshake():
    pair = Pair(node("a", 1, max_frame_size=2048), node("b", 2, max_frame_size=2048))
    pair.run()
    pair.b.conn.receive_data((4096).to_bytes(4, "big"))
    pair.b.collect()
    assert "4096 bytes exceeds the maximum of 2048" in pair.b.of(ProtocolFailed)[0].reason


def test_oversized_payload_is_a_local_error():
    pair = Pair(node("a", 1, max_frame_size=2048), node("b", 2))
    with pytest.raises(LocalProtocolError, match="exceeds"):
        pair.a.conn.send(Message(Kind.STANZA, b"x" * 2048))


def test_tampered_data_frame_ends_the_link():
    pair = Pair(node("a", 1), node("b", 2))
    pair.run()
    pair.send(pair.a, Kind.STANZA, b"pay 10")
    pair.a.pipe[-20] ^= 0x01  # flip one payload bit
    pair.run()
    assert pair.b.received() == []
    assert "authentication tag" in pair.b.of(ProtocolFailed)[0].reason


def test_data_replayed_into_a_new_connection_is_refused():
    a, b = node("a", 1), node("b", 2)
    first = Pair(a, b)
    first.run()
    first.send(first.a, Kind.STANZA, b"once")
    captured = bytes(first.a.pipe)
    first.run()
    second = Pair(a, b)
    second.run()
    second.b.conn.receive_data(captured)
    second.b.collect()
    assert second.b.received() == []
    assert "authentication tag" in second.b.of(ProtocolFailed)[0].reason


def test_injected_unsealed_data_is_refused():
    pair = Pair(node("a", 1), node("b", 2))
    pair.run()
    pair.b.conn.receive_data(f.frame(f.encode_data(1, 0, Kind.STANZA, b"forged" + b"\0" * 16)))
    pair.b.collect()
    assert pair.b.received() == []
    assert pair.b.of(ProtocolFailed)


def test_keys_differ_per_direction_and_connection():
    # A frame a sent cannot be reflected back to a as if b had sent it.
    pair = Pair(node("a", 1), node("b", 2))
    pair.run()
    pair.send(pair.a, Kind.STANZA, b"reflect me")
    pair.a.conn.receive_data(bytes(pair.a.pipe))
    pair.a.collect()
    assert pair.a.received() == [] and pair.a.of(ProtocolFailed)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"secret": b"short"}, "secret"),
    ({"session_id": b"x"}, "session_id"),
    ({"local_name": ""}, "name"),
    ({"max_frame_size": 100}, "max_frame_size"),
])
def test_bad_config_is_a_local_error(kwargs, message):
    base = {"local_name": "a", "secret": SECRET, "session_id": session(1)}
    with pytest.raises(LocalProtocolError, match=message):
        LinkConfig(**{**base, **kwargs})


def test_initiator_needs_a_peer_name_and_a_proper_nonce():
    with pytest.raises(LocalProtocolError):
        LinkConnection(Role.INITIATOR, node("a", 1), nonce())
    with pytest.raises(LocalProtocolError):
        LinkConnection(Role.RESPONDER, node("a", 1), b"short")


def test_proofs_are_hmac_sha256_over_the_transcript():
    # Independent check of the documented construction, so the wire format is pinned.
    pair = Pair(node("a", 1), node("b", 2))
    pair.deliver(pair.a)
    hello = bytes(pair.wire[4:])
    challenge = bytes(pair.b.pipe[4:])
    expected = hmac.digest(SECRET, b"presence-ha/link/1 responder" + hello + challenge[:-32],
                           "sha256")
    assert challenge[-32:] == expected
