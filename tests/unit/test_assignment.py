"""Properties of the Sync Agent core (`server.assignment`, SPEC §2)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from presence_ha.server.assignment import (
    AssignmentMode,
    all_nodes,
    choose_node,
    eligible_nodes,
    is_balanced,
    moves,
    plan,
    quotas,
)


@st.composite
def topologies(draw, min_groups=0):
    sizes = draw(st.lists(st.integers(1, 2), min_size=min_groups, max_size=5))
    counter = iter(range(1000))
    return [tuple(f"n{next(counter)}" for _ in range(size)) for size in sizes]


@st.composite
def scenarios(draw, min_groups=0):
    """(topology, current assignment) where users sit on known, vanished or no nodes."""
    groups = draw(topologies(min_groups))
    places = [*all_nodes(groups), "gone1", "gone2", None]
    users = draw(st.lists(st.text("abcdefgh", min_size=1, max_size=6), unique=True, max_size=60))
    return groups, {user: draw(st.sampled_from(places)) for user in users}


modes = st.sampled_from(list(AssignmentMode))


def counts(assignment, nodes):
    tally = Counter(assignment.values())
    return [tally[node] for node in nodes]


@given(scenarios(), modes)
def test_plan_obeys_the_mode(scenario, mode):
    groups, current = scenario
    planned = plan(mode, groups, current)
    assert planned.keys() == current.keys()
    assert is_balanced(mode, groups, planned)


@given(scenarios(min_groups=1))
def test_balanced_every_node_within_one_user(scenario):
    groups, current = scenario
    planned = plan(AssignmentMode.BALANCED, groups, current)
    per_node = counts(planned, all_nodes(groups))
    assert max(per_node) - min(per_node) <= 1
    assert sum(per_node) == len(current)


@given(scenarios(min_groups=1))
def test_active_standby_all_users_on_first_nodes(scenario):
    groups, current = scenario
    planned = plan(AssignmentMode.ACTIVE_STANDBY, groups, current)
    firsts = {group[0] for group in groups}
    assert set(planned.values()) <= firsts
    seconds = [group[1] for group in groups if len(group) == 2]
    assert counts(planned, seconds) == [0] * len(seconds)


@given(scenarios())
def test_none_assigns_nobody_new(scenario):
    groups, current = scenario
    planned = plan(AssignmentMode.NONE, groups, current)
    known = set(all_nodes(groups))
    for user, node in planned.items():
        assert node == (current[user] if current[user] in known else None)


@given(scenarios(), modes)
def test_plan_is_stable(scenario, mode):
    groups, current = scenario
    once = plan(mode, groups, current)
    assert moves(once, plan(mode, groups, once)) == {}


@given(scenarios(min_groups=1), modes)
def test_plan_moves_only_what_must_move(scenario, mode):
    groups, current = scenario
    nodes = eligible_nodes(mode, groups)
    if mode is AssignmentMode.NONE:
        return
    load = Counter(node for node in current.values() if node in nodes)
    quota = quotas(nodes, len(current), load)
    must = sum(1 for node in current.values() if node not in nodes)
    must += sum(max(0, load[node] - quota[node]) for node in nodes)
    assert len(moves(current, plan(mode, groups, current))) == must


@given(topologies(min_groups=1), st.integers(0, 200), st.integers(1, 2))
def test_adding_a_group_rebalances_with_few_moves(groups, n_users, new_size):
    mode = AssignmentMode.BALANCED
    before = plan(mode, groups, {f"u{i}": None for i in range(n_users)})
    grown = [*groups, tuple(f"new{i}" for i in range(new_size))]
    after = plan(mode, grown, before)
    assert is_balanced(mode, grown, after)
    k_old, k_new = len(all_nodes(groups)), len(all_nodes(grown))
    # Only the new nodes' share moves (each new node gets at most ceil(n / k_new)).
    assert len(moves(before, after)) <= (k_new - k_old) * -(-n_users // k_new)


@given(topologies(min_groups=1), modes, st.integers(0, 120))
def test_choose_node_one_by_one_keeps_balance(groups, mode, n_users):
    assignment: dict[str, str | None] = {}
    load: Counter[str] = Counter()
    for i in range(n_users):
        node = choose_node(mode, groups, load)
        if node is not None:
            load[node] += 1
        assignment[f"u{i}"] = node
    assert is_balanced(mode, groups, assignment)
    if mode is AssignmentMode.NONE:
        assert set(assignment.values()) <= {None}


def test_examples_read_like_the_spec():
    groups = [("a1", "a2"), ("b1", "b2")]
    users = {f"u{i}": None for i in range(10)}
    assert Counter(plan(AssignmentMode.BALANCED, groups, users).values()) == {"a1": 3, "a2": 3, "b1": 2, "b2": 2}
    assert Counter(plan(AssignmentMode.ACTIVE_STANDBY, groups, users).values()) == {"a1": 5, "b1": 5}
    assert set(plan(AssignmentMode.NONE, groups, users).values()) == {None}
    assert choose_node(AssignmentMode.BALANCED, [], {}) is None
