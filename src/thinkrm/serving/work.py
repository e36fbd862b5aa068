"""Bounded queues for the work beside scoring: answer verification and ME² analysis.

Each kind of work has its own executor and its own limit, so a flood or a stuck job of one kind never holds
what another needs, and a full queue answers 503 at once (`--verify-queue`, `--analysis-queue`). The
analysis job itself lives here too: it runs in spawned worker processes, which unpickle it by importing this
light module rather than the whole server stack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..formatting import Item
from .errors import RequestProblem, ScoringError
from .metrics import Metrics


class WorkQueue:
    """One kind of work besides scoring (answer verification, ME² analysis): own workers, bounded queue.

    At most `concurrency` jobs run at once and at most `capacity` requests are queued or running; beyond
    that a request is answered 503 with Retry-After at once rather than waiting behind work it cannot
    overtake. Each kind has its own executor, made on first use, so a flood or a stuck job of one kind never
    holds the threads another kind needs, and CPU-bound Python (analysis) runs in processes, where it cannot
    hold the event loop's GIL.
    """

    def __init__(self, kind: str, make_executor: Callable[[], Any], metrics: Metrics, *, concurrency: int,
                 capacity: int, flag: str):
        self.kind = kind
        self.capacity = capacity
        self.flag = flag
        self._make_executor = make_executor
        self._executor: Any = None
        self._metrics = metrics
        self._slots = asyncio.Semaphore(concurrency)  # FIFO: waiting requests start in arrival order
        metrics.queued[kind] = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Admit the job now (or raise the 503) and return an awaitable of its result.

        Admission is synchronous so that a caller can refuse a request before starting its other work.
        """
        metrics = self._metrics
        if metrics.queued[self.kind] >= self.capacity:
            metrics.count(metrics.rejected, self.kind)
            raise RequestProblem(503, f"the {self.kind} queue is full ({self.capacity} requests queued or "
                                      f"running, --{self.flag}): retry later", retry_after=1)
        metrics.queued[self.kind] += 1
        return self._run(fn, args)

    async def _run(self, fn: Callable[..., Any], args: tuple) -> Any:
        from concurrent.futures.process import BrokenProcessPool

        try:
            async with self._slots:
                if self._executor is None:
                    self._executor = self._make_executor()
                try:
                    return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
                except BrokenProcessPool:  # a worker died (killed, out of memory): the next job gets new ones
                    broken, self._executor = self._executor, None
                    broken.shutdown(wait=False)
                    raise ScoringError(f"{self.kind} worker process died; retry the request") from None
        finally:
            self._metrics.queued[self.kind] -= 1

    async def close(self) -> None:
        """Cancel what waits and let running jobs finish (off the loop). Waiting matters for processes: a pool
        left to shut down on its own trips over its closed pipes at interpreter exit (Python 3.11)."""
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)


# Verification batches in flight at once: LLM verifiers overlap them; math-verify's pool checks one at a time.
VERIFY_THREADS = 4


def process_pool(workers: int) -> Any:
    """Processes for the ME² analysis. Spawned, not forked: a fork would copy the server's threads (uvicorn,
    the scorer's torch pool) mid-flight. Like any spawn pool, a script that starts the server must do so
    under `if __name__ == "__main__":` (the `thinkrm serve` command does)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_leave_signals_to_the_server)


def _leave_signals_to_the_server() -> None:
    """Ctrl-C reaches the whole process group; the server drains and then shuts its workers down itself."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def analyze_all(items: list[Item]) -> list[dict[str, Any]]:
    from ..me2 import analyze

    try:
        return [analyze(it.reasoning, prompt=it.prompt).to_dict() for it in items]
    except Exception as e:
        raise ScoringError(f"ME² analysis failed: {type(e).__name__}: {e}") from e
