"""A TCP proxy that injects network faults, for integration tests.

Rules of this module:
- It runs its own event loop in a daemon thread, so sync and async tests can use it;
  every public method is thread-safe and returns once the fault is in place.
- `cut()` aborts every current connection and refuses new ones (the listening socket
  is closed, so dialers get ECONNREFUSED) until `heal()` re-listens on the same port.
- `blackhole()` keeps connections open and accepts new ones, but silently drops every
  byte in both directions, and does not pass on a close either (a silent peer, a
  pulled cable); `heal()` ends it for the bytes that follow.
- `close()` stops everything and joins the thread; use it from a fixture finalizer.
"""

from __future__ import annotations

import asyncio
import socket
import threading


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"faultproxy->{target_port}")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        self._blackholed = False
        self.connections_accepted = 0

    # -- public, thread-safe ----------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        self._call(self._cut())

    def blackhole(self) -> None:
        self._call(self._set_blackhole(True))

    def heal(self) -> None:
        self._call(self._heal())

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    # -- inside the proxy's loop ------------------------------------------------------
    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))  # port 0 first: a free port; then the same one
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _set_blackhole(self, on: bool) -> None:
        self._blackholed = on

    async def _heal(self) -> None:
        self._blackholed = False
        if self._server is None:
            await self._listen()

    async def _accept(self, client_r, client_w) -> None:
        self.connections_accepted += 1
        self._writers.add(client_w)
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            self._writers.discard(client_w)
            return
        self._writers.add(upstream_w)
        for reader, writer in ((client_r, upstream_w), (upstream_r, client_w)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                if not self._blackholed:
                    writer.write(data)
                    await writer.drain()
        except OSError:
            return  # the other half was cut: closing (below) is the whole reaction
        finally:
            if not self._blackholed:  # a blackhole swallows closes too: the far end
                self._writers.discard(writer)  # must notice by its own timeout
                writer.transport.abort()
