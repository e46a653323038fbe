"""One simulated user of the failover load test: its connections, traffic and recovery.

Rules of this module:
- An adapter around `loadtest.xmpp_client.XmppClient`: decisions that need no I/O
  (delays, backoff, what is retryable) come from `loadtest.scenario`.
- Every measurement is a compact event tuple appended to `Recorder.events`
  (`scenario.from_tuple` reads them): "S" sent, "A" acked (XEP-0198), "R" received,
  "V" now served by a node, "T" sent again after a failover, "B" bounced (the server
  answered one of our messages with an error).
- single mode: when the active connection is lost, re-login after a random delay
  between the lost node's re-login limits, to the `see-other-host` target if one was
  given, else to the other node; refused logins that say "later" are retried with
  backoff and counted.
- dual mode (docs/xep-presence-ha-backup.md): after login, ask for the backup node
  (§3), open the inactive connection after a random delay (§4, `<hold/>` first), and
  on loss activate it (§5, retrying while the answer is `wait`), or take the server's
  `<activated/>` push (§6). Without a usable backup connection: the single-mode path.
- dual mode without a usable backup connection (not open yet, lost, refused): log in
  again at once, to the see-other-host target or else the backup node, with the login
  retry backoff (issue 18; single mode keeps SPEC §8's re-login delay).
- Nothing sent is lost with a node: each link keeps the messages its node has not
  acknowledged (`client.delivery.Unacked`, at most `UNACKED_LIMIT`); when the active
  link ends, they are sent again, same ids, on the next active link (the activated
  backup, or the new login) before anything new, and counted ("T" events).
  Receivers drop copies by id (`client.delivery.RecentIds`, the last
  `2 * UNACKED_LIMIT` ids of each sender): the copy is recorded with `dropped` set,
  not delivered again.
- A connection is lost when its reader stops (EOF, stream error) or, for a silent
  (SIGSTOPped) node, when a probe is out for `liveness_s` with nothing received. An
  active link found closed at a tick (it closed while it was still being logged in or
  activated, so its end was no loss then) is lost too: without that the user would
  stay on a dead link for good (found by the chaos soak: a fallback right after a
  failover).
"""

from __future__ import annotations

import asyncio
import random
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field

from presence_ha.client.delivery import RecentIds, Unacked
from presence_ha.loadtest import scenario
from presence_ha.loadtest.scenario import NodeAddr, Plan, UserSpec
from presence_ha.loadtest.xmpp_client import ClientConfig, XmppClient, XmppError, local_tag

NS_BACKUP = "urn:presence-ha:backup:0"
NS_CLIENT = "jabber:client"
MAX_LOGIN_ATTEMPTS = 60
UNACKED_LIMIT = 32  # unacknowledged messages kept per link (an ack is asked for every probe)


@dataclass
class Recorder:
    """What one load generator measured (shipped to the orchestrator at the end)."""

    events: list[tuple] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # retries, redirects, presence_rx...
    errors: Counter = field(default_factory=Counter)  # login failure reasons


@dataclass
class Link:
    """One logged-in connection of a user to one node."""

    client: XmppClient
    node: str
    inactive: bool = False
    unacked: Unacked[tuple[str, str]] = field(default_factory=lambda: Unacked(UNACKED_LIMIT))  # (msg id, to user)
    last_rx: float = 0.0
    probe_out: float | None = None  # send time of the oldest probe not back yet


def _restored(activated: ET.Element) -> bool:
    return activated.get("presence") == "restored"


class UserAgent:
    def __init__(self, plan: Plan, spec: UserSpec, rec: Recorder, rng: random.Random) -> None:
        self.plan, self.spec, self.rec, self.rng = plan, spec, rec, rng
        self.bare = f"{spec.name}@{plan.domain}"
        self.active: Link | None = None
        self.backup: Link | None = None
        self.backup_node: NodeAddr | None = None
        self.backup_known = False  # the §3 answer arrived (backup_node None: none offered)
        self.stopped = False
        self.last_trip = 0.0  # completion time of the last probe round trip
        self.fault_node: str | None = None  # the node serving it when the fault hit
        self._seq = 0
        self._tasks: set[asyncio.Task] = set()
        self._recovering = False
        self._activation: tuple[str, asyncio.Future] | None = None  # (iq id, answer) of §5
        self._resend: list[tuple[str, str]] = []  # (msg id, to user) a lost active link never had acked
        self.seen = RecentIds(per_sender=2 * UNACKED_LIMIT)

    # -- connections ---------------------------------------------------------------
    def _config(self, node: NodeAddr) -> ClientConfig:
        ips = self.plan.source_ips
        source = ips[hash(self.spec.name) % len(ips)] if ips else None
        return ClientConfig(node.host, node.port, self.plan.domain, self.spec.name, self.spec.password,
                            resource="load", tls=self.plan.tls, source_ip=source, sm=self.plan.sm)

    async def _connect(self, node: NodeAddr, inactive: bool) -> Link:
        client = XmppClient(self._config(node))
        link = Link(client, node.name, inactive, last_rx=time.monotonic())
        client.on_stanza = lambda elem: self._on_stanza(link, elem)
        client.on_ack = lambda h: self._on_ack(link, h)
        client.on_closed = lambda reason: self._on_closed(link, reason)
        client.iq_set_handlers[NS_BACKUP] = lambda iq: self._on_push(link, iq)
        await client.login()
        return link

    async def login_with_retries(self, first: NodeAddr) -> Link | None:
        """Log in (active), following redirects and retrying refusals with backoff."""
        target, attempt = first, 0
        while not self.stopped and attempt < MAX_LOGIN_ATTEMPTS:
            try:
                return await self._connect(target, inactive=False)
            except XmppError as exc:
                attempt += 1
                target = self._next_target(target, exc)
                if exc.condition == "see-other-host":
                    self.rec.counts["redirects"] += 1
                    continue
                self.rec.counts["login_retries"] += 1
                self.rec.errors[exc.condition or str(exc)[:60]] += 1
                if scenario.is_retryable(exc.condition or str(exc)):
                    self.rec.counts["retryable_refusals"] += 1
                await asyncio.sleep(scenario.retry_backoff(self.rng, attempt))
        return None

    def _next_target(self, target: NodeAddr, exc: XmppError) -> NodeAddr:
        if exc.other_host:
            named = self.plan.node_by_address(exc.other_host)
            if named is not None:
                return named
        if exc.condition in ("temporary-auth-failure", "policy-violation", "resource-constraint"):
            return target  # the right node, not ready yet: ask it again
        others = self.plan.others(target.name)
        return self.rng.choice(others) if others else target

    def _activate_link(self, link: Link, how: str, restored: bool = False) -> None:
        """Make `link` the active one (a new login, an activation, a push). A session
        whose presence the server restored (§5.2) does not send it again."""
        old, self.active = self.active, link
        link.inactive = False
        link.last_rx = time.monotonic()
        if self.backup is link:
            self.backup = None
        self.rec.events.append(("V", self.spec.name, link.node, time.monotonic(), how))
        if old is not None and old is not link:
            self._orphan(old)
            old.client.abort()
        if not restored:
            link.client.send_presence()
        self._resend_on(link)
        if how != "login":
            self._probe(link)  # a round trip on the new connection at once, not at the next tick
        if self.plan.mode == "dual" and not self.stopped:
            self._spawn(self._arm_backup(link))

    def _orphan(self, link: Link) -> None:
        """`link` is no longer the active one: what its node never acknowledged goes again."""
        self._resend += link.unacked.take()
        if link.unacked.overflow:
            self.rec.counts["unacked_overflow"] += link.unacked.overflow
            link.unacked.overflow = 0

    def _resend_on(self, link: Link) -> None:
        pending, self._resend = self._resend, []
        now = time.monotonic()
        for msg_id, to_user in pending:
            link.client.send_message(f"{to_user}@{self.plan.domain}", msg_id, msg_id)
            link.unacked.sent(link.client.outbound, (msg_id, to_user))
            self.rec.events.append(("T", msg_id, now))
        if pending:
            self.rec.counts["resent"] += len(pending)
            link.client.request_ack()

    async def start(self) -> bool:
        """First login on the home node (dual: then arm the backup). True if logged in."""
        link = await self.login_with_retries(self.plan.node(self.spec.home))
        if link is None:
            return False
        self._activate_link(link, "login")
        return True

    @property
    def ready(self) -> bool:
        if self.active is None:
            return False
        if self.plan.mode != "dual":
            return True
        return self.backup is not None or (self.backup_known and self.backup_node is None)

    # -- dual mode: backup connection (XEP-PHA §3-§6) -------------------------------
    async def _arm_backup(self, link: Link) -> None:
        try:
            answer = await link.client.iq("get", f"<backup xmlns='{NS_BACKUP}'/>", 10)
        except (TimeoutError, XmppError) as exc:
            # No usable answer: carry on with one connection (counted, so a run shows it).
            self.rec.counts["backup_query_failures"] += 1
            self.rec.errors[f"backup query: {getattr(exc, 'condition', None) or type(exc).__name__}"[:60]] += 1
            self.backup_known = True
            return
        backup = answer.find(f"{{{NS_BACKUP}}}backup")
        node = backup.find(f"{{{NS_BACKUP}}}node") if backup is not None else None
        relogin = backup.find(f"{{{NS_BACKUP}}}relogin") if backup is not None else None
        self.backup_known = True
        if node is None or answer.get("type") != "result":
            self.backup_node = None  # §3.3: HA off or no peer: one connection only
            return
        host, port = node.get("host"), node.get("port")
        if relogin is None or host is None or port is None:
            raise XmppError("backup answer without host, port or relogin")
        named = self.plan.node_by_address(f"{host}:{port}")
        lower, upper = float(relogin.get("lower", 1)), float(relogin.get("upper", 1))
        self.backup_node = named or NodeAddr(node.get("name", "?"), host, int(port), lower, upper)
        await self._open_backup(link, lower, upper)

    async def _open_backup(self, owner: Link, lower: float, upper: float) -> None:
        """Open the inactive connection after a random delay; again when it fails."""
        for _ in range(MAX_LOGIN_ATTEMPTS):
            await asyncio.sleep(scenario.relogin_delay(self.rng, lower, upper))
            if self.stopped or self.active is not owner or self.backup_node is None:
                return
            try:
                link = await self._connect(self.backup_node, inactive=True)
                answer = await link.client.iq("set", f"<hold xmlns='{NS_BACKUP}' contacts='kept'/>", 10)
            except (TimeoutError, XmppError) as exc:
                self.rec.counts["backup_open_failures"] += 1
                reason = getattr(exc, "condition", None) or type(exc).__name__
                self.rec.errors[f"backup: {reason}"[:60]] += 1
                continue
            if answer.get("type") == "result":
                self.backup = link
                return
            if answer.find(f".//{{{NS_BACKUP}}}served-here") is not None:
                self._activate_link(link, "served-here")  # §4.1: the takeover is done
                return
            link.client.abort()
            self.rec.counts["backup_refused"] += 1

    async def _activate_backup(self) -> bool:
        """§5: activate the inactive connection, retrying while the node says `wait`."""
        link = self.backup
        deadline = time.monotonic() + self.plan.activate_timeout_s
        while link is not None and link is self.backup and time.monotonic() < deadline:
            self._seq += 1
            self._activation = (f"act-{self._seq}", asyncio.get_running_loop().create_future())
            link.client.send_stanza(f"<iq type='set' id='{self._activation[0]}'><activate xmlns='{NS_BACKUP}'/></iq>")
            try:
                answer = await asyncio.wait_for(self._activation[1], 10)
            except TimeoutError:
                return False
            if self.active is link:
                return True  # activated (by the result, in stream order, or by the §6 push)
            if link is not self.backup:
                return False
            error = answer.find(f"{{{NS_CLIENT}}}error")
            if error is None or error.get("type") != "wait":
                return False
            self.rec.counts["activate_waits"] += 1
            await asyncio.sleep(self.plan.activate_retry_s)
        return self.active is link and link is not None

    def _on_push(self, link: Link, iq: ET.Element) -> None:
        pushed = iq.find(f"{{{NS_BACKUP}}}activated")
        if pushed is not None and link is self.backup:
            self.rec.counts["activation_pushes"] += 1
            self._activate_link(link, "pushed", _restored(pushed))

    # -- loss and recovery ---------------------------------------------------------
    def _on_closed(self, link: Link, reason: str) -> None:
        if not self.stopped:  # why connections end shows in the report (login_errors)
            kind = "backup" if link is self.backup else "active" if link is self.active else "other"
            self.rec.errors[f"{kind} closed: {reason}"[:60]] += 1
        if link is self.backup:
            self.backup = None
            if self.active is not None and not self.stopped and self.backup_node is not None:
                self._spawn(self._open_backup(self.active, self.backup_node.relogin_lower_s,
                                              self.backup_node.relogin_upper_s))
        elif link is self.active and not self.stopped:
            self.active = None
            self._orphan(link)
            self._spawn(self._recover(link))

    async def _recover(self, lost: Link) -> None:
        if self._recovering:
            return
        self._recovering = True
        try:
            self.rec.counts["connections_lost"] += 1
            if self.plan.mode == "dual" and self.backup is not None and await self._activate_backup():
                return
            if self.active is not None:  # pushed meanwhile
                return
            node = self.plan.node(lost.node)
            error = lost.client.close_error
            hint = error if isinstance(error, XmppError) else XmppError("connection lost")
            target = self._next_target(node, hint)
            if self._fails_over_at_once():
                self.rec.counts["failover_logins"] += 1
                if not hint.other_host and self.backup_node is not None and self.backup_node.name != node.name:
                    target = self.backup_node
            else:
                await asyncio.sleep(scenario.relogin_delay(self.rng, node.relogin_lower_s, node.relogin_upper_s))
            link = await self.login_with_retries(target)
            if link is not None and self.active is None:
                self.rec.counts["relogins"] += 1
                self._activate_link(link, "relogin")
            elif link is not None:
                link.client.abort()
        finally:
            self._recovering = False

    def _fails_over_at_once(self) -> bool:
        """dual mode with a peer to go to (HA on): no re-login delay (module rules)."""
        return self.plan.mode == "dual" and not (self.backup_known and self.backup_node is None)

    # -- traffic -------------------------------------------------------------------
    def _on_stanza(self, link: Link, elem: ET.Element) -> None:
        now = time.monotonic()
        link.last_rx = now
        tag = local_tag(elem)
        if tag == "iq" and self._activation is not None and elem.get("id") == self._activation[0]:
            if elem.get("type") == "result" and link is self.backup:
                answer = elem.find(f"{{{NS_BACKUP}}}activated")  # before the stanzas that follow it
                self._activate_link(link, "activated", answer is not None and _restored(answer))
            if not self._activation[1].done():
                self._activation[1].set_result(elem)
            return
        if tag == "message" and elem.get("type") != "error":
            msg_id = elem.get("id") or elem.findtext(f"{{{NS_CLIENT}}}body") or ""
            # a copy (a sender's resend) is recorded, not delivered again; a message on an
            # inactive session is no delivery (scenario's rules) and leaves no memory
            copy = not link.inactive and not self.seen.first(elem.get("from", "").split("/", 1)[0], msg_id)
            self.rec.events.append(("R", msg_id, self.spec.name, link.node, now, link.inactive, copy))
            if msg_id.startswith(self.spec.name + ":"):
                link.probe_out = None
                self.last_trip = now
        elif tag == "message" and (elem.get("id") or "").startswith(self.spec.name + ":"):
            self.rec.events.append(("B", elem.get("id"), now))  # one of ours, refused with an error
        elif tag == "presence":
            self.rec.counts["presence_rx_inactive" if link.inactive else "presence_rx"] += 1

    def _on_ack(self, link: Link, h: int) -> None:
        now = time.monotonic()
        for msg_id, _to in link.unacked.acked(h):
            self.rec.events.append(("A", msg_id, now))

    def _send(self, link: Link, to_user: str) -> None:
        self._seq += 1
        msg_id = f"{self.spec.name}:{self._seq}"
        link.client.send_message(f"{to_user}@{self.plan.domain}", msg_id, msg_id)
        if link.client.sm_enabled:  # without XEP-0198 nothing tells what the node handled
            link.unacked.sent(link.client.outbound, (msg_id, to_user))
        self.rec.events.append(("S", msg_id, self.spec.name, to_user, time.monotonic()))

    def _probe(self, link: Link) -> None:
        """A message to the user's own bare JID: its arrival is a round trip."""
        self._send(link, self.spec.name)
        link.probe_out = link.probe_out or time.monotonic()
        link.client.request_ack()

    def tick(self, now: float, chat_p: float, presence_p: float) -> None:
        """One probe interval: liveness, probe (with an ack request), maybe chat and presence."""
        link = self.active
        if link is None:
            return
        if not link.client.connected:  # it closed before it became the active one: that loss went unseen
            if not self._recovering:
                self.rec.counts["closed_when_activated"] += 1
                self._on_closed(link, "closed before it became active")
            return
        if link.probe_out is not None and now - max(link.probe_out, link.last_rx) > self.plan.liveness_s:
            self.rec.counts["liveness_timeouts"] += 1
            link.client.abort()  # the reader's end reports the loss
            return
        self._probe(link)
        if self.spec.contacts and self.rng.random() < chat_p:
            self._send(link, self.rng.choice(self.spec.contacts))
        if self.rng.random() < presence_p:
            link.client.send_presence(status=f"s{self._seq}")

    async def run(self) -> None:
        """Tick until stopped (the driver sets `stopped`)."""
        p = self.plan
        chat_p = min(1.0, p.probe_interval_s / p.chat_interval_s)
        presence_p = min(1.0, p.probe_interval_s / p.presence_interval_s)
        await asyncio.sleep(self.rng.uniform(0, p.probe_interval_s))
        while not self.stopped:
            self.tick(time.monotonic(), chat_p, presence_p)
            await asyncio.sleep(p.probe_interval_s)

    def request_acks(self) -> None:
        if self.active is not None:
            self.active.client.request_ack()

    async def close(self) -> None:
        self.stopped = True
        for task in list(self._tasks):
            task.cancel()
        links = [lk for lk in (self.active, self.backup) if lk is not None]
        await asyncio.gather(*(lk.client.close(2.0) for lk in links), return_exceptions=True)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
