"""The SRM peer protocol: every PeerMessage round-trips; anything else is a protocol error."""

from __future__ import annotations

import json
import typing

import pytest

from presence_ha.server.srm import peer_protocol as pp
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
from presence_ha.server.srm.machine import SrmMachine
from presence_ha.server.srm.table import NodeState, Reason

SESSION = bytes(range(16))
MESSAGES = [
    HeartbeatReceived(NodeState.RUNNING_IN_BACKUP_MODE, Reason.PEER_DOWN, 7, True),
    HeartbeatReceived(NodeState.UNKNOWN, Reason.UNKNOWN, 0, False),
    HeartbeatReceived(NodeState.NORMAL, Reason.NORMAL, 2, True, peer_db_ok=False, peer_db_age_s=3.25),
    PeerRequestedTakeover(Reason.CRITICAL_SERVICES_DOWN),
    PeerTookOver(3),
    PeerRequestedTakeBack(Reason.AUTOMATIC_FALLBACK),
    PeerReleasedUsers(),
    PeerTookBack(4),
    PeerEnteredFailedMode(Reason.TAKE_OVER_USERS_FAILED),
    PeerRequestedAutoRecovery(Reason.AUTO_RECOVER_DATABASE_FAILURE),
    PeerRebooted(),
]


def test_every_peer_message_type_has_a_tag():
    assert set(pp.TAGS.values()) == set(typing.get_args(PeerMessage))


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("to", [SESSION, None])
def test_round_trip(msg, to):
    envelope = pp.decode(pp.encode(msg, to))
    assert envelope == pp.Envelope(msg, to)


def test_wire_format_is_readable_json_with_spec_words():
    body = json.loads(pp.encode(PeerRequestedTakeover(Reason.ON_ADMIN_REQUEST), SESSION))
    assert body == {"type": "requested-takeover", "to": SESSION.hex(), "reason": "On Admin Request"}


def test_machine_heartbeat_round_trips():
    machine = SrmMachine("n1", "n2")
    assert pp.decode(pp.encode(machine.heartbeat(), None)).msg == machine.heartbeat()


def test_a_heartbeat_without_the_database_report_reads_as_checks_pass():
    """A node of an earlier version sends no `peer_db_*` fields (issue #17)."""
    old = _raw(type="heartbeat", to=None, peer_state="Normal", peer_reason="Normal", peer_epoch=1,
               peer_ha_enabled=True)
    msg = pp.decode(old).msg
    assert isinstance(msg, HeartbeatReceived) and (msg.peer_db_ok, msg.peer_db_age_s) == (True, 0.0)


def test_message_for_an_earlier_process_is_not_for_me():
    envelope = pp.decode(pp.encode(PeerTookOver(2), b"\x01" * 16))
    assert not envelope.for_me(SESSION)
    assert envelope.for_me(b"\x01" * 16)
    assert pp.decode(pp.encode(PeerTookOver(2), None)).for_me(SESSION)


def test_only_peer_messages_are_encoded():
    from presence_ha.server.srm.events import PeerConnectionRefused

    with pytest.raises(TypeError):
        pp.encode(PeerConnectionRefused(), None)  # type: ignore[arg-type]


def _raw(**body) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[1, 2]",
        b"null",
        _raw(to=None),
        _raw(type="self-destruct", to=None),
        _raw(type=5, to=None),
        _raw(type="took-over", epoch=1),  # no "to"
        _raw(type="took-over", to="abc", epoch=1),
        _raw(type="took-over", to="zz" * 16, epoch=1),
        _raw(type="took-over", to=None),  # missing field
        _raw(type="took-over", to=None, epoch=1, extra=2),
        _raw(type="took-over", to=None, epoch="1"),
        _raw(type="took-over", to=None, epoch=-1),
        _raw(type="took-over", to=None, epoch=True),
        _raw(type="rebooted", to=None, reason="Normal"),
        _raw(type="requested-takeover", to=None, reason="Bored"),
        _raw(type="requested-takeover", to=None, reason=None),
        _raw(type="heartbeat", to=None, peer_state="Normal", peer_reason="Normal", peer_epoch=1, peer_ha_enabled="yes"),
        _raw(type="heartbeat", to=None, peer_state="Asleep", peer_reason="Normal", peer_epoch=1, peer_ha_enabled=True),
        _raw(type="heartbeat", to=None, peer_state="Normal", peer_reason="Normal", peer_epoch=1.5,
             peer_ha_enabled=True),
        _raw(type="heartbeat", to=None, peer_state="Normal", peer_reason="Normal", peer_epoch=1,
             peer_ha_enabled=True, peer_db_ok="no"),
        _raw(type="heartbeat", to=None, peer_state="Normal", peer_reason="Normal", peer_epoch=1,
             peer_ha_enabled=True, peer_db_age_s=-1),
        _raw(type="heartbeat", to=None, peer_state="Normal", peer_reason="Normal", peer_epoch=1,
             peer_ha_enabled=True, peer_db_age_s=True),
        (b'{"type":"heartbeat","to":null,"peer_state":"Normal","peer_reason":"Normal","peer_epoch":1,'
         b'"peer_ha_enabled":true,"peer_db_age_s":NaN}'),
        _raw(type="took-over", to=None, epoch=1, peer_db_ok=True),  # only heartbeats carry it
        b"{" + b" " * pp.MAX_MESSAGE_BYTES + b"}",
    ],
)
def test_bad_payloads_are_protocol_errors(payload):
    with pytest.raises(pp.PeerProtocolError):
        pp.decode(payload)
