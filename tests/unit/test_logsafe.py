"""The log sanitizer (issue #19 item 9): no forged lines, no huge values."""

from __future__ import annotations

from presence_ha.server.xmpp.logsafe import MAX_CHARS, untrusted


def test_ordinary_text_is_kept_as_is():
    for text in ("alice", "alice@example.test/Phone 1", "ünïcödé"):
        assert untrusted(text) == text


def test_line_breaks_and_controls_are_escaped():
    forged = "bob\n2026-12-07 05:00:00 INFO login of admin accepted"
    assert "\n" not in untrusted(forged) and untrusted(forged).startswith("bob\\n2026")
    assert untrusted("a\rb\x1b[31mc\x00") == "a\\rb\\x1b[31mc\\x00"
    assert untrusted("x\u2028y\u2029z\u202ew\u200b") == "x\\u2028y\\u2029z\\u202ew\\u200b"
    assert untrusted("a\\nb") == "a\\\\nb"  # the peer's own backslash cannot pose as an escape


def test_long_values_are_truncated_with_their_length():
    out = untrusted("u" * 256_000)
    assert out == "u" * MAX_CHARS + f"...(+{256_000 - MAX_CHARS} chars)"
    assert untrusted("\n" * 1000, limit=4) == "\\n\\n\\n\\n...(+996 chars)"


def test_non_text_values_are_made_text():
    assert untrusted(None) == "None" and untrusted(ValueError("bad\nline")) == "bad\\nline"
