"""The admission decision for a verified login (server.admission): samples in, verdict out."""

from __future__ import annotations

import pytest

from presence_ha.server.admission import (
    Accept,
    Backup,
    Gate,
    LoginSamples,
    Refuse,
    Relay,
    Sample,
    decide,
    when_presence_stopped,
)
from presence_ha.server.xmpp.errors import StreamCondition, StreamError
from presence_ha.server.xmpp.negotiation import SaslFailure
from presence_ha.server.xmpp.sasl import SaslCondition

REDIRECT = StreamError(StreamCondition.SEE_OTHER_HOST, "alice is served by node n2", other_host="n2:5222")
NOBODY = SaslFailure(SaslCondition.TEMPORARY_AUTH_FAILURE, "no node serves alice right now; retry later")
SRM_NO = SaslFailure(SaslCondition.TEMPORARY_AUTH_FAILURE, "node n1 serves no users now")
UNREACHABLE = SaslFailure(SaslCondition.TEMPORARY_AUTH_FAILURE, "node n2 serving alice is unreachable")


def run(samples: LoginSamples, answers: dict[Sample, object]) -> tuple[object, list[Sample]]:
    """Feed `decide` the answers it asks for; return its verdict and what it asked, in order."""
    asked: list[Sample] = []
    while isinstance(verdict := decide(samples), Sample):
        asked.append(verdict)
        samples = samples.with_sample(verdict, answers[verdict])
    return verdict, asked


def relayable(can_relay: bool = True) -> LoginSamples:
    return LoginSamples(REDIRECT, "n2", "alice is served by node n2", can_relay=can_relay)


def test_a_user_served_here_is_admitted_when_the_srm_agrees_and_never_asks_about_backups():
    assert run(LoginSamples(None), {Sample.SRM: None}) == (Accept(), [Sample.SRM])
    assert run(LoginSamples(None), {Sample.SRM: SRM_NO}) == (Refuse(SRM_NO), [Sample.SRM])


@pytest.mark.parametrize("elsewhere", [REDIRECT, NOBODY])
def test_a_user_served_elsewhere_is_refused_unless_this_node_backs_it_up(elsewhere):
    assert run(LoginSamples(elsewhere), {Sample.BACKS_UP: False}) == (Refuse(elsewhere), [Sample.BACKS_UP])
    assert run(LoginSamples(elsewhere), {Sample.BACKS_UP: True}) == (Backup(elsewhere), [Sample.BACKS_UP])


def test_a_relayable_user_is_relayed_when_its_node_is_reachable():
    answers = {Sample.BACKS_UP: False, Sample.RELAY: None}
    assert run(relayable(), answers) == (Relay("n2"), [Sample.BACKS_UP, Sample.RELAY])
    answers[Sample.RELAY] = UNREACHABLE
    assert run(relayable(), answers) == (Refuse(UNREACHABLE), [Sample.BACKS_UP, Sample.RELAY])


def test_a_backup_spares_the_redirect_and_keeps_the_relay_for_a_client_without_hold():
    assert run(relayable(), {Sample.BACKS_UP: True}) == (Backup(REDIRECT, "n2"), [Sample.BACKS_UP])
    assert run(relayable(can_relay=False), {Sample.BACKS_UP: True}) == (Backup(REDIRECT, None), [Sample.BACKS_UP])


def test_a_node_without_cluster_links_refuses_a_relayable_user_for_now():
    verdict, asked = run(relayable(can_relay=False), {Sample.BACKS_UP: False})
    assert verdict == Refuse(SaslFailure(SaslCondition.TEMPORARY_AUTH_FAILURE, "alice is served by node n2"))
    assert asked == [Sample.BACKS_UP]


@pytest.mark.parametrize(("tag", "type_", "gate"), [
    ("message", "chat", Gate.BOUNCE),
    ("message", None, Gate.BOUNCE),
    ("message", "error", Gate.DROP),
    ("presence", None, Gate.DROP),
    ("presence", "subscribe", Gate.DROP),
    ("iq", "get", Gate.PASS),
])
def test_while_the_presence_engine_is_stopped_messages_bounce_and_presence_drops(tag, type_, gate):
    assert when_presence_stopped(tag, type_) is gate
