"""The SRM peer protocol: `PeerMessage` events as JSON payloads of the node link.

Rules of this module:
- Pure: bytes in, events out (and back). No I/O, no logging.
- One JSON object per message: `{"type": TAG, "to": SESSION, ...fields}`. TAG names
  the event class (`TAGS`); fields are the event's dataclass fields, with states and
  reasons as their SPEC §6 display strings. `to` is the hex session id of the
  receiving SRM process as the sender last knew it (null: never connected); the
  receiver drops a message meant for an earlier process of itself (`Envelope.for_me`),
  so a reliable message queued for a process that died is not acted on by its
  successor.
- Strict parsing: an unknown type, a missing or extra field, a wrong JSON type or an
  unknown state/reason is `PeerProtocolError` (a protocol error the runner logs and
  counts), never another exception. The fields in `OPTIONAL` came later: a message
  without them (from an older node) takes their defaults ("database checks pass").
  The other way round does not hold: an older node's strict parser refuses a
  heartbeat that carries them, so both nodes of a pair are upgraded together.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from presence_ha.server.srm.events import (
    HeartbeatReceived,
    PeerEnteredFailedMode,
    PeerMessage,
    PeerRebooted,
    PeerReleasedUsers,
    PeerRequestedAutoRecovery,
    PeerRequestedTakeBack,
    PeerRequestedTakeover,
    PeerTookBack,
    PeerTookOver,
)
from presence_ha.server.srm.table import NodeState, Reason

MAX_MESSAGE_BYTES = 4096

TAGS: dict[str, type] = {
    "heartbeat": HeartbeatReceived,
    "requested-takeover": PeerRequestedTakeover,
    "took-over": PeerTookOver,
    "requested-take-back": PeerRequestedTakeBack,
    "released-users": PeerReleasedUsers,
    "took-back": PeerTookBack,
    "entered-failed-mode": PeerEnteredFailedMode,
    "requested-auto-recovery": PeerRequestedAutoRecovery,
    "rebooted": PeerRebooted,
}
_TAG_OF = {cls: tag for tag, cls in TAGS.items()}
_ENUMS: dict[str, type] = {"peer_state": NodeState, "peer_reason": Reason, "reason": Reason}
_BOOLS = frozenset({"peer_ha_enabled", "peer_db_ok"})
_INTS = frozenset({"peer_epoch", "epoch"})
_FLOATS = frozenset({"peer_db_age_s"})
OPTIONAL = frozenset({"peer_db_ok", "peer_db_age_s"})  # issue #17: the sender's database checks


class PeerProtocolError(ValueError):
    """The peer sent something this protocol does not allow."""


@dataclass(frozen=True)
class Envelope:
    msg: PeerMessage
    to: bytes | None  # the receiving process's session id as the sender knew it

    def for_me(self, my_session: bytes) -> bool:
        """False for a message addressed to an earlier process of this node."""
        return self.to is None or self.to == my_session


def encode(msg: PeerMessage, to: bytes | None) -> bytes:
    """The payload for `msg`, addressed to the peer process `to` (None: unknown)."""
    tag = _TAG_OF.get(type(msg))
    if tag is None:
        raise TypeError(f"{type(msg).__name__} is not a peer message")
    body: dict[str, Any] = {"type": tag, "to": to.hex() if to is not None else None}
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        body[f.name] = value.value if f.name in _ENUMS else value
    return json.dumps(body, separators=(",", ":")).encode()


def decode(payload: bytes) -> Envelope:
    """The envelope in `payload`, or `PeerProtocolError`."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise PeerProtocolError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PeerProtocolError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise PeerProtocolError("a message is a JSON object")
    cls = TAGS.get(body.pop("type", None)) if isinstance(body.get("type"), str) else None
    if cls is None:
        raise PeerProtocolError(f"unknown message type {body.get('type')!r}")
    to = _session(body.pop("to", "missing"))
    names = {f.name for f in dataclasses.fields(cls)}
    if not names - OPTIONAL <= set(body) <= names:
        raise PeerProtocolError(f"{cls.__name__} needs fields {sorted(names)}, got {sorted(body)}")
    return Envelope(cls(**{name: _field(name, value) for name, value in body.items()}), to)


def _session(value: Any) -> bytes | None:
    if value is None:
        return None
    try:
        if isinstance(value, str) and len(value) == 32:
            return bytes.fromhex(value)
    except ValueError:
        pass
    raise PeerProtocolError(f"'to' must be null or 32 hex digits, got {value!r}")


def _field(name: str, value: Any) -> Any:
    if name in _ENUMS:
        try:
            return _ENUMS[name](value)
        except ValueError:
            raise PeerProtocolError(f"{name}: {value!r} is not a SPEC §6 value") from None
    if name in _BOOLS and isinstance(value, bool):
        return value
    if name in _INTS and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if name in _FLOATS and isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e9:
        return float(value)
    raise PeerProtocolError(f"{name}: bad value {value!r}")
