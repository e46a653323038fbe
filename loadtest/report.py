"""Failover run report: the figures of one run, the summary table, report.json and plots.

Rules of this module:
- `summarize()` turns a run's `scenario.Ledger`, its monitor samples and the fault
  into one JSON-ready dict; every time series is in seconds relative to the fault.
  The plots are drawn from that dict only, so report.json alone can redraw them.
- report.json: `{"runs": {MODE: run}}`; each run holds at least users, fault,
  downtime_ms (p50/p90/p99/max), takeover_ms, messages (sent/acked/delivered/lost/
  lost_acked/duplicated, and the failover resend's resent/resent_messages/
  delivered_by_resend/duplicates_dropped), double_served and rss_kb per node (see
  `scenario` for the definitions); lost_sample and lost_acked_sample name up to 20
  lost messages each.
- A standard-client run (`--clients standard`) also holds `resumption` (see
  `loadtest.resumption`: connections lost, resumed, relogins, resumption_ms and
  relogin_ms p50/p90/p99/max), apart from the message figures; `resumption_table`
  prints it.
- matplotlib runs on the Agg backend (files only, no display), imported lazily so the
  CLI starts fast; `plotting_missing()` is checked before a run, and report.json is
  written before any plot. One downtime CDF compares the modes (p50 and p99 marked);
  legends sit beside the plots, never over a line; the message-rate plot marks when
  the traffic ends. The console summary has a row per figure and a column per mode: it
  stays narrow, and its cells fold, never cut.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.table import Table

from presence_ha.loadtest.scenario import Ledger, cdf, summary_ms


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or math.isinf(seconds) else round(seconds * 1000, 1)


def _rel(value: float | None, origin: float) -> float | None:
    return None if value is None else round(value - origin, 3)


def summarize(ledger: Ledger, *, mode: str, users: int, fault: dict, fault_at: float, start: float,
              end: float, monitor, counts: dict, errors: dict, traffic_end: float | None = None) -> dict:
    """One mode's run as a JSON-ready dict; `traffic_end`: when the clients stopped sending
    (the rates fall to zero after it: the end of the run, not an outage)."""
    affected = ledger.affected(fault["node"], fault_at)
    downtimes, recoveries = ledger.downtimes(affected, fault_at)
    takeover = ledger.takeover(affected, fault["node"], fault_at)
    double = ledger.double_served()
    rates = ledger.rates(start, end)
    return {
        "mode": mode, "users": users, "fault": fault, "affected_users": len(affected),
        "not_recovered": sum(1 for d in downtimes if math.isinf(d)),
        "downtime_ms": summary_ms(downtimes), "recovery_ms": summary_ms(recoveries),
        "takeover_ms": _ms(takeover), "messages": ledger.messages(),
        "lost_acked_sample": lost_detail(ledger, ledger.lost_acked_ids(), fault_at),
        "lost_sample": lost_detail(ledger, ledger.lost_ids(), fault_at),
        "double_served": len(double), "double_served_users": double[:20],
        "login_retries": counts.get("login_retries", 0), "retryable_refusals": counts.get("retryable_refusals", 0),
        "counters": counts, "login_errors": errors, "rss_kb": monitor.rss_summary(),
        "srm_timeline": [{**s, "t": _rel(s["t"], fault_at)} for s in monitor.states],
        "series": {
            "downtime_s": [None if math.isinf(d) else round(d, 4) for d in downtimes],
            "sessions": [{**s, "t": _rel(s["t"], fault_at)} for s in monitor.samples],
            "rates": {**rates, "t": [_rel(t, fault_at) for t in rates["t"]]},
            "traffic_end_s": _rel(traffic_end, fault_at) if traffic_end is not None else None,
        },
    }


def lost_detail(ledger: Ledger, ids: list[str], fault_at: float) -> list[dict]:
    """Who sent each lost message to whom, when (acked, resent), and which nodes served them."""
    out = []
    for msg_id in ids:
        sent = ledger.sent[msg_id]
        out.append({"id": msg_id, "from": sent.sender, "to": sent.recipient, "sent_t": _rel(sent.at, fault_at),
                    "acked_t": _rel(ledger.acked.get(msg_id), fault_at),
                    "resent_t": [_rel(t, fault_at) for t in ledger.resent.get(msg_id, ())],
                    "from_node": ledger.node_at(sent.sender, sent.at),
                    "to_node": ledger.node_at(sent.recipient, sent.at)})
    return out


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if isinstance(value, float) else str(value)


def _rows(r: dict) -> list[tuple[str, str]]:
    d, m = r["downtime_ms"], r["messages"]
    return [
        ("users", str(r["users"])), ("fault", f"{r['fault']['fault']} {r['fault']['node']}"),
        ("affected users", str(r["affected_users"])),
        ("downtime ms p50/p90/p99/max", "/".join(_fmt(d[k]) for k in ("p50", "p90", "p99", "max"))),
        ("takeover ms", _fmt(r["takeover_ms"])),
        ("messages sent", str(m["sent"])), ("acked", str(m["acked"])), ("delivered", str(m["delivered"])),
        ("lost", str(m["lost"])), ("lost acked", str(m["lost_acked"])), ("duplicated", str(m["duplicated"])),
        ("resent", str(m.get("resent", "-"))), ("duplicates dropped", str(m.get("duplicates_dropped", "-"))),
        ("double served", str(r["double_served"])), ("login retries", str(r["login_retries"])),
        *((f"RSS peak kB {n}", _fmt(v["peak_kb"])) for n, v in r["rss_kb"].items()),
    ]


def tables(runs: dict[str, dict]) -> list[Table]:
    """The summary: one row per figure and one column per mode, so it stays narrow (three
    columns for two modes) and its cells fold rather than being cut off."""
    out = Table(title="Failover load test")
    out.add_column("figure", justify="left", overflow="fold")
    for mode in runs:
        out.add_column(mode, justify="right", overflow="fold")
    rows = {mode: dict(_rows(r)) for mode, r in runs.items()}
    names = list(dict.fromkeys(name for mode_rows in rows.values() for name in mode_rows))
    for name in names:
        out.add_row(name, *(rows[mode].get(name, "-") for mode in runs))
    return [out]


def resumption_table(runs: dict[str, dict]) -> Table:
    """The standard clients' reconnections: how many resumed, how many logged in again, how fast."""
    out = Table(title="Standard clients (XEP-0198) after the fault")
    columns = ("run", "connections lost", "resumed", "resumption p50/p90/p99/max ms", "relogins",
               "relogin p50/p99/max ms", "not reconnected", "attempts max")
    for col in columns:
        out.add_column(col, justify="left" if col == "run" else "right")
    for mode, r in runs.items():
        x = r.get("resumption")
        if x is None:
            continue
        res, rel = x["resumption_ms"], x["relogin_ms"]
        out.add_row(mode, str(x["connections_lost"]), str(x["resumed"]),
                    "/".join(_fmt(res[k]) for k in ("p50", "p90", "p99", "max")), str(x["relogins"]),
                    "/".join(_fmt(rel[k]) for k in ("p50", "p99", "max")), str(x["not_reconnected"]),
                    _fmt(x["attempts_max"]))
    return out


def write_json(directory: Path, report: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "report.json"
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return path


def plotting_missing() -> str | None:
    """Why the plots cannot be drawn here (None: they can); checked before a run starts."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return (f"the plots need matplotlib ({exc}): pip install 'presence-ha[loadtest]' "
                "(or leave out --report)")
    return None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_downtime_cdf(directory: Path, runs: dict[str, dict]) -> Path:
    """One CDF of the affected users' downtime for every mode of the run, p50 and p99 of
    each marked (dotted and dashed lines in its colour, their values in the legend)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    faults = set()
    for mode, run in runs.items():
        values = [math.inf if v is None else v * 1000 for v in run["series"]["downtime_s"]]
        xs, ys = cdf(values)
        line, = ax.step(xs, ys, where="post", linewidth=2, label=f"{mode} ({len(values)} affected users)")
        d = run["downtime_ms"]
        for key, style in (("p50", ":"), ("p99", "--")):
            if d.get(key) is not None and math.isfinite(d[key]):
                ax.axvline(d[key], color=line.get_color(), linestyle=style, linewidth=1,
                           label=f"{mode} {key} {d[key]:,.0f} ms")
        faults.add(f"{run['fault']['fault']} {run['fault']['node']}")
    ax.set(xlabel="downtime (ms)", ylabel="fraction of affected users", ylim=(0, 1.02),
           title=f"Downtime CDF, fault {', '.join(sorted(faults))}")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, plt, directory / "downtime_cdf.png")


def _legend_outside(ax) -> None:
    """The legend right of the plot: it never covers a line."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize="small")


def plot_sessions(directory: Path, mode: str, run: dict) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sampled = [s for s in run["series"]["sessions"] if "jsm_sessions_client" in s]
    end = max((s["t"] for s in sampled), default=0.0)
    for i, node in enumerate(sorted({s["node"] for s in sampled})):
        points = [s for s in sampled if s["node"] == node]
        ts = [p["t"] for p in points]
        width = 3.0 if i == 0 else 1.5  # two nodes with equal counts stay both visible
        line, = ax.plot(ts, [p["jsm_sessions_client"] for p in points], linewidth=width, label=f"{node} active")
        if mode == "dual":
            ax.plot(ts, [p["jsm_sessions_client_inactive"] for p in points], linestyle="--", linewidth=width,
                    color=line.get_color(), alpha=0.6, label=f"{node} inactive")
        if ts and end - ts[-1] > 2.0:  # the node stopped answering (killed): its sessions are gone
            ax.plot([ts[-1], ts[-1], end], [points[-1]["jsm_sessions_client"], 0, 0], linestyle=":",
                    color=line.get_color(), label=f"{node} not answering")
    ax.axvline(0, color="red", linewidth=1, label=f"fault: {run['fault']['fault']} {run['fault']['node']}")
    ax.set(xlabel="seconds from the fault", ylabel="client sessions", title=f"Sessions per node, {mode} mode")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, plt, directory / f"sessions_{mode}.png")


def plot_rates(directory: Path, mode: str, run: dict) -> Path:
    plt = _pyplot()
    rates = run["series"]["rates"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key in ("sent", "acked", "delivered"):
        ax.plot(rates["t"], rates[key], label=key)
    ax.axvline(0, color="red", linewidth=1, label=f"fault: {run['fault']['fault']} {run['fault']['node']}")
    end = run["series"].get("traffic_end_s")
    if end is not None:  # the clients stop sending here: the fall to zero after it is no outage
        ax.axvline(end, color="grey", linestyle="--", linewidth=1, label="traffic ends")
        ax.axvspan(end, max([end, *rates["t"]]) + 1, color="grey", alpha=0.12)
    ax.set(xlabel="seconds from the fault", ylabel="messages / s", title=f"Message rate, {mode} mode")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, plt, directory / f"message_rate_{mode}.png")


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(directory: Path, runs: dict[str, dict]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [plot_downtime_cdf(directory, runs)]
    for mode, run in runs.items():
        paths += [plot_sessions(directory, mode, run), plot_rates(directory, mode, run)]
    return paths
