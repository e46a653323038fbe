"""One client stream to one node, on slixmpp (the adapter's I/O for `client.dual`).

Rules of this module:
- slixmpp's string-named events stay inside this file; the rest of the client sees
  typed callbacks (`ConnectionHooks`) and typed outcomes.
- One `NodeConnection` is one TCP connection and one login: it never reconnects by
  itself (slixmpp's own reconnects are cancelled). A `see-other-host` stream error is
  not followed by slixmpp (it would reconnect to the old address): it is reported as
  the `redirect` of the failure or of the loss, and the policy decides.
- The backup protocol (docs/xep-presence-ha-backup.md): `query_backup`, `hold`,
  `activate`, `retire`, and the server's `<activated/>` push (answered, then reported).
- XEP-0198 without resumption (slixmpp's plugin; an ack requested after every message):
  the connection is ready once stream management is negotiated, and every message it
  sends stays in its `client.delivery.Outbox` until the server acknowledges it.
  `take_unacked()` hands over what is left when the connection is done, for the
  adapter to send again on the next active connection (the dual client's resend).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0198.stanza import RequestAck
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from presence_ha.client.delivery import Outbox
from presence_ha.client.policy import DEFAULT_RELOGIN_S, BackupInfo, Endpoint

log = logging.getLogger(__name__)

NS_BACKUP = "urn:presence-ha:backup:0"
NS_CLIENT = "jabber:client"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
IQ_TIMEOUT_S = 10.0


class LoginFailed(Exception):
    def __init__(self, detail: str, redirect: Endpoint | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.redirect = redirect


class BackupRefused(Exception):
    """A backup IQ answered with an error: its condition, type and our app condition."""

    def __init__(self, condition: str, etype: str, app_condition: str | None, text: str) -> None:
        super().__init__(f"{condition} ({etype}){' ' + app_condition if app_condition else ''}: {text}")
        self.condition, self.etype, self.app_condition = condition, etype, app_condition


@dataclass(frozen=True)
class OutMessage:
    """A chat message as sent, kept until acknowledged (sent again with the same id)."""

    to: str
    body: str
    stanza_id: str


@dataclass
class ConnectionHooks:
    """What a connection reports; all called on the event loop."""

    lost: Callable[[NodeConnection, Endpoint | None, str], None]
    message: Callable[[NodeConnection, str, str, str, str], None]  # (conn, from, type, body, stanza id)
    presence: Callable[[NodeConnection, str, bool, str, str], None]  # (conn, from, available, show, status)
    activated: Callable[[NodeConnection, bool], None]  # server push: (conn, presence restored)


def _app_condition(iq) -> str | None:
    error = iq.xml.find(f"{{{NS_CLIENT}}}error")
    for child in error if error is not None else ():
        if child.tag.startswith(f"{{{NS_BACKUP}}}"):
            return child.tag.split("}", 1)[1]
    return None


def _refused(exc: IqError) -> BackupRefused:
    return BackupRefused(exc.condition, exc.etype, _app_condition(exc.iq), exc.text or "")


class NodeConnection:
    def __init__(self, jid: str, password: str, endpoint: Endpoint, hooks: ConnectionHooks, *,
                 insecure: bool = False) -> None:
        self.endpoint = endpoint
        self.hooks = hooks
        self.closed = False
        self._redirect: Endpoint | None = None
        self._error = ""
        self._ready: asyncio.Future[str] | None = None
        self._closing: asyncio.Future[Any] | None = None
        self._bound = False
        self.outbox: Outbox[OutMessage] = Outbox()
        self.xmpp = slixmpp.ClientXMPP(jid, password)
        # We follow see-other-host ourselves (see module rules): slixmpp's own stream error
        # handler would reconnect, or (redirects off) log a planned redirect at ERROR level.
        self.xmpp.remove_handler("Stream Error")
        self.xmpp.register_handler(Callback("Stream Error", MatchXPath(f"{{{self.xmpp.stream_ns}}}error"),
                                            lambda error: self.xmpp.event("stream_error", error)))
        # One TCP attempt per connection: STARTTLS on the node's client port (RFC 6120 §5).
        self.xmpp.enable_direct_tls, self.xmpp.enable_starttls, self.xmpp.enable_plaintext = False, True, False
        self.xmpp.register_plugin("xep_0030")
        self.xmpp.register_plugin("xep_0199", {"keepalive": True, "interval": 30, "timeout": 10})
        # No resumption: a lost connection is replaced by the backup or a new login, and
        # a resumable session would linger on the server meanwhile.
        self.xmpp.register_plugin("xep_0198", {"allow_resume": False})
        if insecure:
            self.xmpp.ssl_context.check_hostname = False
            self.xmpp.ssl_context.verify_mode = ssl.CERT_NONE
        self._wire()

    @property
    def jid(self) -> str:
        return str(self.xmpp.boundjid)

    def _wire(self) -> None:
        x = self.xmpp
        x.add_event_handler("session_start", self._on_bound)
        # after bind slixmpp negotiates stream management, then says the stream is ready
        x.add_event_handler("stream_negotiated", lambda _e: self._settle("ok") if self._bound else None)
        x.add_event_handler("stanza_acked", self._on_acked)
        x.add_event_handler("failed_all_auth", lambda _e: self._settle("authentication failed"))
        x.add_event_handler("connection_failed", self._on_connection_failed)
        x.add_event_handler("stream_error", self._on_stream_error)
        x.add_event_handler("disconnected", self._on_disconnected)
        x.add_event_handler("message", self._on_message)
        for show in ("available", "away", "chat", "dnd", "xa"):  # slixmpp names the event by <show/>
            x.add_event_handler(f"presence_{show}", lambda p: self._on_presence(p, True))
        x.add_event_handler("presence_unavailable", lambda p: self._on_presence(p, False))
        x.register_handler(Callback("ha activated", MatchXPath(f"{{{NS_CLIENT}}}iq/{{{NS_BACKUP}}}activated"),
                                    self._on_activated_push))

    def _on_bound(self, _event) -> None:
        self._bound = True

    def _settle(self, outcome: str) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(outcome)

    # -- lifecycle --------------------------------------------------------------------
    async def open(self, timeout_s: float = 15.0) -> None:
        """Connect, authenticate, bind; raise `LoginFailed` (with the redirect, if any)."""
        self._ready = asyncio.get_running_loop().create_future()
        self.xmpp.connect(self.endpoint.host, self.endpoint.port)
        try:
            outcome = await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except TimeoutError:
            outcome = f"no session within {timeout_s}s"
        if outcome != "ok":
            self.close()
            raise LoginFailed(self._error or outcome, self._redirect)

    def close(self) -> None:
        """End the stream (`</stream:stream>`); no loss is reported afterwards."""
        if self.closed:
            return
        self.closed = True
        self.xmpp.cancel_connection_attempt()
        if self.xmpp.transport is not None:
            self._closing = self.xmpp.disconnect(wait=0.5)

    async def wait_closed(self, timeout_s: float = 3.0) -> None:
        """Wait for the TCP connection to end after `close()`; abort it past `timeout_s`."""
        if self._closing is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._closing), timeout_s)
            except TimeoutError:
                self.xmpp.abort()

    def _on_connection_failed(self, error) -> None:
        self.xmpp.cancel_connection_attempt()  # slixmpp would retry on its own
        self._error = f"cannot connect to {self.endpoint}: {error}"
        self._settle(self._error)

    def _on_stream_error(self, error) -> None:
        self._error = f"stream error {error['condition']}: {error['text']}".strip()
        if error["condition"] == "see-other-host" and error["see_other_host"]:
            self._redirect = Endpoint.parse(error["see_other_host"])
        # The server ends the stream after a stream error (RFC 6120 §4.9.1.1): close our
        # side at once, so it need not wait for us (a failover waits for that).
        self.xmpp.disconnect(wait=0)

    def _on_disconnected(self, reason) -> None:
        self._settle(self._error or f"disconnected: {reason}")
        if self.closed:
            return
        self.closed = True
        self.hooks.lost(self, self._redirect, self._error or f"connection lost ({reason})")

    # -- stanzas in -----------------------------------------------------------------------
    def _on_message(self, msg) -> None:
        if msg["type"] in ("chat", "normal", "headline") and msg["body"]:
            self.hooks.message(self, str(msg["from"]), msg["type"], msg["body"], msg["id"] or "")

    def _on_acked(self, stanza) -> None:
        if isinstance(stanza, slixmpp.Message) and stanza["id"]:
            self.outbox.acked(stanza["id"])

    def _on_presence(self, presence, available: bool) -> None:
        self.hooks.presence(self, str(presence["from"]), available, presence["show"] or "", presence["status"] or "")

    def _on_activated_push(self, iq) -> None:
        if iq["type"] != "set":
            return
        payload = iq.xml.find(f"{{{NS_BACKUP}}}activated")
        iq.reply().send()
        self.hooks.activated(self, payload is not None and payload.get("presence") == "restored")

    # -- requests ---------------------------------------------------------------------------
    async def _iq(self, itype: Literal["get", "set"], payload: ET.Element) -> Any:
        iq = self.xmpp.make_iq(itype=itype)
        iq.append(payload)
        try:
            return await iq.send(timeout=IQ_TIMEOUT_S)
        except IqError as exc:
            raise _refused(exc) from None
        except IqTimeout:
            raise BackupRefused("remote-server-timeout", "wait", None, "no answer") from None

    async def query_backup(self) -> BackupInfo:
        """IQ get `<backup/>` (§3); a server that does not know it: no backup."""
        try:
            result = await self._iq("get", ET.Element(f"{{{NS_BACKUP}}}backup"))
        except BackupRefused as exc:
            return BackupInfo(None, None, *DEFAULT_RELOGIN_S, reason=f"unsupported: {exc}")
        return parse_backup(result.xml.find(f"{{{NS_BACKUP}}}backup"))

    async def hold(self) -> bool:
        """IQ set `<hold contacts='kept'/>` (§4; the dual client keeps its contacts'
        presence across a switch): True if held, False if this node serves us
        (`served-here`)."""
        try:
            await self._iq("set", ET.Element(f"{{{NS_BACKUP}}}hold", {"contacts": "kept"}))
        except BackupRefused as exc:
            if exc.app_condition == "served-here":
                return False
            raise
        return True

    async def activate(self) -> bool:
        """IQ set `<activate/>` (§5): presence restored or not; `BackupRefused` else."""
        result = await self._iq("set", ET.Element(f"{{{NS_BACKUP}}}activate"))
        payload = result.xml.find(f"{{{NS_BACKUP}}}activated")
        return payload is not None and payload.get("presence") == "restored"

    async def retire(self, timeout_s: float = 1.0) -> None:
        """Make-before-break: demote this (old active) session with `<hold/>`, then close."""
        try:
            await asyncio.wait_for(self._iq("set", ET.Element(f"{{{NS_BACKUP}}}hold")), timeout_s)
        except (BackupRefused, TimeoutError) as exc:
            log.info("old session on %s not demoted: %s", self.endpoint, exc)
        self.close()

    async def roster(self) -> list[tuple[str, str, str]]:
        """(jid, name, subscription) of every roster item."""
        result = await self.xmpp.get_roster(timeout=IQ_TIMEOUT_S)
        items = result["roster"]["items"] if result is not None else {}
        return [(str(jid), item.get("name", ""), item.get("subscription", "none")) for jid, item in items.items()]

    def send_presence(self, show: str, status: str) -> None:
        self.xmpp.send_presence(pshow=show or None, pstatus=status or None)

    @property
    def sm_enabled(self) -> bool:
        """The server counts what we send (XEP-0198 enabled on this stream)."""
        return bool(self.xmpp.plugin["xep_0198"].enabled_out)

    def send_message(self, to: str, body: str, stanza_id: str | None = None) -> str:
        """Send a chat message (with `stanza_id`, or a new id); return its id. With stream
        management on, it stays in `outbox` until the server acknowledges it."""
        msg = self.xmpp.make_message(mto=slixmpp.JID(to), mbody=body, mtype="chat")
        if stanza_id:
            msg["id"] = stanza_id
        elif not msg["id"]:
            msg["id"] = self.xmpp.new_id()
        if self.sm_enabled:
            self.outbox.sent(msg["id"], OutMessage(to, body, msg["id"]))
        msg.send()
        if self.sm_enabled:
            # Ask for the ack behind the message, in the send queue: the plugin's own
            # request (its `window`) is written before the stanza that triggers it.
            RequestAck(self.xmpp).send()
        return msg["id"]

    def take_unacked(self) -> list[OutMessage]:
        """The messages the server never acknowledged, oldest first; the outbox is empty after."""
        return self.outbox.take()



def parse_backup(payload: ET.Element | None) -> BackupInfo:
    if payload is None:
        return BackupInfo(None, None, *DEFAULT_RELOGIN_S, reason="unsupported: empty answer")
    relogin = payload.find(f"{{{NS_BACKUP}}}relogin")
    lower, upper = (DEFAULT_RELOGIN_S if relogin is None
                    else (float(_required(relogin, "lower")), float(_required(relogin, "upper"))))
    node = payload.find(f"{{{NS_BACKUP}}}node")
    if node is None:
        none = payload.find(f"{{{NS_BACKUP}}}none")
        return BackupInfo(None, None, lower, upper, reason=none.get("reason") if none is not None else "none")
    endpoint = Endpoint(_required(node, "host"), int(_required(node, "port")))
    return BackupInfo(node.get("name"), endpoint, lower, upper)


def _required(elem: ET.Element, name: str) -> str:
    """A mandatory attribute of the server's answer (docs/xep-presence-ha-backup.md §3)."""
    value = elem.get(name)
    if value is None:
        raise ValueError(f"<{elem.tag}/> without {name}")
    return value
