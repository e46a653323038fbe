"""What the SRM runner uses of the node's other components, as Protocols.

Rules of this module:
- Each Protocol names exactly the members the runner calls; the node passes the real
  components (`CriticalServices`, `ClusterService`, `Metrics`) at construction.
- The cluster hears of moves only from the runner's action executors: `users_moved`
  right after a committed `MoveUsers`, `users_active` from `ActivateInactiveSessions`.
"""

from __future__ import annotations

from typing import Protocol

from presence_ha.server.srm.events import Event
from presence_ha.server.srm.peer_link import CounterLike


class SrmServices(Protocol):
    """What the SRM uses of `server.services.CriticalServices`."""

    def set_monitored(self, name: str, monitored: bool) -> None: ...
    async def stop_all(self) -> None: ...
    async def start_all(self) -> Event: ...


class ClusterNotifier(Protocol):
    """What the SRM tells the cluster links (`server.cluster.ClusterService`)."""

    def users_moved(self, arrived: bool) -> None: ...
    def users_active(self) -> None: ...


class LabelledCounter(Protocol):
    def labels(self, *values: str) -> CounterLike: ...


class SrmMetrics(Protocol):
    """The SRM's counters in `server.metrics.Metrics`."""

    @property
    def srm_transitions(self) -> LabelledCounter: ...
    @property
    def srm_invalid_transitions(self) -> CounterLike: ...
    @property
    def srm_peer_protocol_errors(self) -> CounterLike: ...
