"""The transition table itself (python-statemachine style checks).

Rules: reachability, no trap states, every enum member used, every row cites the
SPEC, and the table renders as Markdown. Edges are read from the data, so a row that
is added without a way out fails here before any scenario runs.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from collections.abc import Iterator

from presence_ha.server.srm import table
from presence_ha.server.srm.events import AdminRequestedRecovery, SrmStarted
from presence_ha.server.srm.table import (
    ANY_STATE,
    JOINT,
    JOINT_DEFAULTS,
    JOINT_OVERRIDES,
    TRANSITIONS,
    NodeState,
    Reason,
    Transition,
)

RESTARTS = (SrmStarted, AdminRequestedRecovery)


def edges(with_restarts: bool = True) -> Iterator[tuple[NodeState, NodeState]]:
    """(from, to) for every row; rows with `to=None` stay and add no edge."""

    def targets(rows: tuple[Transition, ...]) -> Iterator[NodeState]:
        yield from (row.to for row in rows if row.to is not None)

    for (state, event), rows in TRANSITIONS.items():
        if with_restarts or event not in RESTARTS:
            yield from ((state, to) for to in targets(rows))
    for event, rows in ANY_STATE.items():
        if with_restarts or event not in RESTARTS:
            yield from ((state, to) for state in NodeState for to in targets(rows))
    for (state, _peer), rows in JOINT.items():
        yield from ((state, to) for to in targets(rows))
    for state in NodeState:
        yield from ((state, to) for to in targets(JOINT_OVERRIDES + JOINT_DEFAULTS))


def reachable(start: NodeState, with_restarts: bool = True) -> set[NodeState]:
    graph: dict[NodeState, set[NodeState]] = {s: set() for s in NodeState}
    for a, b in edges(with_restarts):
        graph[a].add(b)
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def all_rows() -> Iterator[Transition]:
    for rows in (*TRANSITIONS.values(), *ANY_STATE.values(), *JOINT.values()):
        yield from rows
    yield from JOINT_OVERRIDES + JOINT_DEFAULTS


def test_every_state_reachable_from_initializing() -> None:
    assert reachable(NodeState.INITIALIZING) == set(NodeState)


def test_no_trap_states() -> None:
    for state in NodeState:
        assert NodeState.NORMAL in reachable(state), state


def test_only_failed_states_need_a_restart() -> None:
    # SPEC §6: Running in Failed Mode needs Recovery and Unknown an SRM restart;
    # every other state finds its own way back to Normal.
    needs_restart = {NodeState.RUNNING_IN_FAILED_MODE, NodeState.UNKNOWN}
    for state in set(NodeState) - needs_restart:
        assert NodeState.NORMAL in reachable(state, with_restarts=False), state
    for state in needs_restart:
        assert NodeState.NORMAL not in reachable(state, with_restarts=False), state


def test_every_state_and_reason_is_used() -> None:
    targets = {row.to for row in all_rows()} | {state for state, _ in TRANSITIONS}
    assert set(NodeState) <= targets
    reasons = {row.reason for row in all_rows() if isinstance(row.reason, Reason)}
    assert reasons == set(Reason)


def test_spec_display_strings() -> None:
    assert NodeState.RUNNING_IN_BACKUP_MODE.value == "Running in Backup Mode"
    assert Reason.PEER_DOWN_DURING_INITIALIZATION.value == "Peer Down During Initialization"
    assert all(m.name == re.sub(r"\W+", "_", m.value).upper().strip("_") for m in Reason)


def test_every_row_cites_the_spec() -> None:
    source = inspect.getsource(table)
    rows = [line for line in source.splitlines() if re.search(r"\bT\(", line)]
    assert len(rows) > 60
    missing = [line.strip()[:80] for line in rows if not re.search(r"# §\d+", line)]
    assert missing == []
    keyed = [line for line in source.splitlines() if re.match(r"    (\(S\.\w+, [\w.]+\)|[A-Z]\w+): ", line)]
    assert len(keyed) >= len(TRANSITIONS) + len(ANY_STATE) + len(JOINT)
    assert [line for line in keyed if "# §" not in line] == []


def test_rows_are_one_per_key() -> None:
    source = inspect.getsource(table)
    body = source[source.index("TRANSITIONS: dict") : source.index("ANY_STATE: dict")]
    keys = re.findall(r"^\s+\((S\.\w+, \w+)\):", body, flags=re.M)
    assert len(keys) == len(set(keys)) == len(TRANSITIONS)


def test_markdown_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "presence_ha.server.srm.table", "--markdown"],
        check=True, capture_output=True, text=True,
    )
    assert "| Normal | AdminRequestedFailover | peer_is_normal | Failing Over | On Admin Request |" in out.stdout
    assert out.stderr == ""
    assert out.stdout.count("\n|") > len(TRANSITIONS)
