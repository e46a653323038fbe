"""User assignment, the source's "Sync Agent" (SPEC §2), as a pure core.

Rules of this module:
- No I/O: topology and current assignments come in as plain values, a plan goes out.
  `db.assignments` reads the database, calls these functions and writes the plan.
- A topology is the ordered list of groups, each an ordered tuple of node names; the
  first node of a group is its Active-Standby primary.
- Balanced: every eligible node (every node of every group) holds floor(n/k) or
  ceil(n/k) users, i.e. all within one user of each other.
- Active-Standby: only the first node of each group is eligible; the users are spread
  evenly over those first nodes, the second nodes are pure backups.
- None: the system assigns nobody; a plan keeps what the admin assigned by hand as
  long as that node still exists, and never assigns an unassigned user.
- Rebalancing (a node or group added, the mode changed) moves as few users as
  possible: a user stays where it is unless its node is over quota or not eligible.
- Ties are broken by topology order and by username, so plans are deterministic.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

Topology = Sequence[Sequence[str]]


class AssignmentMode(enum.Enum):
    """Enterprise parameter *User Assignment Mode for Presence Server* (SPEC §2)."""

    BALANCED = "Balanced"
    ACTIVE_STANDBY = "Active-Standby"
    NONE = "None"


def all_nodes(groups: Topology) -> list[str]:
    """Every node of every group, in topology order."""
    return [node for group in groups for node in group]


def eligible_nodes(mode: AssignmentMode, groups: Topology) -> list[str]:
    """The nodes that may receive users under `mode`, in topology order."""
    if mode is AssignmentMode.BALANCED:
        return all_nodes(groups)
    if mode is AssignmentMode.ACTIVE_STANDBY:
        return [group[0] for group in groups if group]
    return []


def choose_node(mode: AssignmentMode, groups: Topology, load: Mapping[str, int]) -> str | None:
    """The node a new user goes to: the least loaded eligible node, or None.

    Adding users one by one with this function keeps a balanced topology balanced.
    """
    candidates = eligible_nodes(mode, groups)
    if not candidates:
        return None
    return min(candidates, key=lambda node: (load.get(node, 0), candidates.index(node)))


def quotas(nodes: Sequence[str], total: int, load: Mapping[str, int]) -> dict[str, int]:
    """floor/ceil share of `total` per node; the extra ones go to the most loaded nodes.

    Giving the ceil slots to the nodes that already hold the most users minimizes moves.
    """
    if not nodes:
        return {}
    base, extra = divmod(total, len(nodes))
    order = sorted(nodes, key=lambda node: (-load.get(node, 0), nodes.index(node)))
    return {node: base + (1 if rank < extra else 0) for rank, node in enumerate(order)}


def plan(
    mode: AssignmentMode, groups: Topology, current: Mapping[str, str | None]
) -> dict[str, str | None]:
    """The assignment of every user in `current` (username -> node or None) under `mode`."""
    known = set(all_nodes(groups))
    if mode is AssignmentMode.NONE:
        return {user: (node if node in known else None) for user, node in current.items()}
    nodes = eligible_nodes(mode, groups)
    if not nodes:
        return dict.fromkeys(current)
    members: dict[str, list[str]] = {node: [] for node in nodes}
    homeless: list[str] = []
    for user in sorted(current):
        node = current[user]
        (homeless if node is None else members.get(node, homeless)).append(user)
    quota = quotas(nodes, len(current), {node: len(users) for node, users in members.items()})
    result: dict[str, str | None] = {}
    for node, users in members.items():
        result.update((user, node) for user in users[: quota[node]])
        homeless.extend(users[quota[node] :])
    free = [node for node in nodes for _ in range(quota[node] - len(members[node]))]
    result.update(zip(sorted(homeless), free, strict=True))
    return result


def moves(current: Mapping[str, str | None], planned: Mapping[str, str | None]) -> dict[str, str | None]:
    """The users whose node changes between `current` and `planned`, with their new node."""
    return {user: node for user, node in planned.items() if current.get(user) != node}


def is_balanced(mode: AssignmentMode, groups: Topology, assignment: Mapping[str, str | None]) -> bool:
    """True when `assignment` satisfies `mode`'s rule for this topology."""
    nodes = eligible_nodes(mode, groups)
    if mode is AssignmentMode.NONE:
        return True
    if not nodes:
        return all(node is None for node in assignment.values())
    if any(node not in nodes for node in assignment.values()):
        return False
    counts = [sum(1 for node in assignment.values() if node == n) for n in nodes]
    return max(counts) - min(counts) <= 1
