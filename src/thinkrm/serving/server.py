"""Running the app: the listening socket, uvicorn, and graceful drain on SIGTERM/SIGINT.

On a signal the server keeps its socket open while in-flight requests finish, answering newcomers 503 (so
load balancers and clients retry elsewhere), then exits. `serve` runs in the foreground (what `thinkrm serve`
calls); `running` serves in a background thread for tests, notebooks and benchmarks.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..scoring import Scorer
from .app import create_app
from .config import ServeConfig
from .protocol import connection_cap, guarded_protocol


def make_server(app: Any, config: ServeConfig):
    """A uvicorn server whose first SIGTERM/SIGINT drains (503 to newcomers) before it closes the socket.

    Plain uvicorn closes the listening socket at once, so clients racing the shutdown see connection resets
    instead of a clear 503 they can retry; here the socket stays open until the in-flight count reaches zero
    or `graceful_timeout_s` passes. A second SIGINT forces the exit, as in uvicorn.
    """
    import uvicorn

    class DrainingServer(uvicorn.Server):
        drain_deadline: float | None = None
        # A signal comes from outside while clients still hold keep-alive connections; `running()`'s owner is
        # done with the server when it leaves the block, so only in-flight requests are waited for then.
        wait_for_connections = True

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.drain_deadline is None:
                app.state.drain()
                self.drain_deadline = time.monotonic() + config.graceful_timeout_s
                self._captured_signals.append(sig)
            else:
                super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if app.state.draining and self.drain_deadline is None:  # drained by hand (app.state.drain())
                self.drain_deadline = time.monotonic() + config.graceful_timeout_s
            # Open keep-alive connections are waited for too: a client may reuse one at any moment and must
            # get the 503 (with Connection: close) rather than a reset. Idle ones close after
            # --keep-alive-timeout-s, so this costs at most that long.
            settled = app.metrics.in_flight == 0 and not (self.wait_for_connections
                                                          and self.server_state.connections)
            if self.drain_deadline is not None and (settled or time.monotonic() > self.drain_deadline):
                self.should_exit = True
            return await super().on_tick(counter)

    uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                               timeout_graceful_shutdown=max(config.graceful_timeout_s, 0.1),
                               timeout_keep_alive=config.keep_alive_timeout_s,  # type: ignore[arg-type]
                               http=guarded_protocol(config, app.metrics, connection_cap(config)),
                               access_log=False, lifespan="on")
    return DrainingServer(uv_config)


def bind(config: ServeConfig) -> tuple[socket.socket, str]:
    """The listening socket and its base URL, bound before serving so `--port 0` reports the real port."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # proto must say TCP: asyncio enables TCP_NODELAY on accepted sockets only then, and without it every
    # keep-alive request after the first waits ~40 ms for a delayed ACK (uvicorn issue #3149).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
        sock.listen(2048)  # connections made before uvicorn starts wait in the backlog, not refused
    except OSError as e:
        sock.close()
        raise ConnectionError(f"cannot listen on {config.host}:{config.port}: {e.strerror}") from None
    host, port = sock.getsockname()[:2]
    return sock, f"http://[{host}]:{port}" if family == socket.AF_INET6 else f"http://{host}:{port}"


def serve(config: ServeConfig, scorer: Scorer | None = None,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Run the server in the foreground until SIGTERM/SIGINT (what `thinkrm serve` calls).

    `on_ready(url)` is called once the socket is bound, before the first request can arrive.
    """
    app = create_app(scorer if scorer is not None else config.scorer, config)
    sock, url = bind(config)
    if on_ready is not None:
        on_ready(url)
    try:
        make_server(app, config).run(sockets=[sock])
    finally:
        sock.close()


@contextmanager
def running(scorer: Scorer | str, config: ServeConfig | None = None, *,
            timeout: float = 30.0) -> Iterator[str]:
    """Serve in a background thread for the duration of a `with` block; yields the base URL.

    For tests, notebooks and benchmarks: the socket is bound before the thread starts (port 0 picks a free
    one), so the URL is valid the moment it is yielded. On exit the server drains and stops.
    """
    config = config or ServeConfig(scorer=scorer if isinstance(scorer, str) else "", port=0)
    app = create_app(scorer, config)
    server = make_server(app, config)
    sock, url = bind(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="thinkrm-serve",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the scoring server did not start")
        time.sleep(0.01)
    try:
        yield url
    finally:
        server.wait_for_connections = False
        app.state.drain()
        thread.join(timeout=config.graceful_timeout_s + 10)
        sock.close()
