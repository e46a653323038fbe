"""The full (state, event) matrix of the SRM table.

Rules: every NodeState decides its own rows (`TRANSITIONS` or `JOINT`) unless it is
listed in `table.DEFAULTS_ONLY`; a new state that silently inherits the `ANY_STATE`
defaults fails here. The matrix is printed (`pytest -s`) for review.
"""

from __future__ import annotations

from presence_ha.server.srm.events import PeerAliveInDatabase, PeerReport
from presence_ha.server.srm.table import ANY_STATE, DEFAULTS_ONLY, JOINT, TRANSITIONS, NodeState, Transition

EVENTS = sorted({event for _, event in TRANSITIONS} | set(ANY_STATE) | {PeerAliveInDatabase},
                key=lambda e: e.__name__)


def decided(state: NodeState, event: type) -> str:
    """Where the rows for (state, event) come from; INVALID: no row, the machine raises
    `InvalidTransition` (fed back as an internal error, SPEC §6 row 21)."""
    if issubclass(event, PeerReport):
        return "joint" if any(s is state for s, _ in JOINT) else "joint defaults"
    if (state, event) in TRANSITIONS:
        return "explicit"
    return "default" if event in ANY_STATE else "INVALID"


def describe(rows: tuple[Transition, ...]) -> str:
    return "; ".join(f"{r.to.value if r.to else '(same)'} [{', '.join(k.name.lower() for k in r.steps)}]"
                     for r in rows)


def matrix() -> list[tuple[NodeState, type, str]]:
    return [(state, event, decided(state, event)) for state in NodeState for event in EVENTS]


def test_print_the_matrix() -> None:
    cells = matrix()
    assert len(cells) == len(NodeState) * len(EVENTS)
    for state, event, origin in cells:
        rows = TRANSITIONS.get((state, event)) or ANY_STATE.get(event, ())
        print(f"{state.value:48} {event.__name__:30} {origin:14} {describe(rows)}")


def test_every_state_has_explicit_rows_or_is_listed_as_defaults_only() -> None:
    explicit = {state for state, _ in TRANSITIONS} | {state for state, _ in JOINT}
    relying_on_defaults = set(NodeState) - explicit
    assert relying_on_defaults == set(DEFAULTS_ONLY), (
        "a NodeState without explicit rows must be listed in table.DEFAULTS_ONLY (and one with rows must not)")

