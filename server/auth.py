"""What the client port asks the availability database: keys, who serves a user, sign-up.

Rules of this module:
- An adapter helper (it calls `db/`); the stream core never does. Answers are the
  core's own types: stored keys, a login refusal (`StreamError` / `SaslFailure`), a
  registration error (`StanzaError`).
- A node serves exactly the users whose active node it is (SPEC §2, §9). Someone
  else's user is redirected with `see-other-host` to that node's client address when
  the cluster parameter `see_other_host_redirect` is on, else its session is relayed
  to that node (`RelayTo`, see `server.cluster.relay`; the redirect is its
  `fallback`); a user no node serves (moving during a failover) is refused with
  `temporary-auth-failure`.
- Cluster parameters are cached for `PARAMETER_CACHE_S`, so a burst of logins costs
  one query.
- `DatabaseUnavailable` propagates; the adapter answers with a temporary failure.
- SPEC §8 inactive sessions: a node also admits a user it does not serve if it is that
  user's backup node (`backs_up`: the user's active node is this node's peer in a
  group with HA on). The connection then binds an INACTIVE session, which must send
  `<hold/>` first; otherwise it ends with `backup_kick(refusal)`, the login refusal
  it was spared, as a stream error (see docs/xep-presence-ha-backup.md §5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from presence_ha.db import groups, nodes, parameters, users
from presence_ha.db.errors import AlreadyExists, FailoverInProgress, InvalidValue
from presence_ha.db.hotpath import HotPath
from presence_ha.server.xmpp.errors import Condition, StanzaError, StreamCondition, StreamError
from presence_ha.server.xmpp.negotiation import SaslFailure
from presence_ha.server.xmpp.sasl import SaslCondition

PARAMETER_CACHE_S = 5.0


@dataclass(frozen=True)
class RelayTo:
    """Admit the login and relay its session to `node`, the user's active node.
    `fallback` (see-other-host to that node) is for a connection that cannot be relayed."""

    node: str
    fallback: StreamError

    @property
    def text(self) -> str:
        return self.fallback.text or f"served by node {self.node}"


def host_port(host: str, port: int) -> str:
    """`host:port`, with brackets around an IPv6 literal (RFC 6120 §4.9.3.19)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Accounts:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], node_name: str, hot: HotPath) -> None:
        self._sessions = sessions
        self._hot = hot
        self.node_name = node_name
        self._params: dict[str, parameters.Value] = {}
        self._params_at = float("-inf")

    async def lookup(self, username: str, mechanism: str) -> users.LoginRecord | None:
        """The user's keys for `mechanism` and location, in one read (None: no such user)."""
        return await self._hot.run(users.login_record, username, mechanism)

    async def parameters(self) -> dict[str, parameters.Value]:
        if time.monotonic() - self._params_at > PARAMETER_CACHE_S:
            async with self._sessions() as session:
                self._params = await parameters.effective_parameters(session, self.node_name)
            self._params_at = time.monotonic()
        return self._params

    async def registration_enabled(self) -> bool:
        return bool((await self.parameters()).get("inband_registration", False))

    async def login_refusal(self, username: str, active: str | None) -> StreamError | SaslFailure | RelayTo | None:
        """None if this node serves `username` now (`active`, read by `lookup` during this
        login); otherwise how to refuse (or relay) the login."""
        if active == self.node_name:
            return None
        if active is None:
            return SaslFailure(
                SaslCondition.TEMPORARY_AUTH_FAILURE, f"no node serves {username} right now; retry later"
            )
        async with self._sessions() as session:
            node = await nodes.get_node(session, active)
        redirect = StreamError(
            StreamCondition.SEE_OTHER_HOST,
            f"{username} is served by node {active}",
            other_host=host_port(node.host, node.ports.client_port),
        )
        if (await self.parameters()).get("see_other_host_redirect", False):
            return redirect
        return RelayTo(active, redirect)

    async def register(self, username: str, password: str) -> StanzaError | None:
        """XEP-0077 §3.1: create the account with the same rules as `user add`."""
        if not await self.registration_enabled():
            return StanzaError(Condition.SERVICE_UNAVAILABLE, "in-band registration is off")
        try:
            async with self._sessions() as session:
                await users.add_user(session, username, password)
        except AlreadyExists:
            return StanzaError(Condition.CONFLICT, "username taken")
        except InvalidValue as exc:
            return StanzaError(Condition.NOT_ACCEPTABLE, str(exc))
        except FailoverInProgress as exc:
            return StanzaError(Condition.RESOURCE_CONSTRAINT, str(exc))
        return None

    # -- SPEC §8: inactive (backup) sessions ---------------------------------------
    async def backs_up(self, active: str | None) -> bool:
        """True if this node is the backup of a user whose active node is `active` (read
        during this login): our HA peer."""
        if active is None or active == self.node_name:
            return False
        async with self._sessions() as session:
            group = await groups.group_of_node(session, self.node_name)
        return bool(group and group.ha_enabled and active in group.nodes)


def backup_kick(refusal: StreamError | SaslFailure) -> StreamError:
    """The stream error ending a backup-admitted connection that did not send `<hold/>`:
    the refusal itself when it is one (see-other-host), else `reset` (reconnect)."""
    if isinstance(refusal, StreamError):
        return refusal
    return StreamError(StreamCondition.RESET, refusal.text or "not served here")
