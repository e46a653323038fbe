"""Chaos soak, the pure part: the fault schedule, the way back, and the invariants' rules.

Rules of this module:
- No I/O, no clock, no global randomness (as `loadtest.scenario`): times are
  `time.monotonic()` seconds the caller measured, randomness an injected `random.Random`.
- Schedule: the wait before each fault is uniform in the `--interval` bounds; the fault
  kind comes from a shuffle bag (every kind once per round of len(kinds) faults, in a
  random order), so a short run still sees different kinds; the node is uniform.
- The way back (`restore_action`) reads the pair's SRM states: Normal/Normal is healthy;
  a node in a state the admin's fallback leaves (Idle, Failed Over...) while its peer runs
  in backup mode gets `fallback`; a failed or unknown state gets `recover`; anything
  else (a transient state, a node not up yet) is waited for.
- `SoakLedger` is a `scenario.Ledger` whose messages settle: those sent before a cutoff
  leave memory, their figures kept as totals; a late event of a settled message still
  counts (a late delivery of a message counted lost makes it delivered, of one delivered
  already a duplicate; a late error answer makes an acked loss a bounce). Message ids
  are `user:seq` with seq growing per user in time.
- Invariants (each pass/fail with its reason):
  * lost_acked: 0 acknowledged messages never delivered and never answered with an
    error (SPEC §9; see `scenario` for `bounced`).
  * double_served: 0 users served by two nodes, checked per segment of the run between
    two pair changes (a fault, a fallback): within one segment a user's deliveries must
    not go A, B, A, and none may arrive on an inactive session. (Across segments A, B,
    A is the failover and the fallback.)
  * recovery: every user affected by a fault or a fallback has a round trip again
    within the recovery bound, and the pair is back to Normal/Normal in time.
  * rss: per node process, the RSS at each healthy checkpoint (pair Normal/Normal, all
    users ready, just before a fault) after the first fault must stay within
    max(LIMIT_MB, LIMIT_PCT %) of its first such checkpoint. A process seen at fewer
    than two such checkpoints (restarted since) is not judged; the verdict says so.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from presence_ha.loadtest.scenario import Acked, Bounced, Event, Ledger, Received, Resent, Sent, Served, went_back

HEALTHY = ("Normal", "Normal")
FALLBACK_FROM = ("Idle", "Failed Over", "Failed Over with Critical Services Not Running")
BACKUP = "Running in Backup Mode"
RECOVER_FROM = ("Running in Failed Mode", "Unknown")


# ---- schedule ------------------------------------------------------------------------

def parse_interval(text: str) -> tuple[float, float]:
    """'30,60' -> (30.0, 60.0); '45' -> (45.0, 45.0). ValueError when not LOWER<=UPPER > 0."""
    lower, _, upper = text.partition(",")
    try:
        low, high = float(lower), float(upper or lower)
    except ValueError:
        low = high = math.nan
    if not 0 < low <= high:
        raise ValueError(f"expected 0 < LOWER <= UPPER seconds, got {text!r}")
    return low, high


@dataclass(frozen=True)
class Draw:
    wait_s: float
    kind: str
    node: str


@dataclass
class Schedule:
    """The faults of one run, drawn one at a time from a seeded `random.Random`."""

    rng: random.Random
    kinds: Sequence[str]
    nodes: Sequence[str]
    interval: tuple[float, float]
    _bag: list[str] = field(default_factory=list)

    def next(self) -> Draw:
        if not self._bag:
            self._bag = list(self.kinds)
            self.rng.shuffle(self._bag)
        return Draw(self.rng.uniform(*self.interval), self._bag.pop(), self.rng.choice(list(self.nodes)))


# ---- the way back --------------------------------------------------------------------

def restore_action(states: dict[str, tuple[str, str] | None], node: str, peer: str) -> str:
    """'done', 'fallback' (of `node`), 'recover' (the group) or 'wait' (module rules)."""
    mine, theirs = states.get(node), states.get(peer)
    if mine == HEALTHY and theirs == HEALTHY:
        return "done"
    if any(s is not None and s[0] in RECOVER_FROM for s in (mine, theirs)):
        return "recover"
    if mine is not None and mine[0] in FALLBACK_FROM and theirs is not None and theirs[0] == BACKUP:
        return "fallback"
    return "wait"


# ---- a ledger for long runs ----------------------------------------------------------

def _seq(msg_id: str) -> tuple[str, int] | None:
    sender, _, seq = msg_id.rpartition(":")
    return (sender, int(seq)) if sender and seq.isdigit() else None


@dataclass
class SoakLedger(Ledger):
    """A `Ledger` whose old messages settle into totals (module rules)."""

    settled: Counter = field(default_factory=Counter)  # `messages()` figures of the settled messages
    settled_upto: dict[str, int] = field(default_factory=dict)  # sender -> highest settled seq
    # settled, not delivered: id -> True acked (a lost_acked), False not acked, None bounced
    settled_open: dict[str, bool | None] = field(default_factory=dict)
    late_inactive: set[str] = field(default_factory=set)  # users with a late delivery on an inactive session
    settled_sent: dict[str, Sent] = field(default_factory=dict)  # the first 100 settled acked losses (report)

    def _is_settled(self, msg_id: str) -> bool:
        parsed = _seq(msg_id)
        return parsed is not None and parsed[1] <= self.settled_upto.get(parsed[0], -1)

    def feed(self, events: Iterable[Event]) -> SoakLedger:
        fresh = []
        for event in events:
            if not isinstance(event, Served) and self._is_settled(event.msg_id):
                self._late(event)
            else:
                fresh.append(event)
        super().feed(fresh)
        return self

    def _late(self, event: Event) -> None:
        msg_id = getattr(event, "msg_id", "")
        if isinstance(event, Received):
            self.settled["late_received"] += 1
            if event.inactive:
                self.late_inactive.add(event.recipient)
            elif event.dropped:
                self.settled["duplicates_dropped"] += 1
            elif msg_id in self.settled_open:
                was = self.settled_open.pop(msg_id)
                self.settled.update({"delivered": 1, "lost": -1, "lost_acked": -1 if was else 0,
                                     "bounced": -1 if was is None else 0})
            else:
                self.settled["duplicated"] += 1
        elif isinstance(event, Acked) and self.settled_open.get(msg_id) is False:
            self.settled_open[msg_id] = True
            self.settled.update({"acked": 1, "lost_acked": 1})
        elif isinstance(event, Bounced) and msg_id in self.settled_open and self.settled_open[msg_id] is not None:
            self.settled.update({"bounced": 1, "lost_acked": -1 if self.settled_open[msg_id] else 0})
            self.settled_open[msg_id] = None
        elif isinstance(event, Resent):
            self.settled["resent"] += 1

    def settle(self, cutoff: float) -> int:
        """Messages sent before `cutoff` leave memory for the totals; how many did."""
        old = [m for m, s in self.sent.items() if s.at < cutoff]
        part = Ledger(sent={m: self.sent.pop(m) for m in old},
                      acked={m: self.acked.pop(m) for m in old if m in self.acked},
                      received={m: self.received.pop(m) for m in old if m in self.received},
                      resent={m: self.resent.pop(m) for m in old if m in self.resent},
                      bounced={m: self.bounced.pop(m) for m in old if m in self.bounced})
        self.settled.update(part.messages())
        delivered = part.delivered_ids()
        self.settled_open.update({m: None if m in part.bounced else m in part.acked
                                  for m in part.sent if m not in delivered})
        for msg_id in part.lost_acked_ids(limit=max(0, 100 - len(self.settled_sent))):
            self.settled_sent[msg_id] = part.sent[msg_id]
        for msg_id in old:
            parsed = _seq(msg_id)
            if parsed is not None:
                self.settled_upto[parsed[0]] = max(parsed[1], self.settled_upto.get(parsed[0], -1))
        strays = [m for m, rx in self.received.items() if m not in self.sent and all(r.at < cutoff for r in rx)]
        for msg_id in strays:  # received, never sent in this run: counted, then forgotten
            self.settled["unknown_received"] += 1
            del self.received[msg_id]
        return len(old)

    def messages(self) -> dict[str, int]:
        current = super().messages()
        return {k: current.get(k, 0) + self.settled.get(k, 0) for k in {*current, *self.settled}}

    def lost_acked_ids(self, limit: int = 20) -> list[str]:
        settled = sorted(m for m, acked in self.settled_open.items() if acked)
        return (settled + super().lost_acked_ids(limit))[:limit]

    def double_served_in(self, start: float, end: float) -> list[str]:
        """Users served by two nodes at once within [start, end) (module rules)."""
        by_user: dict[str, list[Received]] = defaultdict(list)
        for rx in self.received.values():
            for r in rx:
                if start <= r.at < end:
                    by_user[r.recipient].append(r)
        bad = set(self.late_inactive)
        for user, rx in by_user.items():
            ordered = sorted(rx, key=lambda r: r.at)
            if any(r.inactive for r in ordered) or went_back([r.node for r in ordered if not r.inactive]):
                bad.add(user)
        return sorted(bad)


def longest_gap(trips: Iterable[float], start: float, end: float) -> float:
    """A user's downtime in [start, end]: the longest gap between its round trips there,
    counted from its last one before `start` (or from `start`); inf if none came back."""
    trips = list(trips)
    inside = sorted(t for t in trips if start < t <= end)
    if not inside:
        return math.inf
    first = max((t for t in trips if t <= start), default=start)
    return max(b - a for a, b in itertools.pairwise([first, *inside]))


def window_downtimes(ledger: Ledger, users: Sequence[str], start: float, end: float) -> list[float]:
    """`longest_gap` of each user: a fault whose failover comes later than the fault itself
    (a service stopped, a manual failover) still shows the whole gap of its users."""
    trips = ledger.round_trips()
    return [longest_gap(trips.get(u, ()), start, end) for u in users]


# ---- invariants ----------------------------------------------------------------------

def verdict(ok: bool, reason: str) -> dict:
    return {"pass": ok, "reason": reason}


def rss_verdict(checkpoints: Sequence[dict], limit_mb: float, limit_pct: float) -> dict:
    """`checkpoints`: {"index", "node", "pid", "rss_kb"} at healthy moments; index 0 is
    before the first fault and is not a baseline (module rules)."""
    by_process: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for point in checkpoints:
        if point["index"] >= 1 and point.get("rss_kb") and point.get("pid"):
            by_process[(point["node"], point["pid"])].append(point)
    judged, bad = [], []
    for (node, pid), points in sorted(by_process.items()):
        if len(points) < 2:
            continue
        first, last = points[0]["rss_kb"], points[-1]["rss_kb"]
        allowed = max(limit_mb * 1024, first * limit_pct / 100)
        judged.append(f"{node} pid {pid}: {first / 1024:.0f} -> {last / 1024:.0f} MB over {len(points)} checkpoints")
        if last - first > allowed:
            bad.append(f"{node} pid {pid} grew {(last - first) / 1024:.0f} MB (> {allowed / 1024:.0f} MB allowed)")
    if bad:
        return verdict(False, "; ".join(bad))
    if not judged:
        return verdict(True, "not judged: no node process lived through two healthy checkpoints after the first fault")
    return verdict(True, f"within max({limit_mb:g} MB, {limit_pct:g}%): " + "; ".join(judged))


def recovery_verdict(events: Sequence[dict], bound_s: float) -> dict:
    """`events`: the faults and fallbacks with `recovered_within_bound` and `restored`."""
    late = [f"{e['kind']} {e['node']} at {e['at']:.0f} s: {e['recovered']}/{e['affected']} users back"
            for e in events if not e["recovered_within_bound"]]
    stuck = [f"{e['kind']} {e['node']} at {e['at']:.0f} s: {e['restore_problem']}"
             for e in events if e.get("restore_problem")]
    if late or stuck:
        return verdict(False, "; ".join([*(f"not back within {bound_s:g} s: {x}" for x in late), *stuck]))
    return verdict(True, f"{len(events)} faults and fallbacks: every affected user back within {bound_s:g} s")


def count_verdict(name: str, value: int, sample: Sequence[str]) -> dict:
    if value:
        return verdict(False, f"{name} {value} (e.g. {', '.join(sample[:5])})")
    return verdict(True, f"{name} 0")
