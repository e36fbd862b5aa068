"""Limits below the app, in uvicorn's HTTP protocol: header size and time, body time, the connection cap.

A slow or hostile client can hold a connection without ever producing a request the app would see, so these
limits cannot live in the app or the ASGI guard; they live in a subclass of uvicorn's httptools protocol.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from .config import ServeConfig
from .guard import problem_app
from .metrics import Metrics


def connection_cap(config: ServeConfig) -> int:
    """--max-connections, kept below the process's file-descriptor limit (raised toward it if allowed).

    Past that limit accept() fails and every client, not just the newest, is refused; the model, the
    verifier's pipes and the listening socket need descriptors too, hence the reserve.
    """
    reserve = 128
    try:
        import resource
    except ImportError:  # not on POSIX: no such limit to respect
        return config.max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = config.max_connections + reserve
    if soft != resource.RLIM_INFINITY and soft < want:
        raised = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    return config.max_connections if soft == resource.RLIM_INFINITY else max(1, min(config.max_connections,
                                                                                    soft - reserve))


def guarded_protocol(config: ServeConfig, metrics: Metrics, max_connections: int) -> type:
    """uvicorn's httptools protocol with the limits it lacks, for `uvicorn.Config(http=...)`.

    httptools buffers a header of any size (a 256 MiB one was accepted) and uvicorn's keep-alive timer only
    starts after a first response, so a client that connects and trickles its headers holds a connection
    forever. Here: a request head larger than --max-header-bytes gets 431; a head not complete within
    --header-timeout-s of the connection (or of the request's first byte), or a body not complete within
    --body-timeout-s of its head, gets 408; all three close the connection. At --max-connections a new
    connection closes the one idle the longest (between requests or still sending its head: the slow
    clients), so ordinary clients keep getting in; with none idle it gets 503.

    Deadlines are plain numbers that one sweep per server checks every second or so, not a timer per
    request: timers cost more per request than everything else here together. h11 has a header limit of
    its own but serves ~4x fewer requests per second here (docs/serving.md).
    """
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    limit = config.max_header_bytes
    head_timeout, body_timeout = config.header_timeout_s, config.body_timeout_s
    sweep_every = min(1.0, head_timeout / 4, body_timeout / 4)
    sweeping: list[bool] = []  # one sweep per server, started by its first connection

    def sweep(loop: asyncio.AbstractEventLoop, connections: set) -> None:
        now = time.monotonic()
        for c in list(connections):
            if isinstance(c, GuardedProtocol):
                c.check_deadlines(now)
        loop.call_later(sweep_every, sweep, loop, connections)

    class GuardedProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.idle_since = time.monotonic()  # between requests (or before the first) since then
            self._head_deadline: float | None = None
            self._body_deadline: float | None = None
            self._in_head = False  # the request line or headers are being received
            self._head_started_here = False  # ... and that began in the chunk being parsed
            self._head_bytes = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            metrics.open_connections += 1
            if not sweeping:
                sweeping.append(True)
                self.loop.call_later(sweep_every, sweep, self.loop, self.connections)
            # The set still holds connections closed in this loop iteration; only open ones count.
            if len(self.connections) > max_connections and sum(
                    not c.transport.is_closing() for c in self.connections) > max_connections \
                    and not self._make_room():
                self._refuse(503, f"the server has {max_connections} open connections, all busy "
                                  "(--max-connections): retry later", "connection_limit")
                return
            self._head_deadline = self.idle_since + head_timeout

        def connection_lost(self, exc: Exception | None) -> None:
            metrics.open_connections -= 1
            super().connection_lost(exc)

        def is_idle(self) -> bool:
            return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

        def _make_room(self) -> bool:
            idle = [c for c in self.connections
                    if c is not self and isinstance(c, GuardedProtocol) and c.is_idle()
                    and not c.transport.is_closing()]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c.idle_since)
            metrics.count(metrics.closed_connections, "idle_evicted")
            oldest.transport.close()
            return True

        def check_deadlines(self, now: float) -> None:
            if self.transport.is_closing():
                return
            if self._head_deadline is not None and now >= self._head_deadline:
                self._head_deadline = None
                if self._in_head:
                    self._refuse(408, f"request headers not received within {head_timeout:g} s "
                                      "(--header-timeout-s)", "header_timeout")
                else:  # connected and sent nothing: closed as uvicorn closes an idle keep-alive connection
                    metrics.count(metrics.closed_connections, "header_timeout")
                    self.transport.close()
            elif self._body_deadline is not None and now >= self._body_deadline:
                self._body_deadline = None
                self.scope["thinkrm.body_timeout"] = True  # for the app's metrics: it sees a disconnect
                if self.cycle.response_started:
                    metrics.count(metrics.closed_connections, "body_timeout")
                    self.transport.close()
                else:
                    self._refuse(408, f"request body not received within {body_timeout:g} s "
                                      "(--body-timeout-s)", "body_timeout")

        def _refuse(self, status: int, message: str, reason: str) -> None:
            metrics.count(metrics.closed_connections, reason)
            body = json.dumps({"detail": message}).encode()
            self.transport.write(STATUS_LINE[status] + b"content-type: application/json\r\ncontent-length: "
                                 + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            counting, self._head_started_here = self._in_head, False
            super().data_received(data)
            # Bytes of a head that began in this chunk are not counted (the chunk may end another request's
            # body): the running count errs low by one read at most, and on_headers_complete is exact.
            if self._in_head and counting and not self._head_started_here:
                self._head_bytes += len(data)
                if self._head_bytes > limit and not self.transport.is_closing():
                    self._refuse(431, f"request headers exceed {limit} bytes (--max-header-bytes)",
                                 "header_too_large")
            # uvicorn cancels its keep-alive timer on any data, so body bytes that arrive after the response
            # went out (a 401 sent before the body came) left the connection idle with no timer, open forever.
            elif (self.timeout_keep_alive_task is None and self.cycle is not None
                  and self.cycle.response_complete and not self._in_head and not self.pipeline
                  and not self.transport.is_closing()):
                self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                    self.timeout_keep_alive_handler)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_started_here, self._head_bytes = True, True, 0
            if self._head_deadline is None:
                self._head_deadline = time.monotonic() + head_timeout

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_deadline = None
            self._body_deadline = time.monotonic() + body_timeout
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size <= limit:
                super().on_headers_complete()
                return
            metrics.count(metrics.closed_connections, "header_too_large")
            # This one request is answered by a 431 app instead of ours, then the connection closes.
            app, self.app = self.app, problem_app(431, f"request headers of {size} bytes exceed the limit "
                                                        f"of {limit} bytes (--max-header-bytes)")
            try:
                super().on_headers_complete()
            finally:
                self.app = app

        def on_message_complete(self) -> None:
            self._body_deadline = None
            super().on_message_complete()

        def on_response_complete(self) -> None:
            self.idle_since = time.monotonic()
            super().on_response_complete()

    return GuardedProtocol
