"""The backup protocol's vocabulary (docs/xep-presence-ha-backup.md)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from presence_ha.server.xmpp.backup import NS_BACKUP, BackupError, activated, is_hold_request
from presence_ha.server.xmpp.errors import Condition, ErrorType
from presence_ha.server.xmpp.stanzas import serialize


@pytest.mark.parametrize(("text", "hold"), [
    (f"<iq type='set' id='h'><hold xmlns='{NS_BACKUP}'/></iq>", True),
    (f"<iq type='set' id='h'><hold xmlns='{NS_BACKUP}' contacts='kept'/></iq>", True),
    (f"<iq type='get' id='h'><hold xmlns='{NS_BACKUP}'/></iq>", False),
    (f"<iq type='set' id='h'><activate xmlns='{NS_BACKUP}'/></iq>", False),
    (f"<iq type='set' id='h'><hold xmlns='{NS_BACKUP}'/><hold xmlns='{NS_BACKUP}'/></iq>", False),
    (f"<message><hold xmlns='{NS_BACKUP}'/></message>", False),
    ("<iq type='set' id='h'><hold/></iq>", False),
])
def test_is_hold_request(text, hold):
    assert is_hold_request(ET.fromstring(text)) is hold


def test_activated_payload():
    restored = f"<activated xmlns='{NS_BACKUP}' presence='restored' reason='takeover'/>"
    assert serialize(activated(True, "takeover")) == restored
    assert serialize(activated(False)) == f"<activated xmlns='{NS_BACKUP}' presence='none'/>"


def test_backup_error_carries_its_application_condition():
    error = BackupError(Condition.UNEXPECTED_REQUEST, "not-serving-yet", "retry", ErrorType.WAIT).to_element()
    assert error.get("type") == "wait"
    assert error.find(f"{{{NS_BACKUP}}}not-serving-yet") is not None
