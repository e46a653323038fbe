"""What standard (XEP-0198) clients went through when their connection was lost: the pure part.

Rules of this module:
- No I/O, no clock: the load generators ship one `Reconnect` row per lost connection
  (`("C", user, lost_at, back_at, how, attempts)`, `time.monotonic()` seconds);
  `figures()` turns them into the report's `resumption` section.
- Definitions (the report uses exactly these):
  * connections_lost: connections a client saw end (reader stopped, or silent for
    the liveness time) while it was still sending;
  * resumed: reconnections where `<resume/>` succeeded (`<resumed/>`);
    relogins: where it failed (or could not be tried) and the client logged in again;
    not_reconnected: lost connections with no session again before the run ended;
  * resumption_ms: from the connection's loss to `<resumed/>`; relogin_ms: from the
    loss to the new session bound (SM enabled); reconnect_ms: both together;
  * attempts: connections dialled per reconnection (1: the first one worked).
- Kept apart from the message figures of `scenario.Ledger`: a standard run reports
  both, the same message definitions for every kind of client.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from presence_ha.loadtest.scenario import percentile, summary_ms

RESUMED, RELOGIN = "resumed", "relogin"


@dataclass(frozen=True)
class Reconnect:
    """One lost connection of `user` and how (and when: `back_at`) it got a session again."""

    user: str
    lost_at: float
    back_at: float | None  # None: never back before the run ended
    how: str | None  # RESUMED, RELOGIN, or None
    attempts: int = 1


def from_row(row: tuple) -> Reconnect:
    """The generators' compact row `("C", user, lost_at, back_at, how, attempts)`."""
    return Reconnect(*row[1:])


def row(rec: Reconnect) -> tuple:
    return ("C", rec.user, rec.lost_at, rec.back_at, rec.how, rec.attempts)


def backoff(rng, attempt: int, first_s: float, base_s: float, cap_s: float) -> float:
    """Delay before reconnection attempt `attempt` (0: the first after the loss).

    The first attempt goes out at once, as slixmpp's and aioxmpp's do, spread over
    `first_s` (clients notice a loss at different moments; a thousand simulated ones
    would otherwise dial in the same millisecond); then full-jitter exponential
    backoff from `base_s`, at most `cap_s`."""
    if attempt <= 0:
        return rng.uniform(0, first_s)
    return rng.uniform(base_s / 2, min(cap_s, base_s * 2 ** (attempt - 1)))


def figures(rows: Iterable[Reconnect], fault_at: float | None = None) -> dict:
    """The report's `resumption` section (see the module rules)."""
    rows = list(rows)
    resumed = [r.back_at - r.lost_at for r in rows if r.how == RESUMED and r.back_at is not None]
    relogin = [r.back_at - r.lost_at for r in rows if r.how == RELOGIN and r.back_at is not None]
    attempts = [float(r.attempts) for r in rows if r.back_at is not None]
    return {
        "connections_lost": len(rows),
        "lost_before_fault": sum(1 for r in rows if fault_at is not None and r.lost_at < fault_at),
        "resumed": len(resumed),
        "relogins": len(relogin),
        "users_relogged": len({r.user for r in rows if r.how == RELOGIN}),
        "not_reconnected": sum(1 for r in rows if r.back_at is None),
        "resumption_ms": summary_ms(resumed),
        "relogin_ms": summary_ms(relogin),
        "reconnect_ms": summary_ms(resumed + relogin),
        "attempts_p99": percentile(attempts, 99),
        "attempts_max": max(attempts, default=None),
    }
