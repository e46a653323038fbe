"""asyncio adapter of the node-to-node link: `LinkServer` and `LinkClient`.

Rules of this module:
- Sockets and the dial loop only; serving a connection is `endpoint.Endpoint`'s job and
  every protocol decision is `protocol.LinkConnection`'s. Nonces come from `os.urandom`,
  backoff jitter from the injected `random.Random`.
- Why a link went down is typed (status.py): a refused dial is `PeerRefused` (the peer
  process is gone: the SRM takes over at once, SPEC §9), silence is `PeerSilent` (the
  SRM waits for its heartbeat timeout).
- TLS: `tls=LinkTls` (secure.py) is the nodes' mutual TLS: each side's certificate is
  verified to the cluster CA and must name the expected node (endpoint.py). A raw
  `ssl.SSLContext` (`ssl=`) is plain server-authenticated TLS. Either way the link's own
  authentication still runs inside it. With TLS the server accepts on its own socket
  and runs each handshake as a task (`loop.connect_accepted_socket`), so a refused
  handshake is logged with the address and the reason; a TLS `asyncio.Server` would
  drop it without a word.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl as ssl_lib
from collections.abc import Callable, Coroutine
from typing import Any

from presence_ha.server.link import status as st
from presence_ha.server.link.backoff import backoff_delay
from presence_ha.server.link.endpoint import (
    Conn,
    Endpoint,
    LinkClosed,
    LinkOptions,
    OnDown,
    OnFrame,
    OnUp,
    Wire,
)
from presence_ha.server.link.frames import Kind
from presence_ha.server.link.protocol import LinkConnection, Role
from presence_ha.server.link.secure import LinkTls, handshake_refusal
from presence_ha.server.link.state import LinkConfig

__all__ = ["LinkClient", "LinkClosed", "LinkOptions", "LinkServer"]

log = logging.getLogger(__name__)

ACCEPT_RETRY_S = 0.1  # after a failed accept (out of file descriptors)


class LinkServer(Endpoint):
    """Accepts authenticated peers on host:port; can also send to them."""

    def __init__(self, config: LinkConfig, host: str, port: int, *, on_frame: OnFrame,
                 on_up: OnUp | None = None, on_down: OnDown | None = None,
                 options: LinkOptions = LinkOptions(),
                 ssl: ssl_lib.SSLContext | None = None, tls: LinkTls | None = None) -> None:
        super().__init__(config, on_frame, on_up, on_down, options, tls)
        self._host, self._port = host, port
        self._ssl = tls.server if tls is not None else ssl
        self._server: asyncio.Server | None = None
        self._listener: socket.socket | None = None  # with TLS: accepted here, handshakes run by us
        self._tasks: set[asyncio.Task] = set()
        self._handshakes: set[asyncio.Task] = set()  # the accept loop and TLS handshakes under way

    async def start(self) -> None:
        if self._ssl is None:
            self._server = await asyncio.get_running_loop().create_server(self._wire, self._host, self._port)
            return
        family = socket.getaddrinfo(self._host or None, self._port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        self._listener = socket.create_server((self._host, self._port), family=family, backlog=128)
        self._listener.setblocking(False)
        self._spawn_handshake(self._accept_loop(self._listener))

    @property
    def port(self) -> int:
        if self._listener is not None:
            return int(self._listener.getsockname()[1])
        if self._server is None:
            raise RuntimeError("the link server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def peers_up(self) -> frozenset[str]:
        return frozenset(self._current)

    async def send(self, peer: str, kind: Kind, payload: bytes) -> None:
        await self._send(peer, kind, payload)

    def try_send(self, peer: str, kind: Kind, payload: bytes) -> bool:
        return self._try_send(peer, kind, payload)

    def send_heartbeat(self, peer: str, payload: bytes = b"") -> bool:
        return self._heartbeat(peer, payload)

    def in_flight(self, peer: str) -> int:
        return self._in_flight(peer)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._handshakes:
            task.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        await self._shutdown(set(self._tasks), cancel=False)
        if self._server is not None:
            await self._server.wait_closed()

    def _wire(self) -> Wire:
        return _Accepted(self, lambda: LinkConnection(Role.RESPONDER, self._links, os.urandom(16)), None)

    def _spawn_handshake(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors, say: the listener stays
                log.warning("link %s: accept failed: %r", self._links.config.local_name, exc)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            self._spawn_handshake(self._handshake(sock, address))

    async def _handshake(self, sock: socket.socket, address: Any) -> None:
        """TLS on an accepted connection, then the link on it (`_Accepted`); a refused
        handshake is logged: from where, and why."""
        where = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                self._wire, sock, ssl=self._ssl, ssl_handshake_timeout=self._opt.handshake_timeout_s)
        except (ssl_lib.SSLError, TimeoutError) as exc:
            sock.close()
            self._log_refusal(f"link {self._links.config.local_name}: refused a link from {where}: "
                              f"{handshake_refusal(exc)}")
        except ConnectionAbortedError as exc:  # asyncio's handshake timeout
            sock.close()
            refusal = handshake_refusal(TimeoutError()) if "handshake" in str(exc) else repr(exc)
            self._log_refusal(f"link {self._links.config.local_name}: refused a link from {where}: {refusal}")
        except OSError as exc:  # the peer hung up mid-handshake: often it did not trust our certificate
            sock.close()
            self._log_refusal(f"link {self._links.config.local_name}: a link from {where} broke off its TLS "
                              f"handshake ({exc!r}): does it trust this cluster's CA?")

    def _serve_accepted(self, wire: Wire) -> None:
        task = asyncio.get_running_loop().create_task(self._serve_and_report(wire))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_and_report(self, wire: Wire) -> None:
        assert wire.conn is not None  # called from connection_made
        self._report_down(wire.conn, await self._serve(wire.conn))


class _Accepted(Wire):
    """An accepted connection: served by a task of its own."""

    def __init__(self, server: LinkServer, make_core: Callable[[], LinkConnection], peer: str | None) -> None:
        super().__init__(server, make_core, peer)
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server._serve_accepted(self)


class LinkClient(Endpoint):
    """Dials one named peer and keeps the link up, reconnecting with backoff."""

    def __init__(self, config: LinkConfig, peer_name: str, host: str, port: int, *,
                 on_frame: OnFrame, rng: random.Random, on_up: OnUp | None = None,
                 on_down: OnDown | None = None, options: LinkOptions = LinkOptions(),
                 ssl: ssl_lib.SSLContext | None = None,
                 server_hostname: str | None = None, tls: LinkTls | None = None) -> None:
        super().__init__(config, on_frame, on_up, on_down, options, tls)
        self._peer, self._host, self._port, self._rng = peer_name, host, port, rng
        self._ssl = tls.client if tls is not None else ssl
        self._server_hostname = server_hostname
        self._links.ensure(peer_name)
        self._tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        self._tasks.add(asyncio.create_task(self._dial_loop()))

    @property
    def is_up(self) -> bool:
        return self._peer in self._current

    @property
    def in_flight(self) -> int:
        return self._in_flight(self._peer)

    async def send(self, kind: Kind, payload: bytes) -> None:
        await self._send(self._peer, kind, payload)

    def try_send(self, kind: Kind, payload: bytes) -> bool:
        return self._try_send(self._peer, kind, payload)

    def withdraw(self, silent_s: float | None = None) -> list[tuple[Kind, bytes]]:
        """Take back what the peer has not acknowledged: empty while the link is up,
        unless (`silent_s`) the peer has sent nothing for that long."""
        return self._withdraw(self._peer, silent_s)

    def send_heartbeat(self, payload: bytes = b"") -> bool:
        return self._heartbeat(self._peer, payload)

    async def close(self) -> None:
        await self._shutdown(self._tasks, cancel=True)

    async def _dial_loop(self) -> None:
        attempt = 0
        while True:
            conn, down = await self._attempt()
            if conn is not None and conn.up:
                attempt = 0  # a link that came up restarts the backoff
            self._report_down(conn, down)
            opt = self._opt
            delay = backoff_delay(attempt, opt.backoff_initial_s, opt.backoff_max_s, self._rng)
            log.debug("link to %s down (%s); redial in %.2fs", self._peer, down, delay)
            await asyncio.sleep(delay)
            attempt += 1

    async def _attempt(self) -> tuple[Conn | None, st.LinkDown]:
        try:
            async with asyncio.timeout(self._opt.connect_timeout_s):
                _, wire = await asyncio.get_running_loop().create_connection(
                    lambda: Wire(self, lambda: LinkConnection(Role.INITIATOR, self._links, os.urandom(16), self._peer),
                                 self._peer),
                    self._host, self._port, ssl=self._ssl,
                    server_hostname=self._server_hostname if self._ssl else None)
        except ConnectionRefusedError as exc:
            return None, st.PeerRefused(self._peer, repr(exc))
        except TimeoutError:
            return None, st.PeerSilent(self._peer, "connect timed out")
        except ssl_lib.SSLError as exc:
            return None, st.LinkRejected(self._peer, f"TLS: {self._host}:{self._port}: {handshake_refusal(exc)}")
        except OSError as exc:
            return None, st.PeerUnreachable(self._peer, repr(exc))
        assert wire.conn is not None  # the connection is made
        return wire.conn, await self._serve(wire.conn)
