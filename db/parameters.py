"""Service (SRM, SPEC §5) and enterprise (SPEC §2) parameters: registry and storage.

Rules of this module:
- `REGISTRY` declares every parameter once: kind (service or enterprise), scope
  (cluster or per node), type, default, range or choices. Units are in the names.
- Only values set away from the default are stored (`parameters` table, text). The
  effective value of a node is default, then cluster value, then node value.
- Per-node parameters may be set for the whole cluster (a default for all nodes) or
  for one node; cluster parameters only for the cluster.
- Validation errors are `InvalidValue(key, reason)` naming the key. Cross-parameter
  rules (`CROSS_RULES`) are checked against the effective values of the cluster and
  of every node before anything is written.
- Setting `user_assignment_mode` does not move users by itself: callers run
  `db.assignments.rebalance` afterwards (the CLI does).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db.clusters import get_cluster
from presence_ha.db.engine import rowcount, translate_errors
from presence_ha.db.errors import InvalidValue, NotFound
from presence_ha.db.models import Node, Parameter
from presence_ha.db.nodes import get_node
from presence_ha.server.assignment import AssignmentMode

Value = int | bool | str


class Kind(enum.Enum):
    SERVICE = "service"
    ENTERPRISE = "enterprise"


class Scope(enum.Enum):
    CLUSTER = "cluster"
    NODE = "node"


TRUE_WORDS = frozenset({"true", "on", "yes", "1"})
FALSE_WORDS = frozenset({"false", "off", "no", "0"})


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: Kind
    scope: Scope
    type: type
    default: Value
    help: str
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()

    def parse(self, raw: Any) -> Value:
        """Turn `raw` (text or typed) into a valid value, or raise `InvalidValue`."""
        if self.type is bool:
            return self._parse_bool(raw)
        if self.type is int:
            return self._parse_int(raw)
        text = str(raw)
        if self.choices and text not in self.choices:
            raise InvalidValue(self.name, f"{text!r} is not one of {', '.join(self.choices)}")
        return text

    def _parse_bool(self, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower()
        if word in TRUE_WORDS | FALSE_WORDS:
            return word in TRUE_WORDS
        raise InvalidValue(self.name, f"{raw!r} is not a boolean (true/false)")

    def _parse_int(self, raw: Any) -> int:
        if isinstance(raw, bool):
            raise InvalidValue(self.name, f"{raw!r} is not an integer")
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise InvalidValue(self.name, f"{raw!r} is not an integer") from None
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise InvalidValue(self.name, f"{value} is outside {self.minimum}..{self.maximum}")
        return value

    def render(self, value: Value) -> str:
        return str(value).lower() if self.type is bool else str(value)


_S, _E, _C, _N = Kind.SERVICE, Kind.ENTERPRISE, Scope.CLUSTER, Scope.NODE
# SPEC §5 (service) and §2 (enterprise). Ranges: seconds >= 1 so tests can run fast.
REGISTRY: dict[str, ParamSpec] = {
    spec.name: spec
    for spec in (
        ParamSpec("srm_port", _S, _C, int, 22001, "Service Port (SRM peer-to-peer)", 1, 65535),
        ParamSpec("admin_rpc_port", _S, _C, int, 20075, "Admin RPC Port", 1, 65535),
        ParamSpec("critical_service_delay_s", _S, _C, int, 90, "Critical Service Delay", 1, 3600),
        ParamSpec("auto_fallback_enabled", _S, _C, bool, False, "Enable Automatic Fallback"),
        ParamSpec("auto_fallback_delay_s", _S, _C, int, 1800,
                  "Automatic fallback after the primary is healthy for", 1, 86400),
        ParamSpec("init_heartbeat_timeout_s", _S, _C, int, 120,
                  "Initialization Keep Alive (Heartbeat) Timeout", 1, 3600),
        ParamSpec("heartbeat_timeout_s", _S, _C, int, 60, "Keep Alive (Heartbeat) Timeout", 1, 3600),
        ParamSpec("heartbeat_interval_s", _S, _C, int, 15, "Keep Alive (Heartbeat) Interval", 1, 600),
        ParamSpec("monitor_auth_service", _S, _C, bool, False, "Enable monitoring of XCP Authentication Service"),
        ParamSpec("presence_grace_s", _S, _C, int, 30,
                  "Presence grace after a takeover (unavailable for users not back by then)", 1, 3600),
        ParamSpec("db_outage_grace_s", _S, _C, int, 20,
                  "Database outage grace: while the peer also cannot reach the database (a promotion of "
                  "the replicated database), a node waits this long before it declares Database Failure; "
                  "a node that alone loses the database declares it at once", 1, 3600),
        ParamSpec("relogin_lower_s", _S, _N, int, 120, "Client Re-Login Lower Limit", 1, 3600),
        ParamSpec("relogin_upper_s", _S, _N, int, 537, "Client Re-Login Upper Limit", 1, 3600),
        ParamSpec(
            "user_assignment_mode", _E, _C, str, AssignmentMode.BALANCED.value,
            "User Assignment Mode for Presence Server", choices=tuple(m.value for m in AssignmentMode),
        ),
        ParamSpec("inband_registration", _E, _C, bool, False, "Allow in-band registration (XEP-0077)"),
        ParamSpec("see_other_host_redirect", _E, _C, bool, False,
                  "Redirect clients to their active node (see-other-host)"),
    )
}

# (smaller, larger, strict): effective values must satisfy smaller <= larger (< if strict).
CROSS_RULES: tuple[tuple[str, str, bool], ...] = (
    ("relogin_lower_s", "relogin_upper_s", False),
    ("heartbeat_interval_s", "heartbeat_timeout_s", True),
    ("heartbeat_interval_s", "init_heartbeat_timeout_s", True),
)


@dataclass(frozen=True)
class ParameterValue:
    name: str
    kind: Kind
    scope: Scope
    value: Value
    default: Value
    source: str  # "default", "cluster" or "node"
    help: str


def spec_for(key: str) -> ParamSpec:
    try:
        return REGISTRY[key]
    except KeyError:
        raise InvalidValue(key, "unknown parameter; see `presence-ha param show`") from None


def defaults() -> dict[str, Value]:
    return {name: spec.default for name, spec in REGISTRY.items()}


def check_cross_rules(values: dict[str, Value], where: str) -> None:
    for small, large, strict in CROSS_RULES:
        a, b = cast(int, values[small]), cast(int, values[large])  # cross rules pair int parameters
        if a > b or (strict and a == b):
            op = "<" if strict else "<="
            raise InvalidValue(small, f"must be {op} {large} ({a} vs {b}) {where}")


async def _stored(session: AsyncSession, cluster_id: int) -> list[Parameter]:
    async with translate_errors():
        query = select(Parameter).where(Parameter.cluster_id == cluster_id)
        return list((await session.execute(query)).scalars().all())


def _merge(rows: list[Parameter], node_id: int | None) -> tuple[dict[str, Value], dict[str, str]]:
    values, sources = defaults(), dict.fromkeys(REGISTRY, "default")
    layers = [(None, "cluster")] + ([(node_id, "node")] if node_id is not None else [])
    for layer_node, source in layers:
        for row in rows:
            if row.node_id == layer_node and row.name in REGISTRY:
                values[row.name] = REGISTRY[row.name].parse(row.value)
                sources[row.name] = source
    return values, sources


async def effective_parameters(session: AsyncSession, node_name: str | None = None) -> dict[str, Value]:
    """Every parameter's typed value for `node_name` (or the cluster): defaults+cluster+node."""
    cluster = await get_cluster(session)
    node_id = (await get_node(session, node_name)).id if node_name else None
    values, _ = _merge(await _stored(session, cluster.id), node_id)
    return values


async def get_parameter(session: AsyncSession, key: str, node_name: str | None = None) -> Value:
    spec_for(key)
    return (await effective_parameters(session, node_name))[key]


async def show_parameters(session: AsyncSession, node_name: str | None = None) -> list[ParameterValue]:
    """Every parameter with its effective value and where that value comes from."""
    cluster = await get_cluster(session)
    node_id = (await get_node(session, node_name)).id if node_name else None
    values, sources = _merge(await _stored(session, cluster.id), node_id)
    return [
        ParameterValue(name, spec.kind, spec.scope, values[name], spec.default, sources[name], spec.help)
        for name, spec in REGISTRY.items()
    ]


async def _check_all_nodes(session: AsyncSession, rows: list[Parameter], cluster_id: int) -> None:
    check_cross_rules(_merge(rows, None)[0], "for the cluster")
    async with translate_errors():
        nodes = (await session.execute(select(Node).where(Node.cluster_id == cluster_id))).scalars().all()
    for node in nodes:
        check_cross_rules(_merge(rows, node.id)[0], f"on node {node.name!r}")


async def set_parameter(
    session: AsyncSession, key: str, value: Any, node_name: str | None = None
) -> ParameterValue:
    """Validate and store one value (cluster-wide, or for one node); commit."""
    spec = spec_for(key)
    if node_name and spec.scope is Scope.CLUSTER:
        raise InvalidValue(key, "is a cluster parameter; set it without --node")
    parsed = spec.parse(value)
    cluster = await get_cluster(session)
    node_id = (await get_node(session, node_name)).id if node_name else None
    rows = await _stored(session, cluster.id)
    row = next((r for r in rows if r.node_id == node_id and r.name == key), None)
    if row is None:
        row = Parameter(cluster_id=cluster.id, node_id=node_id, kind=spec.kind.value, name=key, value="")
        session.add(row)
        rows.append(row)
    row.value = spec.render(parsed)
    try:
        await _check_all_nodes(session, rows, cluster.id)
    except InvalidValue:
        await session.rollback()
        raise
    async with translate_errors():
        await session.commit()
    return next(p for p in await show_parameters(session, node_name) if p.name == key)


async def reset_parameter(session: AsyncSession, key: str, node_name: str | None = None) -> None:
    """Remove a stored value so the cluster value or the default applies again; commit."""
    spec_for(key)
    cluster = await get_cluster(session)
    node_id = (await get_node(session, node_name)).id if node_name else None
    rows = [r for r in await _stored(session, cluster.id) if not (r.node_id == node_id and r.name == key)]
    await _check_all_nodes(session, rows, cluster.id)
    condition = Parameter.node_id.is_(None) if node_id is None else Parameter.node_id == node_id
    async with translate_errors():
        result = await session.execute(
            delete(Parameter).where(Parameter.cluster_id == cluster.id, Parameter.name == key, condition)
        )
        await session.commit()
    if rowcount(result) == 0:
        raise NotFound(f"{key}: not set {'on node ' + repr(node_name) if node_name else 'for the cluster'}")


async def assignment_mode(session: AsyncSession) -> AssignmentMode:
    return AssignmentMode(await get_parameter(session, "user_assignment_mode"))
