"""SPEC §9: random event sequences never leave a user served by both nodes.

Rules: hypothesis drives the harness with faults, admin commands, crashes, restarts,
partitions and time; the harness checks the invariant after every single event. A
failure prints the transcript of state changes that led to it.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence_ha.server.srm.machine import SrmTimers
from tests.unit.srm.harness import Pair

NODES = st.sampled_from(["n1", "n2"])

OPS = st.one_of(
    st.tuples(st.sampled_from(["failover", "fallback", "service_down", "fix_services",
                               "db_down", "db_up", "internal_error", "restart_srm",
                               "shutdown", "crash", "crash_silent", "start"]), NODES),
    st.tuples(st.sampled_from(["recover", "link_down", "link_up", "fail_next_move",
                               "hold_moves", "release_moves"]), st.none()),
    st.tuples(st.just("advance"), st.sampled_from([1.0, 14.0, 31.0, 61.0, 95.0, 130.0, 1900.0])),
)


def apply(pair: Pair, op: str, arg: object) -> None:
    node = pair.nodes.get(arg) if isinstance(arg, str) else None
    if op == "start":
        if node is not None and node.machine is None:
            pair.start(arg)  # type: ignore[arg-type]
    elif op in ("crash", "crash_silent", "restart_srm", "shutdown"):
        if node is not None and node.machine is not None:
            {"crash": lambda: pair.crash(arg), "crash_silent": lambda: pair.crash(arg, silent=True),
             "restart_srm": lambda: pair.restart_srm(arg), "shutdown": lambda: pair.shutdown(arg)}[op]()
    elif op == "advance":
        pair.advance(arg)  # type: ignore[arg-type]
    elif op in ("link_down", "link_up"):
        pair.link_up = op == "link_up"
    elif op in ("fail_next_move", "hold_moves"):
        setattr(pair, op, True)
    elif op == "release_moves":
        pair.release_moves()
    elif op == "recover":
        pair.recover()
    else:
        getattr(pair, op)(arg)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=40), auto_fallback=st.booleans())
def test_random_sequences_never_serve_a_user_twice(ops: list, auto_fallback: bool) -> None:
    pair = Pair(SrmTimers(auto_fallback_enabled=auto_fallback))
    pair.start_both()
    for op, arg in ops:
        apply(pair, op, arg)  # the harness raises SafetyViolation on the spot
    pair.link_up = True
    pair.advance(300)
    assert pair.db_epoch >= 0
