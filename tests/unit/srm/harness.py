"""Two `SrmMachine`s back to back (h11's ConnectionPair), with a fake runner.

Rules of this module:
- No sockets, no sleeps, no wall clock: one FIFO queue of (node, event) is the
  network and the runners' callbacks; `advance()` moves a fake clock and fires the
  timers the machines started.
- The fake runner executes actions in order, like the real one: `MoveUsers` is a
  compare-and-set of (user -> active node, group epoch) in a dict "database";
  `NotifyPeer` is delivered to the other machine unless the link is down or the peer
  is down (a down peer that is not silent refuses connections).
- Clients log in (after every event) on a node whose services run, that reaches the
  database, that the database names as the user's active node and whose state
  accepts the user's assigned node (`SrmMachine.serving`). Sessions end only through
  the machine's actions (StopCriticalServices, DisconnectClients) or a crash.
- After every event the safety invariant of SPEC §9 is checked: no user has a
  session on both nodes that gets traffic: a demoted session (`DemoteClients`, make
  before break) stays open without traffic until the node closes it.
- `db_down` / `db_up` feed the machine's database events directly (the table's
  rows). With `db_checks=True` each node also runs `liveness.DatabaseLiveness` as
  the real watch does: `advance()` checks every node's database every
  `FAILING_RECHECK_S`, heartbeats carry the sender's report and give it to the
  receiver, a node tells its peer at once when its checks change and answers a
  peer whose checks fail; `db_lost` / `db_back` change what the checks see. The
  liveness, not the test, then decides whether a Database Failure is fed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from presence_ha.server.srm.actions import (
    Action,
    CancelTimer,
    CheckPeerLiveness,
    ClientKind,
    DemoteClients,
    DisconnectClients,
    MoveUsers,
    NotifyPeer,
    PersistState,
    RefuseAdminRequest,
    StartCriticalServices,
    StartTimer,
    StopCriticalServices,
)
from presence_ha.server.srm.events import (
    AdminRequestedFailover,
    AdminRequestedFallback,
    AdminRequestedRecovery,
    CriticalServiceDown,
    CriticalServicesRestored,
    CriticalServiceStartFailed,
    DbRestored,
    DbUnavailable,
    Event,
    HeartbeatReceived,
    InternalErrorOccurred,
    MoveUsersFailed,
    NodeShuttingDown,
    PeerAliveInDatabase,
    PeerConnectionRefused,
    PeerDeadInDatabase,
    SrmStarted,
    Timer,
    TimerFired,
    UsersMoved,
)
from presence_ha.server.srm.liveness import (
    DB_OUTAGE_GRACE_S,
    FAILING_RECHECK_S,
    Check,
    DatabaseLiveness,
    DbSample,
    PeerDbReport,
    peer_fresh_s,
)
from presence_ha.server.srm.machine import SrmMachine, SrmTimers
from presence_ha.server.srm.table import InvalidTransition, NodeState, Reason

MAX_STEPS = 5000
USERS_PER_NODE = 3
DEFAULT_TIMERS = SrmTimers()


class SafetyViolation(AssertionError):
    """Two nodes serve one user."""


@dataclass
class Node:
    name: str
    ha_enabled: bool = True
    machine: SrmMachine | None = None
    silent: bool = True  # when down: True = no answer at all, False = refuses
    services_up: bool = False
    service_fault: bool = False
    db_ok: bool = True
    sessions: set[str] = field(default_factory=set)
    demoted: set[str] = field(default_factory=set)  # sessions kept open, without traffic (DemoteClients)
    persisted: tuple[NodeState, Reason, int] = (NodeState.INITIALIZING, Reason.INITIALIZATION, 0)
    liveness: DatabaseLiveness = field(default_factory=DatabaseLiveness)


class Pair:
    """A presence redundancy group of two nodes, fully simulated."""

    def __init__(self, timers: SrmTimers = DEFAULT_TIMERS, names: tuple[str, str] = ("n1", "n2"), *,
                 db_checks: bool = False, db_outage_grace_s: float = DB_OUTAGE_GRACE_S) -> None:
        self.timers = timers
        self.nodes = {n: Node(n) for n in names}
        self.db_checks = db_checks
        fresh = peer_fresh_s(timers.heartbeat_interval_s, timers.heartbeat_timeout_s)
        for node in self.nodes.values():
            node.liveness.configure(db_outage_grace_s, fresh)
        self.next_check = FAILING_RECHECK_S
        self.moves: list[MoveUsers] = []
        self.now = 0.0
        self.queue: deque[tuple[str, Event]] = deque()
        self.deadlines: dict[tuple[str, Timer], float] = {}
        self.db_epoch = 0
        self.assigned = {f"{n}-user{i}": n for n in names for i in range(USERS_PER_NODE)}
        self.active = dict(self.assigned)
        self.link_up = True
        self.hold_moves = False
        self.held: list[tuple[str, MoveUsers]] = []
        self.fail_next_move = False
        self.invalid: list[InvalidTransition] = []
        self.refused: list[RefuseAdminRequest] = []
        self.transcript: list[str] = []

    # --- views -----------------------------------------------------------------------

    def other(self, name: str) -> str:
        return next(n for n in self.nodes if n != name)

    def pair_of(self, name: str) -> tuple[NodeState, Reason] | None:
        m = self.nodes[name].machine
        return None if m is None else (m.state, m.reason)

    def users_home(self) -> bool:
        return self.active == self.assigned

    # --- node lifecycle ----------------------------------------------------------------

    def start(self, name: str, pump: bool = True) -> None:
        node = self.nodes[name]
        state, reason, epoch = node.persisted
        node.machine = SrmMachine(
            name, self.other(name), self.timers,
            ha_enabled=node.ha_enabled, state=state, reason=reason, epoch=epoch,
        )
        node.services_up = not node.service_fault
        self.send(name, SrmStarted(self.db_epoch), pump)

    def start_both(self) -> None:
        for name in self.nodes:
            self.start(name)

    def crash(self, name: str, silent: bool = False) -> None:
        """The node process dies; a silent node looks powered off."""
        node = self.nodes[name]
        node.machine, node.silent = None, silent
        node.services_up, node.sessions = False, set()
        self.deadlines = {k: v for k, v in self.deadlines.items() if k[0] != name}
        self.queue = deque(item for item in self.queue if item[0] != name)
        self.held = [item for item in self.held if item[0] != name]
        peer = self.nodes[self.other(name)]
        if not silent and peer.machine is not None and self.link_up:
            self.send(peer.name, PeerConnectionRefused())

    def restart_srm(self, name: str) -> None:
        """The SRM restarts quickly, before the peer's heartbeat times out."""
        self.crash(name, silent=True)
        self.start(name)

    def shutdown(self, name: str) -> None:
        """Clean shutdown or reboot: announced, then the node is gone."""
        self._deliver(name, NodeShuttingDown())  # its last act; then it is gone
        self.crash(name, silent=True)
        self.pump()

    # --- faults and admin --------------------------------------------------------------

    def failover(self, name: str) -> None:
        self.send(name, AdminRequestedFailover())

    def fallback(self, name: str) -> None:
        self.send(name, AdminRequestedFallback())

    def recover(self) -> None:
        for name in self.nodes:
            self.send(name, AdminRequestedRecovery(), pump=False)
        self.pump()

    def service_down(self, name: str) -> None:
        self.nodes[name].service_fault = True
        self.nodes[name].services_up = False
        self.send(name, CriticalServiceDown("presence engine"))

    def fix_services(self, name: str) -> None:
        """The admin starts the critical services by hand (Control Center)."""
        self.nodes[name].service_fault = False
        self.nodes[name].services_up = True
        self.send(name, CriticalServicesRestored())

    def db_down(self, name: str) -> None:
        self.nodes[name].db_ok = False
        self.send(name, DbUnavailable())

    def db_up(self, name: str) -> None:
        self.nodes[name].db_ok = True
        self.send(name, DbRestored())

    def db_lost(self, name: str) -> None:
        """The node's database checks fail from now on; it notices at its next check."""
        self.nodes[name].db_ok = False

    def db_back(self, name: str) -> None:
        self.nodes[name].db_ok = True

    def check_db(self, name: str) -> None:
        """One database check of `name`, judged by its liveness (as `LivenessWatch.run`)."""
        node = self.nodes[name]
        if node.machine is None:
            return
        was = node.liveness.checks_ok
        check = Check.ANSWERED if node.db_ok else Check.FAILED
        verdict = node.liveness.sample(DbSample(check, 5.0, started_at=self.now, ended_at=self.now))
        if verdict.event is not None:
            self.queue.append((name, verdict.event))
        if not node.liveness.checks_ok or node.liveness.checks_ok != was:
            self._tell_peer(name)

    def _tell_peer(self, name: str) -> None:
        machine = self.nodes[name].machine
        if machine is not None:
            self._notify(name, machine.heartbeat())

    def internal_error(self, name: str) -> None:
        self.send(name, InternalErrorOccurred("test"))

    def release_moves(self) -> None:
        self.hold_moves = False
        held, self.held = self.held, []
        for name, move in held:
            self._commit(name, move)
        self.pump()

    # --- the loop ------------------------------------------------------------------------

    def send(self, name: str, event: Event, pump: bool = True) -> None:
        self.queue.append((name, event))
        if pump:
            self.pump()

    def pump(self) -> None:
        for _ in range(MAX_STEPS):
            if not self.queue:
                return
            name, event = self.queue.popleft()
            self._deliver(name, event)
        raise AssertionError(f"no quiescence after {MAX_STEPS} events: {self.transcript[-20:]}")

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = [(t, key) for key, t in self.deadlines.items() if t <= end]
            check_at = self.next_check if self.db_checks else float("inf")
            if due and min(t for t, _ in due) <= check_at:
                t, (name, timer) = min(due, key=lambda d: d[0])
                self.now = t
                del self.deadlines[(name, timer)]
                self.send(name, TimerFired(timer))
            elif check_at <= end:
                self.now, self.next_check = check_at, check_at + FAILING_RECHECK_S
                for name in self.nodes:
                    self.check_db(name)
                self.pump()
            else:
                break
        self.now = end

    def _deliver(self, name: str, event: Event) -> None:
        node = self.nodes[name]
        if node.machine is None:
            return
        before = self.pair_of(name)
        try:
            actions = node.machine.handle(event)
        except InvalidTransition as exc:  # the runner's policy: SPEC §6 row 21
            self.invalid.append(exc)
            self.queue.append((name, InternalErrorOccurred(str(exc))))
            return
        after = self.pair_of(name)
        if after != before:
            self.transcript.append(f"t={self.now:g} {name}: {_fmt(before)} -> {_fmt(after)} on {type(event).__name__}")
        for action in actions:
            self._execute(name, action)
        self._login()
        self._check_safety()

    def _execute(self, name: str, action: Action) -> None:
        node = self.nodes[name]
        match action:
            case PersistState(state, reason, epoch):
                node.persisted = (state, reason, epoch)
            case StopCriticalServices():
                node.services_up, node.sessions, node.demoted = False, set(), set()
            case StartCriticalServices():
                node.services_up = not node.service_fault
                event = CriticalServiceStartFailed("router") if node.service_fault else CriticalServicesRestored()
                self.queue.append((name, event))
            case MoveUsers():
                self.moves.append(action)
                if self.hold_moves:
                    self.held.append((name, action))
                else:
                    self._commit(name, action)
            case StartTimer(timer, seconds):
                self.deadlines[(name, timer)] = self.now + seconds
            case CancelTimer(timer):
                self.deadlines.pop((name, timer), None)
            case NotifyPeer(msg):
                self._notify(name, msg)
            case DisconnectClients(kind):
                owner = name if kind is ClientKind.OWN_USERS else self.other(name)
                node.sessions = {u for u in node.sessions if self.assigned[u] != owner}
                node.demoted &= node.sessions
            case DemoteClients(kind):
                owner = name if kind is ClientKind.OWN_USERS else self.other(name)
                node.demoted |= {u for u in node.sessions if self.assigned[u] == owner}
            case CheckPeerLiveness(peer):
                self._probe(name, peer)
            case RefuseAdminRequest():
                self.refused.append(action)
            case _:
                pass  # ActivateInactiveSessions: client-side effect only

    def _commit(self, name: str, move: MoveUsers) -> None:
        """One database transaction: compare-and-set of the group epoch."""
        read = self.nodes[name].db_ok and not self.fail_next_move  # the database answered
        ok = read and self.db_epoch == move.epoch - 1
        self.fail_next_move = False
        if not ok:
            peer = self.nodes[self.other(name)]
            reachable = self.link_up and peer.machine is not None
            self.queue.append((name, MoveUsersFailed(move.epoch, "", self.db_epoch if read else None, reachable)))
            return
        for user, active in self.active.items():
            if active == move.src and move.assigned_node in (None, self.assigned[user]):
                self.active[user] = move.dst
        self.db_epoch = move.epoch
        self.queue.append((name, UsersMoved(move.epoch)))

    def _notify(self, name: str, msg: Event) -> None:
        peer = self.nodes[self.other(name)]
        if not self.link_up:
            return
        if peer.machine is None:
            if not peer.silent:
                self.queue.append((name, PeerConnectionRefused()))
            return
        if self.db_checks and isinstance(msg, HeartbeatReceived):
            report = self.nodes[name].liveness.report(self.now)
            msg = HeartbeatReceived(msg.peer_state, msg.peer_reason, msg.peer_epoch, msg.peer_ha_enabled,
                                    report.ok, report.age_s)
            event = peer.liveness.peer_reported(PeerDbReport(report.ok, report.age_s), self.now)
            if event is not None:
                self.queue.append((peer.name, event))
            if peer.liveness.answer_now(report):  # check at once and tell the sender
                self.check_db(peer.name)
                self._tell_peer(peer.name)
        self.queue.append((peer.name, msg))

    def _probe(self, name: str, peer_name: str) -> None:
        if not self.nodes[name].db_ok:
            return  # the runner cannot read the database; DbUnavailable was already fed
        peer = self.nodes[peer_name]
        if peer.machine is not None and peer.db_ok:
            state, reason, epoch = peer.persisted
            self.queue.append((name, PeerAliveInDatabase(state, reason, epoch, peer.ha_enabled)))
        else:
            self.queue.append((name, PeerDeadInDatabase()))

    def _login(self) -> None:
        for node in self.nodes.values():
            if node.machine is None or not node.services_up or not node.db_ok:
                continue
            serving = node.machine.serving
            node.sessions |= {
                u for u, active in self.active.items()
                if active == node.name and self.assigned[u] in serving
            }

    def _check_safety(self) -> None:
        a, b = self.nodes.values()
        both = (a.sessions - a.demoted) & (b.sessions - b.demoted)
        if both:
            raise SafetyViolation(f"served by both nodes: {sorted(both)}\n" + "\n".join(self.transcript[-30:]))


def _fmt(pair: tuple[NodeState, Reason] | None) -> str:
    return "down" if pair is None else f"{pair[0].value} / {pair[1].value}"
