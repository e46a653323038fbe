"""The failover report's console tables and plots, from a report dict alone."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from presence_ha.loadtest import report


def _run(mode: str, downtimes: list[float | None]) -> dict:
    finite = sorted(d * 1000 for d in downtimes if d is not None)
    return {
        "mode": mode, "users": 1000, "fault": {"fault": "kill", "node": "node1"}, "affected_users": len(downtimes),
        "downtime_ms": {"p50": finite[len(finite) // 2], "p90": finite[-1], "p99": finite[-1], "max": finite[-1]},
        "takeover_ms": 1234.5, "double_served": 0, "login_retries": 3,
        "rss_kb": {"node1": {"peak_kb": 123456}, "node2": {"peak_kb": 234567}},
        "messages": {"sent": 123456, "acked": 123450, "delivered": 123449, "lost": 0, "lost_acked": 0,
                     "duplicated": 0, "resent": 12, "duplicates_dropped": 3},
        "series": {
            "downtime_s": downtimes,
            "sessions": [{"t": t, "node": n, "jsm_sessions_client": 500, "jsm_sessions_client_inactive": 500}
                         for t in (-2.0, -1.0, 0.0, 1.0) for n in ("node1", "node2")],
            "rates": {"t": [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0], "sent": [100, 100, 90, 100, 0, 0],
                      "acked": [100, 100, 80, 100, 0, 0], "delivered": [100, 100, 70, 100, 0, 0]},
            "traffic_end_s": 1.5,
        },
    }


RUNS = {"single": _run("single", [1.2, 2.5, 3.1, None]), "dual": _run("dual", [0.05, 0.2, 0.4, 0.9])}


def test_the_summary_is_never_cut_off_in_a_narrow_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, width=60, color_system=None)
    for table in report.tables(RUNS):
        console.print(table)
    text = out.getvalue()
    assert "…" not in text and "..." not in text  # nothing truncated
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in text.splitlines() if line.count("│") >= 4}
    assert lines["downtime ms"] == ["2,500/3,100/3,100/", "400/900/900/900"]  # folded onto a 2nd line
    assert lines["p50/p90/p99/max"] == ["3,100", ""]
    assert lines["messages sent"] == ["123456", "123456"]
    assert lines["RSS peak kB node2"] == ["234567", "234567"]


def test_one_downtime_cdf_compares_the_modes_and_the_rate_plot_marks_the_end(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    paths = report.write_plots(tmp_path, RUNS)
    names = sorted(p.name for p in paths)
    assert names == ["downtime_cdf.png", "message_rate_dual.png", "message_rate_single.png",
                     "sessions_dual.png", "sessions_single.png"]
    assert all(p.stat().st_size > 5000 for p in paths)


def test_the_plotting_dependency_is_checked_before_a_run(monkeypatch) -> None:
    assert report.plotting_missing() is None
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert "pip install 'presence-ha[loadtest]'" in (report.plotting_missing() or "")
