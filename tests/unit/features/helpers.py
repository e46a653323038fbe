"""Shared steps of the feature transcripts."""

from __future__ import annotations


async def befriend(world, a, b) -> None:
    """Mutual subscription ('both') between the accounts of two online clients."""
    for x, y in ((a, b), (b, a)):
        await x.send(f"<presence type='subscribe' to='{y.jid.bare}'/>")
        await y.send(f"<presence type='subscribed' to='{x.jid.bare}'/>")
    a.outbox.clear()
    b.outbox.clear()
