"""What the SRM reads from the database when it (re)starts.

Rules of this module:
- One read, in one session: the node's group and HA switch, its peer, the effective
  SPEC §5 parameters (timers, `monitor_auth_service`, the presence grace), the
  persisted HA state and the group epoch. The SRM is rebuilt from this and nothing
  else (SPEC §7 recovery).
- Every timer comes from the parameters, so tests run in seconds (also
  `db_outage_grace_s`, the liveness's, which is not the machine's).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db import groups, nodes, parameters, srm_state
from presence_ha.server.srm.machine import SrmTimers
from presence_ha.server.srm.redirect import RedirectTarget
from presence_ha.server.srm.table import NodeState, Reason


@dataclass(frozen=True)
class Setup:
    group: str | None
    ha_enabled: bool
    peer: nodes.NodeInfo | None
    timers: SrmTimers
    monitor_auth: bool
    stored: srm_state.HaState | None
    epoch: int
    presence_grace_s: float = 30.0
    db_outage_grace_s: float = 20.0

    @property
    def state(self) -> NodeState:
        return NodeState(self.stored.state) if self.stored else NodeState.INITIALIZING

    @property
    def reason(self) -> Reason:
        return Reason(self.stored.reason) if self.stored else Reason.INITIALIZATION

    @property
    def redirect_target(self) -> RedirectTarget | None:
        """Where this node's users go when it lets them go: the peer, if HA is on."""
        if self.peer is None or not self.ha_enabled:
            return None
        return RedirectTarget(self.peer.name, self.peer.host, self.peer.ports.client_port)


async def load_setup(session: AsyncSession, node: str) -> Setup:
    group = await groups.group_of_node(session, node)
    peer_name = await groups.peer_of(session, node)
    peer = await nodes.get_node(session, peer_name) if peer_name else None
    p = await parameters.effective_parameters(session, node)
    stored = await srm_state.read_state(session, node)
    epoch = await srm_state.group_epoch(session, group.name) if group else 0
    timers = SrmTimers(float(p["heartbeat_interval_s"]), float(p["heartbeat_timeout_s"]),
                       float(p["init_heartbeat_timeout_s"]), float(p["critical_service_delay_s"]),
                       bool(p["auto_fallback_enabled"]), float(p["auto_fallback_delay_s"]))
    ha = bool(group.ha_enabled) if group else False
    return Setup(group.name if group else None, ha, peer, timers, bool(p["monitor_auth_service"]), stored, epoch,
                 float(p["presence_grace_s"]), float(p["db_outage_grace_s"]))
