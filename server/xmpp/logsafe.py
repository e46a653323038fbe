"""Untrusted text made safe for one log line: `untrusted(value)`.

Rules of this module:
- Every value a peer chose (a SASL username, a JID or stanza id before it is checked, an
  error text quoting input) goes through `untrusted` before it reaches a log record's
  arguments, so a peer cannot forge log lines nor flood the log.
- Control, format, surrogate, private-use, unassigned and line/paragraph-separator
  characters (Unicode categories C*, Zl, Zp: newline, carriage return, ESC, bidi
  overrides, zero-width characters...) are written as Python escapes (`\\n`, `\\x1b`,
  `\\u202e`); a backslash is doubled, so an escape in the log is never the peer's text.
- At most `limit` characters (default `MAX_CHARS`) of the value are kept; the rest is
  replaced by `...(+N chars)`. Ordinary text (printable ASCII within the limit) is
  returned as it is, at the cost of two checks.
"""

from __future__ import annotations

import unicodedata

MAX_CHARS = 128
_UNSAFE_SPACES = frozenset(("Zl", "Zp"))


def _escape(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    cat = unicodedata.category(ch)
    if cat[0] != "C" and cat not in _UNSAFE_SPACES:
        return ch
    escaped = repr(ch)[1:-1]  # '\n', '\x1b', '\u202e'...
    if escaped == ch or not escaped.startswith("\\"):  # repr kept it: spell the code point out
        code = ord(ch)
        escaped = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
    return escaped


def untrusted(value: object, limit: int = MAX_CHARS) -> str:
    """`value` (made text with `str`) escaped and truncated for one log line."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and text.isascii() and text.isprintable() and "\\" not in text:
        return text
    extra = len(text) - limit
    head = text[:limit] if extra > 0 else text
    safe = "".join(map(_escape, head))
    return f"{safe}...(+{extra} chars)" if extra > 0 else safe
