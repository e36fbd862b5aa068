"""Worker processes that run tasks with a hard wall-clock deadline per item.

Why a pool of its own rather than `concurrent.futures`: a hard per-call deadline needs something that can
be killed, and only a process can. The answer checker (`thinkrm.verify`) parses untrusted model output with
sympy and math-verify's antlr grammar, which can hang for hours in C code; math-verify's own
`signal.alarm` works only in a main thread and cannot interrupt C code, and `concurrent.futures` cannot
kill one stuck task. So `WorkerPool` keeps one pipe per worker, hands out one item at a time, and kills and
replaces a worker whose item passes its deadline; the item yields a default and is counted as a timeout.

Workers are fresh interpreters (`python -m thinkrm.workers MODULE`), not forks or multiprocessing
children: a fork would copy the parent's threads (torch, TRL, an HTTP server) mid-flight, and
spawn/forkserver children re-run the caller's `__main__`, which breaks plain scripts without a
`__main__` guard. A worker imports MODULE, calls its `worker_warmup()` if it has one (so heavy imports
never count against an item's deadline), says hello, then runs `MODULE.WORKER_TASKS[task](*args)` for
each message in its main thread. Messages are pickled frames over the worker's stdin and stdout; the
worker's own prints go to stderr.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

START_TIMEOUT = 120.0  # a worker's interpreter start + heavy imports (sympy), on a loaded 2-core machine


@dataclass
class BatchReport:
    """What a batch run produced: results in input order, and how many items timed out or errored."""

    results: list[Any]
    timeouts: int = 0
    errors: int = 0
    seconds: float = 0.0
    error_messages: list[str] = field(default_factory=list)


# ---- the worker side ------------------------------------------------------------------------------------

class _PipeConnection:
    """A duplex message channel over a worker's stdin/stdout pipes (pickled, length-prefixed frames)."""

    def __init__(self, read_fd: int, write_fd: int):
        self.reader = Connection(os.dup(read_fd), writable=False)
        self.writer = Connection(os.dup(write_fd), readable=False)

    def send(self, obj: Any) -> None:
        self.writer.send_bytes(pickle.dumps(obj))

    def recv(self) -> Any:
        return pickle.loads(self.reader.recv_bytes())

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def _serve(conn, tasks: Mapping[str, Callable[..., Any]], warmup: Callable[[], Any] | None = None) -> None:
    """Worker loop: each item runs in this process's main thread (where `signal.alarm` works).

    An exception fails the item, reported to the parent as "Type: detail"."""
    if warmup is not None:
        warmup()
    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        idx, task, args = msg
        try:
            conn.send((idx, True, tasks[task](*args)))
        except Exception as e:  # fail closed, but tell the parent what happened
            conn.send((idx, False, f"{type(e).__name__}: {e}"))


def serve_stdio(tasks: Mapping[str, Callable[..., Any]], warmup: Callable[[], Any] | None = None) -> None:
    """Serve `tasks` as a pool worker: messages on the original stdout; prints from libraries go to stderr."""
    out_fd = os.dup(1)
    os.dup2(2, 1)
    _serve(_PipeConnection(0, out_fd), tasks, warmup)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m thinkrm.workers MODULE`: a worker for the tasks in MODULE's `WORKER_TASKS`."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        sys.exit("usage: python -m thinkrm.workers MODULE  (started by WorkerPool, talks over stdin/stdout)")
    mod = importlib.import_module(args[0])
    serve_stdio(mod.WORKER_TASKS, getattr(mod, "worker_warmup", None))


# ---- the pool -------------------------------------------------------------------------------------------

class WorkerPool:
    """Worker processes running the tasks of `module` (its `WORKER_TASKS`), with a hard deadline per item."""

    def __init__(self, module: str, workers: int | None = None):
        self.module = module
        self.size = max(1, workers or min(4, os.cpu_count() or 1))
        self._procs: list[subprocess.Popen | None] = [None] * self.size
        self._conns: list[_PipeConnection | None] = [None] * self.size
        self._greeted = [False] * self.size  # whether the worker's "ready" has been read
        self._lock = threading.Lock()

    def _start(self, i: int) -> None:
        env = dict(os.environ)
        # The package's parent directory, so workers import this very thinkrm even when it is not installed.
        src = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        p = subprocess.Popen([sys.executable, "-m", "thinkrm.workers", self.module], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env)
        conn = _PipeConnection(p.stdout.fileno(), p.stdin.fileno())
        self._procs[i], self._conns[i], self._greeted[i] = p, conn, False

    def _ready(self, i: int) -> None:
        """Wait for a started worker's hello, so its import time never counts against an item's deadline."""
        conn = self._conns[i]
        try:
            if conn.reader.poll(START_TIMEOUT) and conn.recv() == "ready":
                self._greeted[i] = True
                return
        except (EOFError, OSError):
            pass
        self._kill(i)
        raise RuntimeError(f"a worker process for {self.module} failed to start (see its stderr above)")

    def _kill(self, i: int) -> None:
        p, c = self._procs[i], self._conns[i]
        if p is not None:
            c.close()
            p.kill()
            p.wait()
            p.stdin.close()
            p.stdout.close()
        self._procs[i] = self._conns[i] = None

    def run(self, task: str, args: Sequence[tuple], timeout: float, default: Any) -> BatchReport:
        """Run `task` on each argument tuple; an item that times out or fails yields `default`."""
        start = time.monotonic()
        report = BatchReport(results=[default] * len(args))
        with self._lock:  # one batch at a time: workers and pipes are not shared between callers
            pending = list(range(len(args)))[::-1]
            busy: dict[int, tuple[int, float]] = {}  # worker -> (item, deadline)
            try:
                while pending or busy:
                    idle = [i for i in range(self.size) if i not in busy][:len(pending)]
                    fresh = [i for i in idle if self._procs[i] is None or self._procs[i].poll() is not None]
                    for i in fresh:  # start them all, then wait: their imports overlap
                        self._kill(i)
                        self._start(i)
                    for i in idle:
                        if not self._greeted[i]:
                            self._ready(i)
                    for i in idle:
                        item = pending.pop()
                        try:
                            self._conns[i].send((item, task, args[item]))
                        except OSError:  # the worker died between items; fail this one, restart it next round
                            self._kill(i)
                            report.errors += 1
                            report.error_messages.append("worker died")
                            continue
                        busy[i] = (item, time.monotonic() + timeout)
                    if not busy:
                        continue
                    now = time.monotonic()
                    readers = {self._conns[i].reader: i for i in busy}
                    ready = wait(list(readers), timeout=max(0.0, min(d for _, d in busy.values()) - now))
                    for r in ready:
                        i = readers[r]
                        item = busy.pop(i)[0]
                        try:
                            got, ok, value = self._conns[i].recv()
                        except (EOFError, OSError):  # the worker died (e.g. out of memory)
                            got, ok, value = item, False, "worker died"
                            self._kill(i)
                        if got != item:  # a reply to some other item: never trust that worker again
                            ok, value = False, "worker out of step"
                            self._kill(i)
                        if ok:
                            report.results[item] = value
                        else:
                            report.errors += 1
                            report.error_messages.append(value)
                    now = time.monotonic()
                    for i, (_, deadline) in list(busy.items()):
                        if now >= deadline:
                            busy.pop(i)
                            self._kill(i)
                            # Boot the replacement now: the next item or call finds it ready instead of
                            # waiting for its interpreter and imports on top of its own deadline.
                            self._start(i)
                            report.timeouts += 1
            except BaseException:
                # Workers still busy would leave their replies in the pipes, to be read as the next batch's.
                for i in busy:
                    self._kill(i)
                raise
        report.seconds = time.monotonic() - start
        return report

    def close(self) -> None:
        for i in range(self.size):
            self._kill(i)


_pools: dict[tuple[str, int | None], WorkerPool] = {}
_pools_lock = threading.Lock()


def get_pool(module: str, workers: int | None = None) -> WorkerPool:
    """The process-wide pool for `module`'s tasks and this worker count, closed at exit."""
    with _pools_lock:
        key = (module, workers)
        if key not in _pools:
            if not _pools:
                atexit.register(close_pools)
            _pools[key] = WorkerPool(module, workers)
        return _pools[key]


def close_pools() -> None:
    """Stop every pool's workers; a later `get_pool` starts new ones."""
    with _pools_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()


if __name__ == "__main__":
    main()
