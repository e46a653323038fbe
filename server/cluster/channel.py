"""The ordered send side of the link to one peer node, with back-pressure.

Rules of this module:
- Everything this node sends to one peer goes through one `PeerChannel`, in call
  order, over the node's own `LinkClient` to that peer (the peer's `LinkServer`
  receives). The link delivers exactly once and in order across reconnects.
- `send` (async) waits while the link's window is full (back-pressure reaches the
  sender's connection). `post` (sync, for `Session.send`) never waits: it queues in
  the same FIFO, bounded by `max_backlog`; beyond that it returns False and the
  caller ends that session (like a client that stops reading, c2s.py).
- `reclaim` takes back what a dead peer never acknowledged, for re-routing after its
  accounts moved to other nodes: acknowledged-to-the-client stanzas are not lost with
  the peer (at least once: a peer that got a frame but died before acknowledging it
  may have delivered it too).
- Reachability is a fact with a time: `up`, and `down_for(now)` seconds since the
  link was last up (or since the channel was made). Routing uses it to decide
  between queueing and handling a stanza without the peer (routing.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from presence_ha.server.link import Kind, LinkClient, LinkClosed

log = logging.getLogger(__name__)


class PeerChannel:
    def __init__(self, peer: str, link: LinkClient, now: Callable[[], float], max_backlog: int = 10_000) -> None:
        self.peer, self._link, self._now = peer, link, now
        self.max_backlog = max_backlog
        self._backlog: deque[tuple[Kind, bytes, asyncio.Future[None] | None]] = deque()
        self._pump: asyncio.Task[None] | None = None
        self._down_since: float | None = now()
        self.sent = 0

    # -- reachability ---------------------------------------------------------------
    @property
    def up(self) -> bool:
        return self._link.is_up

    def mark_up(self) -> None:
        self._down_since = None

    def mark_down(self) -> None:
        if self._down_since is None:
            self._down_since = self._now()

    def down_for(self) -> float:
        """Seconds since the link was last up; 0 while it is up."""
        if self._link.is_up or self._down_since is None:
            return 0.0
        return self._now() - self._down_since

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    # -- sending ----------------------------------------------------------------------
    def try_send(self, kind: Kind, payload: bytes) -> bool:
        """Send `payload` now if nothing waits before it and the window has room;
        False: nothing was sent (use `send` or `post`). Spares the hot path a coroutine."""
        if not self._backlog and self._link.try_send(kind, payload):
            self.sent += 1
            return True
        return False

    async def send(self, kind: Kind, payload: bytes) -> None:
        """Queue `payload`; wait while the window and the backlog are full."""
        if self.try_send(kind, payload):
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._append(kind, payload, done)
        await done

    def post(self, kind: Kind, payload: bytes) -> bool:
        """Queue `payload` without waiting; False if the backlog is full (not queued)."""
        if self.try_send(kind, payload):
            return True
        if len(self._backlog) >= self.max_backlog:
            log.warning("link to %s: backlog of %d frames is full", self.peer, len(self._backlog))
            return False
        self._append(kind, payload, None)
        return True

    def _append(self, kind: Kind, payload: bytes, done: asyncio.Future[None] | None) -> None:
        self._backlog.append((kind, payload, done))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self._backlog:
            kind, payload, done = self._backlog[0]
            try:
                await self._link.send(kind, payload)
            except LinkClosed as exc:
                self._fail_all(exc)
                return
            self._backlog.popleft()
            self.sent += 1
            if done is not None and not done.done():
                done.set_result(None)

    def reclaim(self, silent_s: float | None = None) -> list[tuple[Kind, bytes]]:
        """Take back, in order, everything sent to the peer that it has not acknowledged:
        the link's unacked messages, then the backlog. Only while the link is down (a
        peer that is up is acknowledging); callers whose sends were waiting are released
        as if sent. For a peer whose accounts others took over (routing.py re-routes).
        With `silent_s`, a link that is up but silent that long counts as down (a
        frozen peer): it is dropped first."""
        if self._link.is_up and silent_s is None:
            return []
        frames = self._link.withdraw(silent_s)
        if self._link.is_up:
            return frames  # (empty) a peer that talks is acknowledging
        if self._pump is not None:
            self._pump.cancel()  # it waits for window room: nothing of its head is pushed yet
            self._pump = None
        while self._backlog:
            kind, payload, done = self._backlog.popleft()
            frames.append((kind, payload))
            if done is not None and not done.done():
                done.set_result(None)
        return frames

    def _fail_all(self, exc: Exception) -> None:
        while self._backlog:
            _, _, done = self._backlog.popleft()
            if done is not None and not done.done():
                done.set_exception(exc)

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        self._fail_all(LinkClosed(f"channel to {self.peer} closed"))
