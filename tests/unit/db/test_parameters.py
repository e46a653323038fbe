"""The parameter registry (SPEC §2, §5): defaults, types, ranges, cross rules."""

from __future__ import annotations

import pytest

from presence_ha.db.errors import InvalidValue
from presence_ha.db.parameters import REGISTRY, Kind, Scope, check_cross_rules, defaults, spec_for

SPEC_DEFAULTS = {
    "srm_port": 22001,
    "admin_rpc_port": 20075,
    "critical_service_delay_s": 90,
    "auto_fallback_enabled": False,
    "auto_fallback_delay_s": 1800,
    "init_heartbeat_timeout_s": 120,
    "heartbeat_timeout_s": 60,
    "heartbeat_interval_s": 15,
    "monitor_auth_service": False,
    "relogin_lower_s": 120,
    "relogin_upper_s": 537,
    "user_assignment_mode": "Balanced",
    "inband_registration": False,
    "see_other_host_redirect": False,
    "presence_grace_s": 30,  # beyond the original: presence continuity after a takeover
    "db_outage_grace_s": 20,  # beyond the original: a database promotion is no node failure (issue #17)
}


def test_every_spec_parameter_with_its_default():
    assert defaults() == SPEC_DEFAULTS


def test_scopes_and_kinds():
    per_node = {name for name, spec in REGISTRY.items() if spec.scope is Scope.NODE}
    assert per_node == {"relogin_lower_s", "relogin_upper_s"}
    enterprise = {name for name, spec in REGISTRY.items() if spec.kind is Kind.ENTERPRISE}
    assert enterprise == {"user_assignment_mode", "inband_registration", "see_other_host_redirect"}


def test_defaults_are_valid_values():
    for spec in REGISTRY.values():
        assert spec.parse(spec.render(spec.default)) == spec.default
    check_cross_rules(defaults(), "defaults")


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("heartbeat_interval_s", "5", 5),
        ("heartbeat_interval_s", 7, 7),
        ("auto_fallback_enabled", "TRUE", True),
        ("auto_fallback_enabled", "off", False),
        ("monitor_auth_service", True, True),
        ("user_assignment_mode", "Active-Standby", "Active-Standby"),
        ("user_assignment_mode", "None", "None"),
        ("srm_port", "65535", 65535),
    ],
)
def test_parse_accepts(key, raw, value):
    assert spec_for(key).parse(raw) == value


@pytest.mark.parametrize(
    ("key", "raw", "why"),
    [
        ("heartbeat_interval_s", "fast", "not an integer"),
        ("heartbeat_interval_s", "0", "outside"),
        ("critical_service_delay_s", "3601", "outside"),
        ("srm_port", "70000", "outside"),
        ("srm_port", True, "not an integer"),
        ("auto_fallback_enabled", "maybe", "not a boolean"),
        ("user_assignment_mode", "balanced", "not one of"),
    ],
)
def test_parse_rejects_naming_the_key(key, raw, why):
    with pytest.raises(InvalidValue) as info:
        spec_for(key).parse(raw)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ") and why in str(info.value)


def test_unknown_key_is_named():
    with pytest.raises(InvalidValue, match=r"^heartbeat_s: unknown parameter"):
        spec_for("heartbeat_s")


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"relogin_lower_s": 600}, "relogin_lower_s"),
        ({"heartbeat_interval_s": 60}, "heartbeat_interval_s"),
        ({"heartbeat_interval_s": 30, "init_heartbeat_timeout_s": 20, "heartbeat_timeout_s": 40},
         "heartbeat_interval_s"),
    ],
)
def test_cross_rules(changes, key):
    with pytest.raises(InvalidValue) as info:
        check_cross_rules({**defaults(), **changes}, "here")
    assert info.value.key == key
    check_cross_rules({**defaults(), "relogin_lower_s": 537}, "equal limits are fine")
