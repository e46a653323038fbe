"""The pure quota rules (server.quotas) and their configuration keys."""

from __future__ import annotations

import pytest

from presence_ha.server.config import ConfigError, QuotasConfig, load_config
from presence_ha.server.quotas import CONDITIONS, Bind, Quota, QuotaExceeded, bind_verdict, check_item, item_bytes
from presence_ha.server.xmpp.errors import Condition, ErrorType


def test_every_quota_has_its_answer_and_a_config_key() -> None:
    assert set(CONDITIONS) == set(Quota)
    assert {q.value for q in Quota} == set(QuotasConfig.__dataclass_fields__)


@pytest.mark.parametrize(("quota", "condition", "kind"), [
    (Quota.ROSTER_ITEMS, Condition.NOT_ALLOWED, ErrorType.CANCEL),
    (Quota.ROSTER_ITEM_BYTES, Condition.NOT_ACCEPTABLE, ErrorType.MODIFY),
    (Quota.PENDING_SUBSCRIPTIONS, Condition.RESOURCE_CONSTRAINT, ErrorType.WAIT),
    (Quota.OFFLINE_BYTES, Condition.SERVICE_UNAVAILABLE, ErrorType.CANCEL),
    (Quota.SESSIONS, Condition.RESOURCE_CONSTRAINT, ErrorType.WAIT),
])
def test_the_error_of_each_quota_names_its_limit(quota, condition, kind) -> None:
    error = QuotaExceeded(quota, 7).stanza_error()
    assert (error.condition, error.type) == (condition, kind)
    assert "7" in (error.text or "")


def test_item_size_counts_name_and_groups_in_utf8_bytes() -> None:
    assert item_bytes(None, ()) == 0
    assert item_bytes("Zoë", ["Friends", "日本"]) == 4 + 7 + 6
    check_item("x" * 10, ["y" * 10], 20)
    with pytest.raises(QuotaExceeded) as raised:
        check_item("x" * 10, ["y" * 11], 20)
    assert raised.value.quota is Quota.ROSTER_ITEM_BYTES


def test_bind_is_refused_beyond_the_limit_but_a_held_resource_is_replaced() -> None:
    assert bind_verdict([], "a", 2, detached=0) is Bind.ALLOW
    assert bind_verdict(["a"], "b", 2, detached=0) is Bind.ALLOW
    assert bind_verdict(["a", "b"], "c", 2, detached=0) is Bind.REFUSE
    assert bind_verdict(["a", "b"], "b", 2, detached=0) is Bind.ALLOW  # §7.7.2.1: the new session replaces the old
    assert bind_verdict(["a", "b"], "c", 2, detached=1) is Bind.END_DETACHED  # a lost phone gives its place


def test_quota_keys_load_and_are_validated() -> None:
    config = load_config(env={}, sets=["node_name=n1", "quotas.roster_max_items=50",
                                       "quotas.max_sessions_per_user=3"])
    assert config.quotas.roster_max_items == 50 and config.quotas.max_sessions_per_user == 3
    assert config.quotas.offline_max_bytes == QuotasConfig().offline_max_bytes
    with pytest.raises(ConfigError) as raised:
        load_config(env={}, sets=["node_name=n1", "quotas.offline_max_bytes=0"])
    assert raised.value.key == "quotas.offline_max_bytes"
    with pytest.raises(ConfigError) as raised:
        load_config(env={}, sets=["node_name=n1", "quotas.max_roster=5"])
    assert raised.value.key == "quotas.max_roster"
