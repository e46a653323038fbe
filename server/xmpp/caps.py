"""XEP-0115 Entity Capabilities of the server: its verification string and `<c/>`.

Rules: the verification string is built as XEP-0115 §5.1 says (identities
`category/type/lang/name` sorted, each followed by `<`; then features sorted, each
followed by `<`; no data forms here), hashed with SHA-1 and base64-encoded (§5.1
steps 7-8). The server puts `<c/>` in its stream features after authentication
(§6.3), and answers disco#info for the node `NODE#ver` (§6.2, `server.features.disco`).
"""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import NamedTuple

NS_CAPS = "http://jabber.org/protocol/caps"
NODE = "https://github.com/presence-ha/presence-ha"  # identifies the software (§4)


class Identity(NamedTuple):
    category: str
    type: str
    name: str = ""
    lang: str = ""


SERVER_IDENTITY = Identity("server", "im", "presence-ha")


def verification_string(identities: Iterable[Identity], features: Iterable[str]) -> str:
    """§5.1 steps 1-6: the string S that is hashed."""
    parts = sorted(f"{i.category}/{i.type}/{i.lang}/{i.name}" for i in identities)
    return "".join(f"{p}<" for p in parts) + "".join(f"{f}<" for f in sorted(set(features)))


def ver(identities: Iterable[Identity], features: Iterable[str]) -> str:
    """§5.1 steps 7-8: base64 of the SHA-1 of S (UTF-8)."""
    digest = hashlib.sha1(verification_string(identities, features).encode()).digest()
    return base64.b64encode(digest).decode()


def caps_element(version: str) -> ET.Element:
    return ET.Element(f"{{{NS_CAPS}}}c", {"hash": "sha-1", "node": NODE, "ver": version})
