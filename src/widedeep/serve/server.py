"""The ranking server's connections: uvicorn with the connection limits of widedeep.serve.limits (a deadline for each
request's headers, a cap on open connections), and a server on a background thread for tests and benchmarks."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from widedeep.serve.limits import Limits

if TYPE_CHECKING:
    import uvicorn


# -- connections ---------------------------------------------------------------------------------------------------------
#
# uvicorn closes idle keep-alive connections, but it has no deadline for a request's headers: a client that connects and
# then sends nothing, or a header line now and then, holds a connection forever. GuardedProtocol adds that deadline
# (408, then close) and refuses connections past max_connections at once (503, then close).

_LATE = b'{"error":{"field":"","message":"request headers not received in time"}}'
_BUSY = b'{"error":{"field":"","message":"too many open connections; try again later"}}'


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers and a cap on open connections."""

    def __init__(self, *args: Any, header_timeout: float, max_connections: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._header_timeout, self._max_connections = header_timeout, max_connections
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            self.logger.warning("refused a connection: %d open, the limit is %d", len(self.connections) - 1, self._max_connections)
            self._reply_and_close(503, _BUSY)
            return
        self._arm()  # the first request's headers are due this long after connecting

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # a later request's headers: due this long after its first byte
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self._header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self._reply_and_close(408, _LATE)

    def _reply_and_close(self, status: int, body: bytes) -> None:
        reason = {408: b"Request Timeout", 503: b"Service Unavailable"}[status]
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        self.transport.write(head % (status, reason, len(body)) + body)
        self.transport.close()


def uvicorn_config(app: Any, limits: Limits, **kwargs: Any) -> uvicorn.Config:
    """A uvicorn.Config for `app` that enforces `limits` (header deadline, keep-alive, connection cap); `kwargs` go to
    uvicorn (host, port, log_level, ...)."""
    import uvicorn

    protocol = functools.partial(GuardedProtocol, header_timeout=limits.header_timeout, max_connections=limits.max_connections)
    return uvicorn.Config(
        app,
        http=protocol,  # type: ignore[arg-type]
        timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]
        access_log=False,
        **kwargs,
    )


class BackgroundServer:
    """A uvicorn server on a daemon thread, bound to a free loopback port, with the app's limits (for tests and
    in-process benchmarks)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        limits = getattr(app.state, "limits", Limits())
        self.server = uvicorn.Server(uvicorn_config(app, limits, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self.sock.close()
