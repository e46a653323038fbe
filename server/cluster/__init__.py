"""The cluster: users spread over several nodes, stanzas routed between them (SPEC §1, §2).

Layout: `wire.py` (what STANZA/CONTROL frames carry, pure), `locations.py` (cache of
each user's active node), `channel.py` (ordered, back-pressured sends to one peer),
`links.py` (the link mesh: a `LinkServer` here, a `LinkClient` to each peer),
`inbox.py` (ordered per-recipient execution of received work), `triage.py` (what a
received frame becomes, pure), `routing.py` (the router's remote-route hook),
`arrivals.py` (users moved here, not active yet), `relay.py` (sessions of clients
that dialled another node), `sm_replica.py` / `sm_mirror.py` (XEP-0198 state on the
backup node) and `service.py` (`ClusterLinks`, then `ClusterService`, for
`server.node`).
"""

from presence_ha.server.cluster.service import ClusterLinks, ClusterService, load_peers
from presence_ha.server.config import ClusterTimers

__all__ = ["ClusterLinks", "ClusterService", "ClusterTimers", "load_peers"]
