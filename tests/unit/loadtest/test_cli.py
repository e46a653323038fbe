"""Option parsing and table rendering of loadtest.cli (no benchmark is run)."""

import math

import click
import pytest
from click.testing import CliRunner

from presence_ha.loadtest.cli import main, render, settings_from


def _opts(**over):
    base = {"users": 30, "workers": 1, "setup_rate": 100.0, "login_count": 0, "login_rate": 50.0,
                "chat_pairs": 5, "chat_rate": 10.0, "chat_duration": 1.0, "contacts": 5, "presence_users": 12,
                "presence_rate": 2.0, "presence_duration": 1.0, "memory_levels": (10,), "settle": 0.5,
                "scenarios": ("login", "memory")}
    base.update(over)
    return base


def test_settings_from_options():
    s = settings_from(_opts())
    assert (s.users, s.chat_duration_s, s.memory_levels, s.scenarios) == (
        30, 1.0, (10,), ("login", "memory"))


def test_unknown_scenario_is_refused():
    with pytest.raises(click.BadParameter):
        settings_from(_opts(scenarios=("login", "fly")))


def test_help_lists_both_commands():
    out = CliRunner().invoke(main, ["--help"]).output
    assert "bench" in out and "bench-prosody" in out


def test_render_handles_every_scenario():
    lat = {"count": 1, "p50_ms": 1.0, "p99_ms": 2.0, "mean_ms": 1.0, "max_ms": 2.0}
    result = {
        "target": {"host": "127.0.0.1", "port": 5222, "tls": False, "mech": "PLAIN"},
        "results": {
            "login": {"offered": 1, "offered_rate": 1.0, "achieved_per_s": 1.0, "ok": 1,
                      "failed": 0, **lat},
            "chat": {"sent": 1, "offered_rate": 1.0, "achieved_per_s": None, "received": 1,
                     "lost": 0, "pairs": 1, **lat},
            "presence": {"broadcasts": 1, "offered_rate": 1.0, "complete": 1, "contacts": 20,
                         "fanout": lat, "delivery": {**lat, "p99_ms": math.nan}},
            "memory": [{"sessions": 10, "held": 10, "setup_failures": 0, "kb_per_session": 5.0, "rss_baseline_kb": 1,
                        "rss_before_kb": 1, "rss_after_kb": 51}],
        },
    }
    assert render(result).row_count == 4
