"""What a client's XEP-0115 caps hash stands for: learned once per hash, cluster-wide.

Rules of this module:
- A hash is looked up in the store (node cache, then the shared table); an unknown
  one is asked of the client that announced it (disco#info to its full JID with
  node `node#ver`, §6.2), verified (§5.4: the recomputed hash must match) and stored
  for every node. A client that does not answer in `ANSWER_TIMEOUT_S`, or answers
  with a mismatch, teaches nothing.
- The question is asked in a task of its own by the caller: a session's stanzas are
  handled one at a time, so awaiting the answer inside its own presence handling
  would wait for itself.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from presence_ha.server.pubsub import NS_CAPS, caps_ver
from presence_ha.server.xmpp.stanzas import NS_DISCO_INFO

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext
    from presence_ha.server.sessions import Session

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 10.0


async def features_of(ctx: FeatureContext, session: Session, key: str) -> frozenset[str] | None:
    """The features behind `key` (`pubsub.caps_of` of the session's presence)."""
    known = await ctx.store.pep.caps_features(key)
    if known is not None:
        return known
    c = session.presence.find(f"{{{NS_CAPS}}}c") if session.presence is not None else None
    if c is None:
        return None
    query = await _ask(ctx, session, f"{c.get('node', '')}#{c.get('ver', '')}")
    if query is None:
        return None
    if f"sha-1:{caps_ver(query)}" != key:
        log.info("caps of %s do not match their hash %s: not cached", session.jid, key)
        return None
    features = sorted({f.get("var", "") for f in query.findall(f"{{{NS_DISCO_INFO}}}feature")} - {""})
    await ctx.store.pep.put_caps(key, features)
    return frozenset(features)


async def _ask(ctx: FeatureContext, session: Session, node: str) -> ET.Element | None:
    iq_id = f"caps-{uuid.uuid4().hex[:16]}"
    iq = ET.Element("iq", {"type": "get", "id": iq_id, "to": str(session.jid), "from": ctx.domain})
    ET.SubElement(iq, f"{{{NS_DISCO_INFO}}}query", {"node": node})
    answer = ctx.router.expect_answer(iq_id, session.jid)
    try:
        session.send(iq)
        reply = await asyncio.wait_for(answer, ANSWER_TIMEOUT_S)
    except TimeoutError:
        return None
    finally:
        ctx.router.forget_answer(iq_id)
    return reply.find(f"{{{NS_DISCO_INFO}}}query") if reply.get("type") == "result" else None
