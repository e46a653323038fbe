"""The backup protocol's vocabulary (SPEC §8, docs/xep-presence-ha-backup.md).

Rules of this module:
- Pure names and builders of `urn:presence-ha:backup:0`, shared by the connection
  adapter (a backup connection's first stanza must be `<hold/>`: `is_hold_request`),
  the activation service (`<activated/>` pushes) and the features that answer
  `<hold/>`, `<activate/>` and `<backup/>`. No I/O, no session state.
- Errors of the protocol carry an application-specific condition of `NS_BACKUP`
  next to the RFC 6120 condition (`BackupError`, RFC 6120 §8.3.2).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from presence_ha.server.xmpp.errors import Condition, ErrorType, StanzaError
from presence_ha.server.xmpp.stanzas import IqType

NS_BACKUP = "urn:presence-ha:backup:0"
HOLD = f"{{{NS_BACKUP}}}hold"
ACTIVATE = f"{{{NS_BACKUP}}}activate"
ACTIVATED = f"{{{NS_BACKUP}}}activated"
BACKUP = f"{{{NS_BACKUP}}}backup"


class BackupError(StanzaError):
    """A stanza error with an application-specific condition of NS_BACKUP (RFC 6120 §8.3.2)."""

    def __init__(self, condition: Condition, app_condition: str, text: str, type: ErrorType | None = None) -> None:
        super().__init__(condition, text, type)
        self.app_condition = app_condition

    def to_element(self) -> ET.Element:
        error = super().to_element()
        ET.SubElement(error, f"{{{NS_BACKUP}}}{self.app_condition}")
        return error


def is_hold_request(stanza: ET.Element) -> bool:
    """The stanza a backup connection must send first (checked by the connection adapter)."""
    return stanza.tag == "iq" and IqType.of(stanza) is IqType.SET and len(stanza) == 1 and stanza[0].tag == HOLD


def activated(presence_restored: bool, reason: str | None = None) -> ET.Element:
    """The `<activated/>` payload: an activation's answer (reason 'client') or push ('takeover')."""
    payload = ET.Element(ACTIVATED, {"presence": "restored" if presence_restored else "none"})
    if reason:
        payload.set("reason", reason)
    return payload
