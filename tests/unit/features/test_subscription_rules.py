"""The pure Appendix A table: shape, guards, and reachability (no I/O)."""

from __future__ import annotations

import pytest

from presence_ha.server.features.subscription_rules import (
    BOTH,
    FROM,
    FROM_OUT,
    NONE,
    NONE_IN,
    NONE_OUT,
    NONE_OUT_IN,
    STATES,
    TABLE,
    TO,
    TO_IN,
    Effect,
    Kind,
    Sub,
    Way,
    decide,
    markdown,
)


def test_table_has_one_row_per_way_kind_and_state():
    assert len(TABLE) == len(Way) * len(Kind) * len(STATES) == 72
    assert set(TABLE) == {(w, k, s) for w in Way for k in Kind for s in STATES}


def test_every_state_is_reachable_from_none_and_none_is_reachable_from_each():
    def closure(start):
        seen, todo = {start}, [start]
        while todo:
            state = todo.pop()
            for (_way, _kind, src), row in TABLE.items():
                if src == state and row.to not in seen:
                    seen.add(row.to)
                    todo.append(row.to)
        return seen

    assert closure(NONE) == set(STATES)
    assert all(NONE in closure(state) for state in STATES)


def test_state_names_are_the_rfc_words():
    assert [str(s) for s in STATES] == [
        "None", "None + Pending Out", "None + Pending In", "None + Pending Out/In",
        "To", "To + Pending In", "From", "From + Pending Out", "Both",
    ]
    assert '| outbound | subscribe | "None" | MUST | "None + Pending Out" |' in markdown()


@pytest.mark.parametrize("key", list(TABLE), ids=lambda k: f"{k[0].value}-{k[1].value}-{k[2]}")
def test_decide_follows_each_row_without_approval(key):
    way, kind, state = key
    row = TABLE[key]
    decision = decide(way, kind, state)
    assert (Effect.ROUTE in decision.effects) == row.route
    if (way, kind) == (Way.OUTBOUND, Kind.SUBSCRIBED) and not row.route:
        # §3.4: a 'subscribed' nobody asked for is a pre-approval, unless 'from' exists
        assert decision.approved == (not state.sub.has_from)
    else:
        assert not decision.approved
    assert decision.state == row.to
    assert (Effect.AUTO_SUBSCRIBED in decision.effects) == (
        way is Way.INBOUND and kind is Kind.SUBSCRIBE and state.sub.has_from)
    assert (Effect.STORE_REQUEST in decision.effects) == (row.to.pending_in and not state.pending_in)
    assert (Effect.DROP_REQUEST in decision.effects) == (state.pending_in and not row.to.pending_in)
    assert (Effect.SEND_PRESENCE in decision.effects) == (row.to.sub.has_from and not state.sub.has_from)
    assert (Effect.SEND_UNAVAILABLE in decision.effects) == (state.sub.has_from and not row.to.sub.has_from)


@pytest.mark.parametrize(("state", "expected"), [(NONE, FROM), (NONE_OUT, FROM_OUT), (TO, BOTH)])
def test_preapproved_request_is_granted_at_once(state, expected):
    decision = decide(Way.INBOUND, Kind.SUBSCRIBE, state, approved=True)
    assert decision.state == expected and not decision.approved
    assert decision.effects == {Effect.AUTO_SUBSCRIBED, Effect.SEND_PRESENCE, Effect.PUSH}


def test_unsubscribed_cancels_a_preapproval():
    decision = decide(Way.OUTBOUND, Kind.UNSUBSCRIBED, NONE, approved=True)
    assert decision.state == NONE and not decision.approved
    assert decision.effects == {Effect.PUSH}


def test_answering_a_request_uses_no_approval_and_pushes():
    decision = decide(Way.OUTBOUND, Kind.SUBSCRIBED, NONE_OUT_IN, approved=True)
    assert decision.state == FROM_OUT and not decision.approved
    assert {Effect.ROUTE, Effect.PUSH, Effect.DROP_REQUEST, Effect.SEND_PRESENCE} == decision.effects


def test_pending_in_alone_is_not_pushed():
    # §3.1.3: an inbound request adds nothing visible to the roster
    assert Effect.PUSH not in decide(Way.INBOUND, Kind.SUBSCRIBE, NONE).effects
    assert Effect.PUSH in decide(Way.INBOUND, Kind.SUBSCRIBED, NONE_OUT).effects
    assert decide(Way.INBOUND, Kind.UNSUBSCRIBE, TO_IN).state == TO
    assert decide(Way.OUTBOUND, Kind.UNSUBSCRIBE, BOTH).state.sub is Sub.FROM
    assert decide(Way.INBOUND, Kind.SUBSCRIBE, NONE_IN).effects == frozenset()
    assert decide(Way.OUTBOUND, Kind.UNSUBSCRIBED, NONE_IN).state == NONE


# RFC 6121 Appendix A tables 2-9, transcribed in the RFC's own words, independently of
# the TABLE literal: "state | route | new state" ("-" = no state change).
RFC_TABLES = {
    (Way.OUTBOUND, Kind.SUBSCRIBE): """
        None | MUST | None + Pending Out
        None + Pending Out | MUST | -
        None + Pending In | MUST | None + Pending Out/In
        None + Pending Out/In | MUST | -
        To | MUST | -
        To + Pending In | MUST | -
        From | MUST | From + Pending Out
        From + Pending Out | MUST | -
        Both | MUST | -""",
    (Way.OUTBOUND, Kind.UNSUBSCRIBE): """
        None | MUST | -
        None + Pending Out | MUST | None
        None + Pending In | MUST | -
        None + Pending Out/In | MUST | None + Pending In
        To | MUST | None
        To + Pending In | MUST | None + Pending In
        From | MUST | -
        From + Pending Out | MUST | From
        Both | MUST | From""",
    (Way.OUTBOUND, Kind.SUBSCRIBED): """
        None | MUST NOT | -
        None + Pending Out | MUST NOT | -
        None + Pending In | MUST | From
        None + Pending Out/In | MUST | From + Pending Out
        To | MUST NOT | -
        To + Pending In | MUST | Both
        From | MUST NOT | -
        From + Pending Out | MUST NOT | -
        Both | MUST NOT | -""",
    (Way.OUTBOUND, Kind.UNSUBSCRIBED): """
        None | MUST NOT | -
        None + Pending Out | MUST NOT | -
        None + Pending In | MUST | None
        None + Pending Out/In | MUST | None + Pending Out
        To | MUST NOT | -
        To + Pending In | MUST | To
        From | MUST | None
        From + Pending Out | MUST | None + Pending Out
        Both | MUST | To""",
    (Way.INBOUND, Kind.SUBSCRIBE): """
        None | MUST | None + Pending In
        None + Pending Out | MUST | None + Pending Out/In
        None + Pending In | MUST NOT | -
        None + Pending Out/In | MUST NOT | -
        To | MUST | To + Pending In
        To + Pending In | MUST NOT | -
        From | MUST NOT | -
        From + Pending Out | MUST NOT | -
        Both | MUST NOT | -""",
    (Way.INBOUND, Kind.UNSUBSCRIBE): """
        None | MUST NOT | -
        None + Pending Out | MUST NOT | -
        None + Pending In | MUST | None
        None + Pending Out/In | MUST | None + Pending Out
        To | MUST NOT | -
        To + Pending In | MUST | To
        From | MUST | None
        From + Pending Out | MUST | None + Pending Out
        Both | MUST | To""",
    (Way.INBOUND, Kind.SUBSCRIBED): """
        None | MUST NOT | -
        None + Pending Out | MUST | To
        None + Pending In | MUST NOT | -
        None + Pending Out/In | MUST | To + Pending In
        To | MUST NOT | -
        To + Pending In | MUST NOT | -
        From | MUST NOT | -
        From + Pending Out | MUST | Both
        Both | MUST NOT | -""",
    (Way.INBOUND, Kind.UNSUBSCRIBED): """
        None | MUST NOT | -
        None + Pending Out | MUST | None
        None + Pending In | MUST NOT | -
        None + Pending Out/In | MUST | None + Pending In
        To | MUST | None
        To + Pending In | MUST | None + Pending In
        From | MUST NOT | -
        From + Pending Out | MUST | From
        Both | MUST | From""",
}
BY_NAME = {str(state): state for state in STATES}


@pytest.mark.parametrize("way_kind", list(RFC_TABLES), ids=lambda wk: f"{wk[0].value}-{wk[1].value}")
def test_table_matches_the_rfc_transcription(way_kind):
    lines = [line.strip() for line in RFC_TABLES[way_kind].strip().splitlines()]
    assert len(lines) == 9
    for line in lines:
        name, route, new = (part.strip() for part in line.split("|"))
        state = BY_NAME[name]
        row = TABLE[(*way_kind, state)]
        assert row.route == (route == "MUST"), line
        assert row.to == (state if new == "-" else BY_NAME[new]), line


def test_the_table_kinds_are_presence_types():
    from presence_ha.server.xmpp.stanzas import PresenceType

    assert {PresenceType(kind.value) for kind in Kind} == {
        PresenceType.SUBSCRIBE, PresenceType.SUBSCRIBED, PresenceType.UNSUBSCRIBE, PresenceType.UNSUBSCRIBED}
