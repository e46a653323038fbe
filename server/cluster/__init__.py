"""The cluster: users spread over several nodes, stanzas routed between them (SPEC §1, §2).

Layout: `wire.py` (what STANZA/CONTROL frames carry, pure), `locations.py` (cache of
each user's active node), `channel.py` (ordered, back-pressured sends to one peer),
`links.py` (the link mesh: a `LinkServer` here, a `LinkClient` to each peer),
`inbox.py` (ordered per-recipient execution of received work), `routing.py` (the
router's remote-route hook), `relay.py` (sessions of clients that dialled another
node) and `service.py` (wiring, for `server.node`).
"""

from presence_ha.server.cluster.service import ClusterService, ClusterTimers

__all__ = ["ClusterService", "ClusterTimers"]
