"""A minimal HTTP endpoint serving the node's Prometheus metrics (GET /metrics).

Rules of this module:
- Runs on the node's event loop (no thread), so gauges computed from the session
  registry are read on the loop that owns it.
- Answers `GET /metrics` (and `/`) with the text exposition, anything else with 404;
  reads at most one request line and headers (8 KiB), then closes (HTTP/1.0 style).
"""

from __future__ import annotations

import asyncio
import logging

from presence_ha.server.metrics import CONTENT_TYPE_LATEST, Metrics

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 8192


class MetricsServer:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        log.info("metrics on http://%s:%d/metrics", host, port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, path, *_ = head[:MAX_REQUEST_BYTES].decode("latin-1").split(" ", 2)
            if method == "GET" and path.split("?")[0] in ("/metrics", "/"):
                body, status, ctype = self.metrics.render(), "200 OK", CONTENT_TYPE_LATEST
            else:
                body, status, ctype = b"not found\n", "404 Not Found", "text/plain"
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1") + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError, ConnectionError):
            pass  # a broken scrape request gets no answer
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
