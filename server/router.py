"""Route stanzas of bound sessions to feature handlers (Prosody moduleapi, aioxmpp style).

Rules of this module:
- Routes are typed keys, never free strings: IQ handlers by `(IqType, payload tag)`,
  stanza handlers by `StanzaKind`, direction and optionally the stanza `type` values
  they take (a route for given types wins over the kind's catch-all route), observers
  by event class. A duplicate
  route is an error at start-up (`DuplicateRoute`).
- Outbound (from a local client): the router stamps `from` with the session's full JID
  (RFC 6120 §8.1.2.1). IQs addressed to the server or to the sender's own bare JID
  go to the IQ table; everything else addressed elsewhere is `deliver`ed.
- Unrouted IQ get/set gets `service-unavailable` (RFC 6120 §8.4). A handler fails by
  raising `StanzaError`; any other exception becomes `internal-server-error`, a log line
  with the stanza id and a counter. The session and every other user carry on.
- IQs get/set to an account's bare JID: an `account_iq` route (below) answers them if
  there is one; any other, to another account of our domain, is answered by the server
  for the account from the shared data, in the IQ table on the sender's node (RFC 6120
  §10.5.3.2: PEP); handlers read the account from the IQ's `to`; a bare JID that is no
  account gets service-unavailable (§10.5.3.1).
- The server's own IQ requests to a client (disco#info of a caps hash) await their
  answer through `expect_answer(id, jid)`; an answer whose `from` is not the asked
  JID is not taken for it.
- Features see the server only through `FeatureContext`.
- An account's bare JID answers some IQs on the account's behalf (XEP-0030 disco,
  vCard, last activity): `account_iq` routes, keyed like `iq` routes, run for IQ
  get/set addressed to a bare account JID, the user's own (before the server's
  table) or another's (on the node serving it). `account_identities` and
  `account_features` are what disco#info on a bare account JID lists (XEP-0030 §3.1;
  XEP-0163 §6: pubsub/pep); features register into them as they do into `disco_features`.
- Blocking (XEP-0191) is the `guard` given at construction (`StanzaGuard`, provided
  by `server.blocking`; None: nothing is blocked): a client's stanza to an address
  passes `guard.outbound` before it goes anywhere, a stanza for a local account
  `guard.inbound` before any handler; the router executes the verdict.
- Accounts served by another node of the cluster: `deliver` first offers the stanza
  to the `remote` route given at construction (`RemoteRoute`, provided by
  `server.cluster`; None: a node alone); if it takes the stanza, delivery here is over.
  The router holds no link or socket code.
  A stanza that came from another node is delivered with `route_remote=False`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from presence_ha.server.blocking import Verdict, error_of
from presence_ha.server.sessions import Session
from presence_ha.server.xmpp.errors import Condition, StanzaError, error_reply
from presence_ha.server.xmpp.jid import JID, InvalidJid
from presence_ha.server.xmpp.logsafe import untrusted
from presence_ha.server.xmpp.stanzas import IqType

if TYPE_CHECKING:
    from presence_ha.server.context import FeatureContext

log = logging.getLogger(__name__)


class StanzaKind(enum.Enum):
    MESSAGE = "message"
    PRESENCE = "presence"
    IQ = "iq"


class Direction(enum.Enum):
    OUT = "out"  # sent by a local client, towards its `to`
    IN = "in"  # to be delivered to a local account (bare or full JID)


class DuplicateRoute(Exception):
    pass


# Observed facts (typed events for hooks; no string-named events).
@dataclass(frozen=True)
class SessionBound:
    session: Session


@dataclass(frozen=True)
class SessionClosed:
    session: Session
    graceful: bool


@dataclass(slots=True)  # made per stanza: not frozen (a frozen __init__ costs 3x)
class MessageSent:
    """A local client sent a message (after routing); carbons copy it (XEP-0280)."""

    session: Session
    stanza: ET.Element


@dataclass(slots=True)  # made per stanza: not frozen (a frozen __init__ costs 3x)
class MessageDelivered:
    """A message was handed to these local sessions of its recipient (XEP-0280 §6)."""

    stanza: ET.Element
    recipients: tuple[Session, ...]


@dataclass(frozen=True)
class SessionAvailable:
    """A session sent its initial presence (RFC 6121 §4.2): queued traffic may flow."""

    session: Session


@dataclass(frozen=True)
class ResourceUnavailable:
    """An available resource sent unavailable presence or ended (RFC 6121 §4.5)."""

    session: Session
    stanza: ET.Element


@dataclass(frozen=True)
class RosterItemChanged:
    """The roster item of `contact` in `user`'s roster changed or went (RFC 6121 §2.1.6)."""

    user: JID
    contact: JID


@dataclass(frozen=True)
class PresenceBroadcast:
    """A local session broadcast available presence (initial or update): `previous` is
    the presence it had before (None: this one is initial). Caps tracking (XEP-0115)
    and PEP's last-item delivery (XEP-0163 §4.3.2) watch it."""

    session: Session
    previous: ET.Element | None


IqHandler = Callable[["FeatureContext", Session, ET.Element], Awaitable[ET.Element | None]]
# (ctx, the account addressed, the IQ with its `from`) -> result payload
AccountIqHandler = Callable[["FeatureContext", JID, ET.Element], Awaitable[ET.Element | None]]
StanzaHandler = Callable[["FeatureContext", Session | None, ET.Element], Awaitable[None]]
Observer = Callable[["FeatureContext", Any], Awaitable[None]]
F = TypeVar("F", bound=Callable[..., Any])
ANY_TYPE = "*"  # the route key of a stanza handler registered without `types`


class RemoteRoute(Protocol):
    """Where stanzas for accounts served by another node go (server.cluster)."""

    async def route(self, ctx: FeatureContext, stanza: ET.Element, to: JID, sender: Session | None) -> bool:
        """True if the stanza was taken for another node; False: deliver it here.
        May raise `StanzaError` (the router answers the sender)."""
        ...


class StanzaGuard(Protocol):
    """The blocking check (`server.blocking.BlockingGuard`)."""

    def inbound_now(self, ctx: FeatureContext, stanza: ET.Element, to: JID) -> Verdict | None:
        """The verdict on `stanza` for the local account `to` if known at once; None: await `inbound`."""

    async def inbound(self, ctx: FeatureContext, stanza: ET.Element, to: JID) -> Verdict: ...

    def outbound_now(self, ctx: FeatureContext, session: Session, stanza: ET.Element, to: JID) -> Verdict | None:
        """The verdict on `stanza` `session` sends to `to` if known at once; None: await `outbound`."""

    async def outbound(self, ctx: FeatureContext, session: Session, stanza: ET.Element, to: JID) -> Verdict: ...


def stanza_kind(elem: ET.Element) -> StanzaKind | None:
    try:
        return StanzaKind(elem.tag)
    except ValueError:
        return None


class Router:
    def __init__(self, remote: RemoteRoute | None = None, guard: StanzaGuard | None = None) -> None:
        self._remote = remote
        self._guard = guard
        self._iq: dict[tuple[IqType, str], IqHandler] = {}
        self._account_iq: dict[tuple[IqType, str], AccountIqHandler] = {}
        self.account_identities: set[tuple[str, str]] = set()  # (category, type) of a bare account JID
        self.account_features: set[str] = set()
        self._stanza: dict[tuple[StanzaKind, Direction, str | None], StanzaHandler] = {}
        self._observers: dict[type, list[Observer]] = {}
        self.disco_features: set[str] = set()
        self._answers: dict[str, tuple[str, asyncio.Future[ET.Element]]] = {}

    # -- registration -------------------------------------------------------
    def iq(self, type: IqType, payload_tag: str) -> Callable[[F], F]:
        """Handle IQs of `type` whose payload is `payload_tag` (Clark notation).

        The handler returns the result payload (or None for an empty result).
        """

        def register(func: F) -> F:
            key = (type, payload_tag)
            if key in self._iq:
                raise DuplicateRoute(f"IQ route {type.value} {payload_tag} registered twice")
            self._iq[key] = func
            return func

        return register

    def account_iq(self, type: IqType, payload_tag: str) -> Callable[[F], F]:
        """Answer IQs of `type` with `payload_tag` addressed to an account's bare JID."""

        def register(func: F) -> F:
            key = (type, payload_tag)
            if key in self._account_iq:
                raise DuplicateRoute(f"account IQ route {type.value} {payload_tag} registered twice")
            self._account_iq[key] = func
            return func

        return register

    def stanza(
        self, kind: StanzaKind, direction: Direction, types: tuple[str | None, ...] | None = None
    ) -> Callable[[F], F]:
        """Handle `kind` stanzas in `direction`; only those whose `type` is in `types`
        (None = no type attribute) when given, else every one without a typed route."""

        def register(func: F) -> F:
            for stanza_type in types if types is not None else (ANY_TYPE,):
                key = (kind, direction, stanza_type)
                if key in self._stanza:
                    raise DuplicateRoute(f"{kind.value} {direction.value} {stanza_type} handler registered twice")
                self._stanza[key] = func
            return func

        return register

    def _stanza_handler(self, kind: StanzaKind, direction: Direction, stanza: ET.Element) -> StanzaHandler | None:
        handler = self._stanza.get((kind, direction, stanza.get("type")))
        return handler if handler is not None else self._stanza.get((kind, direction, ANY_TYPE))

    def observe(self, event_type: type) -> Callable[[F], F]:
        def register(func: F) -> F:
            self._observers.setdefault(event_type, []).append(func)
            return func

        return register

    def has_iq_route(self, type: IqType, payload_tag: str) -> bool:
        return (type, payload_tag) in self._iq

    def expect_answer(self, iq_id: str, jid: JID) -> asyncio.Future[ET.Element]:
        """A future for the result or error IQ `jid` sends for the server's IQ `iq_id`;
        the caller sends the IQ, bounds the wait and calls `forget_answer` when done."""
        future: asyncio.Future[ET.Element] = asyncio.get_running_loop().create_future()
        self._answers[iq_id] = (str(jid), future)
        return future

    def forget_answer(self, iq_id: str) -> None:
        self._answers.pop(iq_id, None)

    def _answered(self, stanza: ET.Element) -> None:
        waiting = self._answers.get(stanza.get("id") or "")
        if waiting is not None and waiting[0] == stanza.get("from") and not waiting[1].done():
            self._answers.pop(stanza.get("id") or "", None)
            waiting[1].set_result(stanza)

    # -- dispatch -----------------------------------------------------------
    async def notify(self, ctx: FeatureContext, event: object) -> None:
        for observer in self._observers.get(type(event), ()):
            try:
                await observer(ctx, event)
            except Exception:  # an observer's bug must not take down the session
                log.exception("observer %s failed on %s", getattr(observer, "__name__", observer), event)
                ctx.metrics.handler_errors.inc()

    async def dispatch(self, ctx: FeatureContext, session: Session, stanza: ET.Element) -> None:
        """A stanza sent by a local bound client."""
        kind = stanza_kind(stanza)
        if kind is None:
            return  # the stream core only yields stanzas; unknown kinds never get here
        stanza.set("from", str(session.jid))
        try:
            raw_to = stanza.get("to")
            to = JID.parse(raw_to) if raw_to else None
        except InvalidJid as exc:
            await self._answer_error(ctx, session, stanza, StanzaError(Condition.JID_MALFORMED, str(exc)))
            return
        if kind is StanzaKind.IQ and to == session.bare and (account := self._account_route(stanza)) is not None:
            await self._run(ctx, session, stanza, self._answer_account_iq(ctx, session.bare, stanza, account, session))
            return
        if kind is StanzaKind.IQ and (to is None or (to.is_domain and to.domain == ctx.domain) or to == session.bare):
            await self._handle_local_iq(ctx, session, stanza)
            return
            await self._handle_local_iq(ctx, session, stanza)
            return
        if self._guard is not None and to is not None:
            verdict = self._guard.outbound_now(ctx, session, stanza, to)
            if verdict is None:
                verdict = await self._guard.outbound(ctx, session, stanza, to)
            if verdict is not Verdict.PASS:
                await self._stop(ctx, session, stanza, verdict)
                return
        if (kind is StanzaKind.IQ and to is not None and to.local is not None and to.resource is None
                and to.domain == ctx.domain and stanza.get("type") in ("get", "set")
                and self._account_route(stanza) is None):
            # Another account's bare JID, with no account route (PEP): answered here for the
            # account from the shared data (RFC 6120 §10.5.3.2); no such account: §10.5.3.1.
            if not await self._account(ctx, to):
                await self._answer_error(ctx, session, stanza, StanzaError(Condition.SERVICE_UNAVAILABLE))
                return
            await self._handle_local_iq(ctx, session, stanza)
            return
        handler = self._stanza_handler(kind, Direction.OUT, stanza)
        if handler is None:
            await self.deliver(ctx, stanza, sender=session)
            return
        await self._run(ctx, session, stanza, handler(ctx, session, stanza))

    @staticmethod
    async def _account(ctx: FeatureContext, bare: JID) -> bool:
        return bool(ctx.sessions.resources(bare)) or await ctx.store.user_exists(bare)

    async def deliver(
        self, ctx: FeatureContext, stanza: ET.Element, sender: Session | None = None, *, route_remote: bool = True
    ) -> None:
        """Deliver a stanza towards its `to` (an account of the cluster, or the server itself)."""
        to_text = stanza.get("to")
        try:
            to = JID.parse(to_text) if to_text else None
        except InvalidJid as exc:
            await self._answer_error(ctx, sender, stanza, StanzaError(Condition.JID_MALFORMED, str(exc)))
            return
        if to is None or to.domain != ctx.domain:
            # No server-to-server federation in this product (RFC 6120 §10.4.2).
            await self._answer_error(ctx, sender, stanza, StanzaError(Condition.REMOTE_SERVER_NOT_FOUND))
            return
        kind = stanza_kind(stanza)
        if kind is StanzaKind.IQ and to.is_domain:
            if sender is not None:
                await self._handle_local_iq(ctx, sender, stanza)
            return
        if route_remote and self._remote is not None and await self._routed_away(ctx, self._remote, stanza, to, sender):
            return
        if self._guard is not None and to.local is not None:
            verdict = self._guard.inbound_now(ctx, stanza, to)
            if verdict is None:
                verdict = await self._guard.inbound(ctx, stanza, to)
            if verdict is not Verdict.PASS:
                await self._stop(ctx, sender, stanza, verdict)
                return
        handler = self._stanza_handler(kind, Direction.IN, stanza) if kind else None
        if handler is None:
            await self._deliver_default(ctx, stanza, to, sender)
            return
        await self._run(ctx, sender, stanza, handler(ctx, sender, stanza))

    def admits_now(self, ctx: FeatureContext, stanza: ET.Element, to: JID) -> bool:
        """True if the guard lets `stanza` reach the local account `to`, known without
        awaiting (the routed fast path); False: stopped, or not known yet: `deliver` it."""
        return self._guard is None or self._guard.inbound_now(ctx, stanza, to) is Verdict.PASS

    async def _stop(self, ctx: FeatureContext, session: Session | None, stanza: ET.Element, verdict: Verdict) -> None:
        error = error_of(verdict)
        if error is not None:
            await self._answer_error(ctx, session, stanza, error)

    def _account_route(self, stanza: ET.Element) -> AccountIqHandler | None:
        if len(stanza) != 1:
            return None
        try:
            return self._account_iq.get((IqType(stanza.get("type")), stanza[0].tag))
        except ValueError:
            return None

    async def _answer_account_iq(self, ctx: FeatureContext, account: JID, stanza: ET.Element,
                                 handler: AccountIqHandler, session: Session | None) -> None:
        """Run an account route; its result goes to the local session that asked, or is
        delivered to the asker (on any node)."""
        payload = await handler(ctx, account, stanza)
        result = ET.Element("iq", {"type": "result", "from": str(account), "to": stanza.get("from", "")})
        if stanza.get("id") is not None:
            result.set("id", stanza.get("id", ""))
        if payload is not None:
            result.append(payload)
        if session is not None and stanza.get("from") == str(session.jid):
            session.send(result)
        else:
            await self.deliver(ctx, result)

    async def _routed_away(self, ctx: FeatureContext, remote: RemoteRoute, stanza: ET.Element, to: JID,
                           sender: Session | None) -> bool:
        try:
            return await remote.route(ctx, stanza, to, sender)
        except StanzaError as exc:
            await self._answer_error(ctx, sender, stanza, exc)
            return True

    async def _deliver_default(self, ctx: FeatureContext, stanza: ET.Element, to: JID, sender: Session | None) -> None:
        """IQ to a user: to a full JID goes to that resource (RFC 6120 §10.5.4)."""
        target = ctx.sessions.get(to) if not to.is_bare else None
        if target is not None:
            target.send(stanza)
            return
        account = self._account_route(stanza) if to.is_bare and stanza_kind(stanza) is StanzaKind.IQ else None
        if account is not None and stanza.get("from"):
            await self._run(ctx, sender, stanza, self._answer_account_iq(ctx, to, stanza, account, sender))
            return
        if stanza.get("type") in ("get", "set"):
            await self._answer_error(ctx, sender, stanza, StanzaError(Condition.SERVICE_UNAVAILABLE))

    async def _handle_local_iq(self, ctx: FeatureContext, session: Session, stanza: ET.Element) -> None:
        try:
            iq_type = IqType(stanza.get("type"))
        except ValueError:
            await self._answer_error(ctx, session, stanza, StanzaError(Condition.BAD_REQUEST, "invalid IQ type"))
            return
        if iq_type in (IqType.RESULT, IqType.ERROR):
            self._answered(stanza)  # answers to server-sent IQs (ping, caps disco)
            return
        payload = stanza[0] if len(stanza) == 1 else None
        handler = self._iq.get((iq_type, payload.tag)) if payload is not None else None
        if handler is None:
            condition = Condition.SERVICE_UNAVAILABLE if payload is not None else Condition.BAD_REQUEST
            await self._answer_error(ctx, session, stanza, StanzaError(condition))
            return
        await self._run(ctx, session, stanza, self._answer_iq(ctx, session, stanza, handler))

    async def _answer_iq(self, ctx: FeatureContext, session: Session, stanza: ET.Element, handler: IqHandler) -> None:
        payload = await handler(ctx, session, stanza)
        result = ET.Element("iq", {"type": "result"})
        stanza_id, to = stanza.get("id"), stanza.get("to")
        if stanza_id is not None:
            result.set("id", stanza_id)
        result.set("to", str(session.jid))
        if to:
            result.set("from", to)
        if payload is not None:
            result.append(payload)
        session.send(result)

    async def _run(self, ctx: FeatureContext, session: Session | None, stanza: ET.Element,
                   work: Awaitable[Any]) -> None:
        try:
            await work
        except StanzaError as exc:
            await self._answer_error(ctx, session, stanza, exc)
        except Exception:
            log.exception("handler failed on %s id=%s", untrusted(stanza.tag), untrusted(stanza.get("id")))
            ctx.metrics.handler_errors.inc()
            await self._answer_error(ctx, session, stanza, StanzaError(Condition.INTERNAL_SERVER_ERROR))

    async def _answer_error(self, ctx: FeatureContext, session: Session | None, stanza: ET.Element,
                            error: StanzaError) -> None:
        if stanza.get("type") == "error":
            return  # never answer an error with an error (RFC 6120 §8.3.1)
        reply = error_reply(stanza, error)
        if session is not None and (not stanza.get("from") or stanza.get("from") == str(session.jid)):
            session.send(reply)
        elif reply.get("to"):
            await self.deliver(ctx, reply)
