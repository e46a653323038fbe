"""Failover load test, the pure part: rosters, delays, and the accounting of a run.

Rules of this module:
- No I/O, no clock, no global randomness: times are numbers the caller measured
  (`time.monotonic()` seconds, one clock for every process of the machine) and
  randomness is an injected `random.Random`.
- A run is a list of events (`Sent`, `Acked`, `Received`, `Served`, `Resent`, `Bounced`) produced
  by the load generators; `Ledger` turns them into the figures of the report. A message is
  identified by its id (unique per run); probes are messages a user sends to its own
  bare JID, so their arrival is a round trip through the server.
- Definitions (the report uses exactly these):
  * sent: written on a connection that was logged in; acked: covered by the server's
    XEP-0198 `<a h=''/>`; delivered: received at least once by an active session;
    lost: sent, never delivered; bounced: lost, but the server answered it with an error
    (the sender was told: a node whose presence engine is stopped refuses IM, SPEC §4);
    lost_acked: acked, never delivered, not bounced (a silent loss; SPEC §9 says 0);
    duplicated: deliveries to the application beyond the first (a receiver that
    recognised a copy by its id and dropped it did not deliver it: `duplicates_dropped`);
    resent: sends again, after a failover, of messages the lost node never
    acknowledged (`resent_messages` distinct ones); `delivered_by_resend`: messages
    whose first delivery came from a resend (without it they would be lost).
  * affected users: users whose active node was the faulted node at the fault.
  * downtime of a user: from its last probe round trip completed at or before the
    fault to its first one completed after it (resolution: the probe interval).
    recovery: from the fault to that first round trip after it.
  * takeover: from the fault until the last affected user is active on another node.
  * double served: a user whose deliveries came from node A, then B, then A again
    (two nodes serving it at once), or any delivery to a session still inactive.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

RETRYABLE_LOGIN = ("temporary-auth-failure", "policy-violation", "resource-constraint")


@dataclass(frozen=True)
class Sent:
    msg_id: str
    sender: str
    recipient: str
    at: float


@dataclass(frozen=True)
class Acked:
    msg_id: str
    at: float


@dataclass(frozen=True)
class Received:
    msg_id: str
    recipient: str
    node: str
    at: float
    inactive: bool = False  # arrived on a session the client still held inactive
    dropped: bool = False  # a copy the receiver recognised by its id and did not deliver again


@dataclass(frozen=True)
class Resent:
    """The sender sent `msg_id` again after a failover (its node never acknowledged it)."""

    msg_id: str
    at: float


@dataclass(frozen=True)
class Bounced:
    """The server answered the sender's `msg_id` with an error stanza."""

    msg_id: str
    at: float


@dataclass(frozen=True)
class Served:
    """`user` became active on `node` at `at` (`how`: login, activated, served-here)."""

    user: str
    node: str
    at: float
    how: str = "login"


Event = Sent | Acked | Received | Served | Resent | Bounced
_KINDS = {"S": Sent, "A": Acked, "R": Received, "V": Served, "T": Resent, "B": Bounced}


def from_tuple(row: tuple) -> Event:
    """Load generators ship events as compact tuples (`("S", id, from, to, t)`...)."""
    return _KINDS[row[0]](*row[1:])


@dataclass(frozen=True)
class NodeAddr:
    """A node as the load generators see it: client address and re-login limits (SPEC §5)."""

    name: str
    host: str
    port: int
    relogin_lower_s: float = 1.0
    relogin_upper_s: float = 3.0


@dataclass(frozen=True)
class UserSpec:
    name: str
    password: str
    home: str  # the node serving it when the run starts
    contacts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """How every simulated client behaves (the same in every load generator process)."""

    mode: str  # "single" (re-login) or "dual" (inactive backup connection, SPEC §8)
    domain: str
    nodes: tuple[NodeAddr, ...]
    probe_interval_s: float = 0.5  # a message to oneself: the round trip behind downtime
    chat_interval_s: float = 4.0  # mean interval of chat messages to a random contact
    presence_interval_s: float = 20.0  # status change broadcast to the roster
    liveness_s: float = 3.0  # no stanza for this long while a probe is out: connection dead
    activate_retry_s: float = 0.2  # XEP-PHA §5.1
    activate_timeout_s: float = 30.0
    login_rate: float = 200.0  # initial logins per second, per load generator
    tls: bool = True
    sm: bool = True
    source_ips: tuple[str, ...] = ()
    seed: int = 1

    def node(self, name: str) -> NodeAddr:
        return next(n for n in self.nodes if n.name == name)

    def node_by_address(self, host_port: str) -> NodeAddr | None:
        return next((n for n in self.nodes if f"{n.host}:{n.port}" == host_port), None)

    def others(self, name: str) -> list[NodeAddr]:
        return [n for n in self.nodes if n.name != name]


# ---- schedule ------------------------------------------------------------------------

def roster_pairs(by_node: Mapping[str, Sequence[str]], contacts: int = 20) -> set[frozenset[str]]:
    """Mutual contact pairs: about `contacts` per user, half on its node, half on others.

    Same node: a ring of +-contacts/4 neighbours. Other node: user k of node A with
    users k-contacts/4 .. k+contacts/4-1 of node B. The relation is a set of pairs,
    so every roster is symmetric (subscription 'both' on both sides).
    """
    half = max(1, contacts // 4)
    pairs: set[frozenset[str]] = set()
    names = sorted(by_node)
    for node in names:
        ring = list(by_node[node])
        for k, user in enumerate(ring):
            for d in range(1, half + 1):
                pairs.add(frozenset((user, ring[(k + d) % len(ring)])))
    for a, b in ((a, b) for i, a in enumerate(names) for b in names[i + 1:]):
        left, right = list(by_node[a]), list(by_node[b])
        for k, user in enumerate(left):
            for d in range(-half, half):
                if right:
                    pairs.add(frozenset((user, right[(k + d) % len(right)])))
    return {p for p in pairs if len(p) == 2}


def rosters(pairs: Iterable[frozenset[str]]) -> dict[str, list[str]]:
    """{user: sorted contacts} from mutual pairs."""
    out: dict[str, set[str]] = defaultdict(set)
    for pair in pairs:
        a, b = tuple(pair)
        out[a].add(b)
        out[b].add(a)
    return {user: sorted(contacts) for user, contacts in out.items()}


def relogin_delay(rng: random.Random, lower_s: float, upper_s: float) -> float:
    """SPEC §8: a random delay between the node's re-login lower and upper limits."""
    return rng.uniform(lower_s, max(lower_s, upper_s))


def retry_backoff(rng: random.Random, attempt: int, base_s: float = 0.2, cap_s: float = 5.0) -> float:
    """Full-jitter exponential backoff for a refused login (attempt 1, 2, ...)."""
    return rng.uniform(base_s / 2, min(cap_s, base_s * 2 ** (attempt - 1)))


def is_retryable(reason: str) -> bool:
    """A login refusal worth retrying: the server said 'later', not 'never'."""
    return any(cond in reason for cond in RETRYABLE_LOGIN)


# ---- statistics ----------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); inf values sort last; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(values_s: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/max in ms; an infinite value (never recovered) shows as None."""
    def ms(v: float | None) -> float | None:
        return None if v is None or math.isinf(v) else round(v * 1000, 1)
    return {"p50": ms(percentile(values_s, 50)), "p90": ms(percentile(values_s, 90)),
            "p99": ms(percentile(values_s, 99)), "max": ms(max(values_s) if values_s else None),
            "count": len(values_s)}


def cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """(sorted finite values, cumulative fraction of all values) for a CDF plot."""
    finite = sorted(v for v in values if not math.isinf(v))
    n = len(values)
    return finite, [(i + 1) / n for i in range(len(finite))]


def downtime(round_trips: Sequence[float], fault_at: float) -> tuple[float, float]:
    """(downtime, recovery) of one user from its probe round-trip completion times.

    inf when no round trip completed after the fault; downtime counts from the fault
    when none completed before it.
    """
    before = [t for t in round_trips if t <= fault_at]
    after = [t for t in round_trips if t > fault_at]
    if not after:
        return math.inf, math.inf
    first = min(after)
    return first - (max(before) if before else fault_at), first - fault_at


def switches(nodes_in_time_order: Sequence[str]) -> int:
    """How many times the serving node changed along a delivery sequence."""
    return sum(1 for a, b in itertools.pairwise(nodes_in_time_order) if a != b)


def went_back(nodes_in_time_order: Sequence[str]) -> bool:
    """True if a node served again after another took over (A..B..A)."""
    seen: list[str] = []
    for node in nodes_in_time_order:
        if not seen or seen[-1] != node:
            if node in seen:
                return True
            seen.append(node)
    return False


# ---- accounting ----------------------------------------------------------------------

@dataclass
class Ledger:
    """Everything one run measured; feed events, then ask for the figures."""

    sent: dict[str, Sent] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)
    received: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    served: dict[str, list[Served]] = field(default_factory=lambda: defaultdict(list))
    resent: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    bounced: dict[str, float] = field(default_factory=dict)

    def feed(self, events: Iterable[Event]) -> Ledger:
        for event in events:
            if isinstance(event, Sent):
                self.sent[event.msg_id] = event
            elif isinstance(event, Acked):
                self.acked.setdefault(event.msg_id, event.at)
            elif isinstance(event, Received):
                self.received[event.msg_id].append(event)
            elif isinstance(event, Served):
                self.served[event.user].append(event)
            elif isinstance(event, Resent):
                self.resent[event.msg_id].append(event.at)
            elif isinstance(event, Bounced):
                self.bounced.setdefault(event.msg_id, event.at)
        return self

    @staticmethod
    def _deliveries(rx: list[Received]) -> list[Received]:
        """Arrivals handed to the application: on an active session, not dropped as a copy."""
        return [r for r in rx if not r.inactive and not r.dropped]

    def first_delivery(self, msg_id: str) -> float | None:
        return min((r.at for r in self._deliveries(self.received.get(msg_id, []))), default=None)

    def delivered_ids(self) -> set[str]:
        return {m for m, rx in self.received.items() if m in self.sent and self._deliveries(rx)}

    def messages(self) -> dict[str, int]:
        delivered = self.delivered_ids()
        acked = {m for m in self.acked if m in self.sent}
        bounced = {m for m in self.bounced if m in self.sent} - delivered
        resent = {m for m in self.resent if m in self.sent}
        by_resend = {m for m in resent & delivered if (first := self.first_delivery(m)) is not None
                     and first >= min(self.resent[m])}
        return {
            "sent": len(self.sent),
            "acked": len(acked),
            "delivered": len(delivered),
            "lost": len(self.sent) - len(delivered),
            "lost_acked": len(acked - delivered - bounced),
            "bounced": len(bounced),
            "duplicated": sum(max(0, len(self._deliveries(rx)) - 1)
                              for m, rx in self.received.items() if m in self.sent),
            "duplicates_dropped": sum(r.dropped for m, rx in self.received.items() if m in self.sent for r in rx),
            "resent": sum(len(self.resent[m]) for m in resent),
            "resent_messages": len(resent),
            "delivered_by_resend": len(by_resend),
            "unknown_received": sum(1 for m in self.received if m not in self.sent),
        }

    def lost_acked_ids(self, limit: int = 20) -> list[str]:
        delivered = self.delivered_ids()
        return sorted(m for m in self.acked if m in self.sent and m not in delivered and m not in self.bounced)[:limit]

    def lost_ids(self, limit: int = 20) -> list[str]:
        """Messages sent and never delivered, acknowledged or not."""
        delivered = self.delivered_ids()
        return sorted(m for m in self.sent if m not in delivered)[:limit]

    def node_at(self, user: str, at: float) -> str | None:
        """The node serving `user` at `at` according to its client."""
        current = None
        for event in sorted(self.served.get(user, ()), key=lambda e: e.at):
            if event.at > at:
                break
            current = event.node
        return current

    def affected(self, fault_node: str, fault_at: float) -> list[str]:
        return sorted(u for u in self.served if self.node_at(u, fault_at) == fault_node)

    def round_trips(self) -> dict[str, list[float]]:
        """{user: completion times of its probes} (a probe: a message to itself)."""
        out: dict[str, list[float]] = defaultdict(list)
        for msg_id in self.received:
            sent = self.sent.get(msg_id)
            if sent is not None and sent.sender == sent.recipient:
                first = self.first_delivery(msg_id)
                if first is not None:
                    out[sent.sender].append(first)
        return out

    def downtimes(self, users: Iterable[str], fault_at: float) -> tuple[list[float], list[float]]:
        """(downtimes, recoveries) in seconds of `users`; inf for a user never back."""
        trips = self.round_trips()
        pairs = [downtime(trips.get(u, ()), fault_at) for u in users]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def takeover(self, users: Iterable[str], fault_node: str, fault_at: float) -> float:
        """Seconds from the fault until every user in `users` is active elsewhere (inf: never)."""
        worst = 0.0
        for user in users:
            moved = [e.at for e in self.served.get(user, ()) if e.at > fault_at and e.node != fault_node]
            if not moved:
                return math.inf
            worst = max(worst, min(moved) - fault_at)
        return worst

    def double_served(self) -> list[str]:
        """Users served by two nodes at once (see the module rules)."""
        by_user: dict[str, list[Received]] = defaultdict(list)
        for rx in self.received.values():
            for r in rx:
                by_user[r.recipient].append(r)
        bad = []
        for user, rx in by_user.items():
            ordered = sorted(rx, key=lambda r: r.at)
            if any(r.inactive for r in ordered) or went_back([r.node for r in ordered if not r.inactive]):
                bad.append(user)
        return sorted(bad)

    def rates(self, start: float, end: float, step_s: float = 1.0) -> dict[str, list[float]]:
        """Per-second series of sent, acked and delivered messages between start and end."""
        bins = max(1, math.ceil((end - start) / step_s))
        series = {"t": [start + (i + 0.5) * step_s for i in range(bins)],
                  "sent": [0.0] * bins, "acked": [0.0] * bins, "delivered": [0.0] * bins}

        def add(name: str, at: float) -> None:
            i = int((at - start) / step_s)
            if 0 <= i < bins:
                series[name][i] += 1 / step_s
        for s in self.sent.values():
            add("sent", s.at)
        for at in self.acked.values():
            add("acked", at)
        for rx in self.received.values():
            add("delivered", min(r.at for r in rx))
        return series
