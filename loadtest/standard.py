"""One simulated standard XMPP client with XEP-0198 resumption (`loadtest failover --clients standard`).

Rules of this module:
- What slixmpp and aioxmpp do with stream management on: one connection, to the
  cluster's service address only (`StandardPlan.service`: HAProxy in front of the
  nodes); SCRAM login; `<enable resume='true'/>`; on the loss of the connection,
  dial the service address again at once, then with backoff
  (`resumption.backoff`), and send `<resume/>` after SASL. When resumption fails,
  bind a new session (a re-login, counted) and send again the messages the old
  session never had acknowledged. No `<hold/>`, no see-other-host handling: the
  backup protocol is what the dual agent (`loadtest.agent`) measures.
- Why our lean client and not slixmpp itself: measured on this machine (50 clients
  of each, TLS, SCRAM-SHA-256, XEP-0198, 20 messages each to themselves, two runs),
  slixmpp costs the generator 210-222 ms of CPU per login and 0.37-0.42 ms per message
  round trip, this client 6.9-7.5 ms and 0.09 ms. A thousand slixmpp clients would
  need over 3 minutes of CPU to log in, in two generator processes that share two
  cores with both nodes: resumption times would measure the generator.
- Same interface as `loadtest.agent.UserAgent`, so `loadtest.driver` runs either:
  `start()`, `run()`, `tick()`, `request_acks()`, `close()`, `ready`, `active.node`,
  `backup` (always None), `fault_node`, `last_trip`, `stopped`; the same events
  (`S`, `A`, `R`, `V`), plus one `resumption` row per lost connection in
  `StandardRecorder.reconnects`.
- Which node serves the client is the server's word, not a guess: after each login
  or resumption (and once after the fault, for connections that did not drop: a
  relayed session taken over on the dialled node) the client asks its session's node
  for its backup (`urn:presence-ha:backup:0`, a read-only query) and names the HA
  peer of that backup (`StandardPlan.peers`).
"""

from __future__ import annotations

import asyncio
import base64
import random
import secrets
import time
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

from presence_ha.loadtest import resumption
from presence_ha.loadtest.agent import Recorder
from presence_ha.loadtest.scenario import NodeAddr, Plan, UserSpec
from presence_ha.loadtest.scram import SaltedPasswords, ScramError, ScramExchange
from presence_ha.loadtest.xmpp_client import NS_SM, ClientConfig, XmppClient, XmppError, local_tag, message_xml

NS_BACKUP = "urn:presence-ha:backup:0"
NS_CLIENT = "jabber:client"
LOGIN_SLOTS = 32  # first logins in progress per generator process (SCRAM's PBKDF2 and TLS cost it CPU)
NODE_QUERY_TIMEOUT_S = 5.0
NODE_QUERY_TRIES = 4
DEFAULT_SERVICE = NodeAddr("service", "127.0.0.1", 5222)  # `up`'s default service address


@dataclass(frozen=True)
class StandardPlan(Plan):
    """A `Plan` for standard clients: where the service address is, who backs up whom."""

    service: NodeAddr = DEFAULT_SERVICE
    peers: tuple[tuple[str, str], ...] = ()  # (node, its HA peer)
    mech: str = "SCRAM-SHA-256"
    reconnect_first_s: float = 0.5  # the first reconnection goes out within this after the loss
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    max_attempts: int = 60

    def peer(self, node: str | None) -> str | None:
        return dict(self.peers).get(node or "")


@dataclass
class StandardRecorder(Recorder):
    reconnects: list[tuple] = field(default_factory=list)  # resumption.row()s


@dataclass
class SmState:
    """The client's XEP-0198 session across its connections."""

    resume_id: str | None = None
    inbound: int = 0  # 'h' of the connection that was lost
    unacked: deque = field(default_factory=deque)  # (outbound seq, stanza, message id or None)

    def acked(self, h: int) -> list[str]:
        """Drop what `h` covers; the message ids among it."""
        ids = []
        while self.unacked and self.unacked[0][0] <= h:
            msg_id = self.unacked.popleft()[2]
            if msg_id is not None:
                ids.append(msg_id)
        return ids


class ResumableClient(XmppClient):
    """`XmppClient` with XEP-0198 resumption and a cached SCRAM SaltedPassword."""

    def __init__(self, config: ClientConfig, sm: SmState, salted: SaltedPasswords, on_ack) -> None:
        super().__init__(config)
        self.sm, self.salted, self.on_ack = sm, salted, on_ack
        self.resumed = False
        self.ready_at = 0.0  # <resumed/> or <enabled/> received
        self.carried: list[tuple] = []  # a failed resumption's unacknowledged messages, to send again

    async def _negotiate(self) -> None:
        cfg = self.config
        local = (cfg.source_ip, 0) if cfg.source_ip else None
        self._rx, self._tx = await asyncio.open_connection(cfg.host, cfg.port, local_addr=local)
        await self._open_stream()
        await self._starttls()
        await self._authenticate()
        await self._open_stream()
        if self.sm.resume_id is not None and await self._resume(self.sm.resume_id):
            return
        await self._bind()
        if not self._has_feature(NS_SM, "sm"):
            raise XmppError("server does not offer stream management")
        self.send_raw(f"<enable xmlns='{NS_SM}' resume='true'/>")
        answer = await self._next_element()
        if local_tag(answer) != "enabled":
            raise XmppError(f"stream management refused: {answer.tag}")
        self.sm_enabled, self.outbound, self.ready_at = True, 0, time.monotonic()
        self.sm.resume_id = answer.get("id") if answer.get("resume") in ("true", "1") else None

    async def _resume(self, previd: str) -> bool:
        """XEP-0198 §5; False (and the messages to send again in `carried`) when it failed."""
        self.send_raw(f"<resume xmlns='{NS_SM}' previd={quoteattr(previd)} h='{self.sm.inbound % 2**32}'/>")
        answer = await self._next_element()
        handled = answer.get("h")
        if handled is not None and self.on_ack is not None:
            self.on_ack(int(handled))
        if local_tag(answer) == "resumed" and handled is not None:
            self.sm_enabled, self.resumed, self.ready_at = True, True, time.monotonic()
            self.inbound, self.outbound = self.sm.inbound, int(handled)
            pending = list(self.sm.unacked)
            self.sm.unacked.clear()
            for _seq, data, msg_id in pending:  # §4: what the server did not handle, again
                self.send_tracked(data, msg_id)
            return True
        self.sm.resume_id = None
        self.carried = [entry for entry in self.sm.unacked if entry[2] is not None]
        self.sm.unacked.clear()
        return False

    async def _scram(self) -> ET.Element:
        cfg = self.config
        exchange = ScramExchange(cfg.mech, cfg.username, cfg.password, secrets.token_urlsafe(18), self.salted)
        self._send_sasl("auth", exchange.first().encode(), cfg.mech)
        answer = await self._next_element()
        if local_tag(answer) != "challenge":
            return answer
        try:
            self._send_sasl("response", exchange.final(base64.b64decode(answer.text or "").decode()).encode())
            answer = await self._next_element()
            if local_tag(answer) == "challenge":  # server-final as a challenge (RFC 6120 §6.4.6)
                exchange.check(base64.b64decode(answer.text or "").decode())
                self._send_sasl("response", b"")
                return await self._next_element()
            if local_tag(answer) == "success" and answer.text:
                exchange.check(base64.b64decode(answer.text).decode())
        except ScramError as exc:
            raise XmppError(str(exc), condition="scram") from exc
        return answer

    def _send_stanza(self, data: str) -> None:
        self.send_tracked(data, None)

    def send_tracked(self, data: str, msg_id: str | None) -> None:
        """Send a stanza; once SM is on, keep it until the server's 'h' covers it."""
        if self.sm_enabled:
            self.outbound += 1
            self.sm.unacked.append((self.outbound, data, msg_id))
        self.send_raw(data)


@dataclass
class Active:
    """The client's connection while it has a session (what the driver reads as `active`)."""

    client: ResumableClient
    node: str  # the node serving the session, as the server last said
    last_rx: float = 0.0
    probe_out: float | None = None


_slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


def _login_slots() -> asyncio.Semaphore:
    """This generator's (event loop's) semaphore of first logins in progress."""
    return _slots.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(LOGIN_SLOTS))


class StandardAgent:
    def __init__(self, plan: StandardPlan, spec: UserSpec, rec: StandardRecorder, rng: random.Random) -> None:
        self.plan, self.spec, self.rec, self.rng = plan, spec, rec, rng
        self.sm = SmState()
        self.salted = SaltedPasswords()
        self.active: Active | None = None
        self.backup = None  # no backup connection: the driver's counters read it
        self.node: str | None = None  # serving node, once the server said
        self.stopped = False
        self.last_trip = 0.0
        self.fault_node: str | None = None
        self._asked_after_fault = False
        self._seq = 0
        self._tasks: set[asyncio.Task] = set()

    @property
    def ready(self) -> bool:
        return self.active is not None and self.node is not None

    # -- connections ---------------------------------------------------------------
    def _config(self) -> ClientConfig:
        ips, service = self.plan.source_ips, self.plan.service
        source = ips[hash(self.spec.name) % len(ips)] if ips else None
        return ClientConfig(service.host, service.port, self.plan.domain, self.spec.name, self.spec.password,
                            resource="load", tls=True, mech=self.plan.mech, source_ip=source, sm=True)

    async def _connect(self) -> ResumableClient:
        client = ResumableClient(self._config(), self.sm, self.salted, self._on_ack)
        client.on_stanza = lambda elem: self._on_stanza(client, elem)
        client.on_closed = lambda reason: self._on_closed(client, reason)
        await client.login()
        return client

    async def _dial(self, after_loss: bool) -> tuple[ResumableClient | None, int]:
        """Connect to the service address until a session is back; (client or None, attempts)."""
        p = self.plan
        for attempt in range(p.max_attempts):
            if after_loss or attempt:
                await asyncio.sleep(resumption.backoff(self.rng, attempt, p.reconnect_first_s,
                                                       p.backoff_base_s, p.backoff_cap_s))
            if self.stopped:
                return None, attempt
            try:
                return await self._connect(), attempt + 1
            except XmppError as exc:
                self.rec.counts["connect_failures"] += 1
                self.rec.errors[f"connect: {exc.condition or exc}"[:60]] += 1
        return None, p.max_attempts

    async def start(self) -> bool:
        """The first login (not measured): at most `LOGIN_SLOTS` at once per generator, so
        a starved generator finishes some handshakes instead of timing all of them out."""
        async with _login_slots():
            client, _attempts = await self._dial(after_loss=False)
        if client is None:
            return False
        self._became_active(client, "login")
        return True

    def _became_active(self, client: ResumableClient, how: str) -> None:
        self.active = Active(client, self.node or self.spec.home, last_rx=time.monotonic())
        if not client.resumed:  # a new session: presence, then what the old one never had acknowledged
            client.send_presence()
            for _seq, data, msg_id in client.carried:
                client.send_tracked(data, msg_id)
            self.rec.counts["resent_after_relogin"] += len(client.carried)
        self._spawn(self._learn_node(client, client.ready_at, how))
        if how != "login":
            self._probe(self.active)  # a round trip at once, not at the next tick

    async def _learn_node(self, client: ResumableClient, at: float | None, how: str) -> None:
        """Ask the session's node which node backs it up; its HA peer serves us."""
        answer = None
        for _ in range(NODE_QUERY_TRIES):
            try:
                answer = await client.iq("get", f"<backup xmlns='{NS_BACKUP}'/>", NODE_QUERY_TIMEOUT_S)
                break
            except TimeoutError:
                self.rec.counts["node_query_timeouts"] += 1
            except XmppError as exc:  # the connection ended: the next session asks again
                self.rec.errors[f"node query: {exc.condition or exc}"[:60]] += 1
                return
        if answer is None:
            self.rec.errors["node query: no answer"] += 1
            return
        backup = answer.find(f"{{{NS_BACKUP}}}backup/{{{NS_BACKUP}}}node")
        serving = self.plan.peer(backup.get("name") if backup is not None else None)
        if serving is None:
            self.rec.errors["node query: no HA peer named"] += 1
            return
        if at is None and serving == self.node:
            return  # asked after the fault: still where it was
        self.node = serving
        if self.active is not None and self.active.client is client:
            self.active.node = serving
        self.rec.events.append(("V", self.spec.name, serving, at or time.monotonic(), how))

    def _on_closed(self, client: ResumableClient, reason: str) -> None:
        if self.stopped or self.active is None or self.active.client is not client:
            return
        self.rec.errors[f"closed: {reason}"[:60]] += 1
        self.sm.inbound = client.inbound
        self.active = None
        self._spawn(self._reconnect(time.monotonic()))

    async def _reconnect(self, lost_at: float) -> None:
        self.rec.counts["connections_lost"] += 1
        client, attempts = await self._dial(after_loss=True)
        if client is None:
            self.rec.reconnects.append(resumption.row(resumption.Reconnect(self.spec.name, lost_at, None, None,
                                                                           attempts)))
            return
        how = resumption.RESUMED if client.resumed else resumption.RELOGIN
        self.rec.counts[how] += 1
        self.rec.reconnects.append(resumption.row(resumption.Reconnect(self.spec.name, lost_at, client.ready_at,
                                                                       how, attempts)))
        self._became_active(client, how)

    # -- traffic -------------------------------------------------------------------
    def _on_stanza(self, client: ResumableClient, elem: ET.Element) -> None:
        now = time.monotonic()
        if self.active is not None and self.active.client is client:
            self.active.last_rx = now
        tag = local_tag(elem)
        if tag == "message" and elem.get("type") != "error":
            msg_id = elem.get("id") or elem.findtext(f"{{{NS_CLIENT}}}body") or ""
            self.rec.events.append(("R", msg_id, self.spec.name, self.node or self.spec.home, now, False))
            if msg_id.startswith(self.spec.name + ":"):
                if self.active is not None:
                    self.active.probe_out = None
                self.last_trip = now
        elif tag == "presence":
            self.rec.counts["presence_rx"] += 1

    def _on_ack(self, h: int) -> None:
        now = time.monotonic()
        for msg_id in self.sm.acked(h):
            self.rec.events.append(("A", msg_id, now))

    def _send(self, active: Active, to_user: str) -> None:
        self._seq += 1
        msg_id = f"{self.spec.name}:{self._seq}"
        active.client.send_tracked(message_xml(f"{to_user}@{self.plan.domain}", msg_id, msg_id), msg_id)
        self.rec.events.append(("S", msg_id, self.spec.name, to_user, time.monotonic()))

    def _probe(self, active: Active) -> None:
        """A message to the user's own bare JID: its arrival is a round trip."""
        self._send(active, self.spec.name)
        active.probe_out = active.probe_out or time.monotonic()
        active.client.request_ack()

    def tick(self, now: float, chat_p: float, presence_p: float) -> None:
        """One probe interval: liveness, probe (with an ack request), maybe chat and presence."""
        active = self.active
        if active is None or not active.client.connected:
            return
        if active.probe_out is not None and now - max(active.probe_out, active.last_rx) > self.plan.liveness_s:
            self.rec.counts["liveness_timeouts"] += 1
            active.client.abort()  # the reader's end reports the loss
            return
        self._probe(active)
        if self.fault_node is not None and not self._asked_after_fault:
            self._asked_after_fault = True
            self._spawn(self._learn_node(active.client, None, "queried"))
        if self.spec.contacts and self.rng.random() < chat_p:
            self._send(active, self.rng.choice(self.spec.contacts))
        if self.rng.random() < presence_p:
            active.client.send_presence(status=f"s{self._seq}")

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
        if self.active is not None:
            await self.active.client.close(2.0)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
