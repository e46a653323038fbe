"""Wire format: round trips, stream splitting at every byte boundary, size limits."""

import pytest

from presence_ha.server.link import frames as f
from presence_ha.server.link.frames import FrameError, FrameReader, Kind


def test_hello_round_trip():
    hello = f.Hello(b"n" * 16, b"s" * 16, 7, "node-ä")
    assert f.decode_hello(f.encode_hello(hello)) == hello


def test_challenge_round_trip():
    ch = f.Challenge(b"n" * 16, b"s" * 16, 3, 9, "b", b"p" * 32)
    assert f.decode_challenge(f.encode_challenge_unproven(ch) + ch.proof) == ch


def test_data_round_trip():
    body = f.encode_data(5, 4, Kind.CONTROL, b"xyz")
    assert f.decode_data(body) == f.Data(5, 4, Kind.CONTROL, b"xyz")


def test_a_sealed_data_frame_is_the_framed_body_and_its_tag():
    seal = lambda head, payload: b"T" * 16 + head[:1] + payload[:1]  # noqa: E731 - depends on both parts
    body = f.encode_data(7, 6, Kind.STANZA, b"payload")
    expected = f.frame(body + seal(body[:f.DATA_HEADER_LEN], b"payload"))
    assert f.data_frame(7, 6, Kind.STANZA, b"payload", seal) == expected
    reader = FrameReader(1024)
    reader.feed(f.frame(b"an earlier frame") + f.data_frame(7, 6, Kind.STANZA, b"payload", seal))
    first = reader.next_span()
    assert reader.buffer[first[0] : first[1]] == b"an earlier frame"
    start, end = reader.next_span()  # a span of the same buffer: no copy
    assert f.decode_data_header(reader.buffer, start, end) == (7, 6, Kind.STANZA)
    assert reader.buffer[start + f.DATA_HEADER_LEN : end - 18] == b"payload"


@pytest.mark.parametrize(("body", "message"), [
    (f.encode_hello(f.Hello(b"n" * 16, b"s" * 16, 1, "a"))[:-2], "name"),
    (f.encode_hello(f.Hello(b"n" * 16, b"s" * 16, 1, "a")) + b"x", "name"),
    (f.encode_hello(f.Hello(b"n" * 16, b"s" * 16, 0, "a")), "first unacked"),
    (f.encode_data(1, 0, Kind.STANZA, b"")[:-1] + b"\x09", "kind"),
    (f.encode_ack(1) + b"\0", "ACK"),
    (b"\x03" + b"\0" * 8, "AUTH"),
])
def test_malformed_bodies_are_frame_errors(body, message):
    decoder = {1: f.decode_hello, 3: f.decode_auth, 4: f.decode_data, 5: f.decode_ack}[body[0]]
    with pytest.raises(FrameError, match=message):
        decoder(body)


def test_name_too_long_is_refused_locally():
    with pytest.raises(ValueError, match="node name must be"):
        f.encode_hello(f.Hello(b"n" * 16, b"s" * 16, 1, "x" * 256))


def test_reader_splits_a_stream_fed_byte_by_byte():
    bodies = [b"\x05" + bytes([i]) * i for i in range(1, 40)]
    stream = b"".join(f.frame(b) for b in bodies)
    reader, got = FrameReader(1024), []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        while (body := reader.next_body()) is not None:
            got.append(body)
    assert got == bodies


def test_reader_refuses_an_oversized_frame_from_its_header_alone():
    reader = FrameReader(1024)
    reader.feed((1025).to_bytes(4, "big"))  # no body bytes at all yet
    with pytest.raises(FrameError, match="1025 bytes exceeds the maximum of 1024"):
        reader.next_body()


def test_reader_accepts_exactly_the_maximum():
    reader = FrameReader(1024)
    reader.feed(f.frame(b"\x04" + b"x" * 1023))
    assert len(reader.next_body()) == 1024


def test_reader_refuses_an_empty_frame():
    reader = FrameReader(1024)
    reader.feed(b"\0\0\0\0")
    with pytest.raises(FrameError, match="empty"):
        reader.next_body()
