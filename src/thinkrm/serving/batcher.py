"""Dynamic micro-batching: requests that arrive together share one `Scorer.score` call.

This is where the server's throughput under concurrency comes from (RL rollouts fire hundreds of small
requests at once, and a model answers a merged batch in roughly the time of one). It owns the one worker
thread that scoring runs in, the bound on items waiting for it (`--score-queue-items`), and the heap
trimming that keeps a model scorer's memory flat under mixed batch shapes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..formatting import Item
from .errors import RequestProblem, ScoringError
from .metrics import Metrics


@dataclass
class _Pending:
    items: list[Item]
    future: asyncio.Future


class MicroBatcher:
    """Merges concurrently submitted requests into single `Scorer.score` calls.

    The first request of a batch waits at most `max_wait_ms` for others; a batch is closed as soon as it
    holds `max_batch_size` items (a single larger request is scored alone, whole). While one batch is being
    scored, new requests queue up, so under load batches fill without any waiting. All scoring happens in
    one worker thread: models are not thread-safe, and the event loop must stay free to accept requests.
    If a merged call fails, its requests are retried in halves down to single requests, so one poisonous
    input fails only its sender. Text the scorer may choke on (lone surrogates, NUL) is refused before it
    gets here, so in practice a failure is the model's, not a client's.
    """

    def __init__(self, score: Callable[[list[Item]], list[float]], metrics: Metrics, *, max_batch_size: int,
                 max_wait_ms: float, max_queue_items: int = 16_384):
        self._score = score
        self._metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_items = max_queue_items
        self._trim = _HeapTrimmer()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="thinkrm-scorer")
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(ScoringError("server stopped before this request was scored"))
        self._queue.clear()
        self.executor.shutdown(wait=True)

    async def score(self, items: list[Item]) -> list[float]:
        if not items:
            return []
        # Beyond the bound a client learns at once to back off, instead of waiting minutes in a queue that
        # only grows (a request alone is always taken, however large: --max-items bounds it).
        if self._metrics.queue_depth and self._metrics.queue_depth + len(items) > self.max_queue_items:
            self._metrics.count(self._metrics.rejected, "score")
            raise RequestProblem(503, f"the scorer's queue is full ({self._metrics.queue_depth} items "
                                      f"waiting, limit {self.max_queue_items}, --score-queue-items): "
                                      "retry later", retry_after=1)
        pending = _Pending(items, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._metrics.queue_depth += len(items)
        self._arrived.set()
        return await pending.future

    def _queued_items(self) -> int:
        return sum(len(p.items) for p in self._queue)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            if not self._queue:
                continue
            deadline = loop.time() + self.max_wait
            while self._queued_items() < self.max_batch_size and (left := deadline - loop.time()) > 0:
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
                self._arrived.clear()
            batch: list[_Pending] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].items) <= self.max_batch_size):
                pending = self._queue.popleft()
                self._metrics.queue_depth -= len(pending.items)
                if not pending.future.done():  # its caller went away (cancelled): do not score it
                    batch.append(pending)
                    size += len(pending.items)
            if batch:
                await self._score_batch(loop, batch)
            if self._queue:
                self._arrived.set()

    async def _score_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        items = [it for p in batch for it in p.items]
        try:
            scores = await loop.run_in_executor(self.executor, self._checked_score, items)
        except Exception as e:
            self._metrics.scorer_errors += 1
            if len(batch) == 1:
                _settle(batch[0].future, exc=e)
                return
            # Halves, not one call per request: one poisonous request among n costs ~2 log2(n) calls, and
            # the other requests are still scored in batches.
            half = len(batch) // 2
            await self._score_batch(loop, batch[:half])
            await self._score_batch(loop, batch[half:])
            return
        self._metrics.batch_sizes.observe(len(items))
        self._metrics.items_scored += len(items)
        start = 0
        for pending in batch:
            _settle(pending.future, result=scores[start:start + len(pending.items)])
            start += len(pending.items)

    def _checked_score(self, items: list[Item]) -> list[float]:
        try:
            scores = [float(s) for s in self._score(items)]
        except Exception as e:
            raise ScoringError(f"scorer failed: {type(e).__name__}: {e}") from e
        finally:
            self._trim.maybe()
        if len(scores) != len(items):
            raise ScoringError(f"scorer returned {len(scores)} scores for {len(items)} items")
        bad = next((i for i, s in enumerate(scores) if not math.isfinite(s)), None)
        if bad is not None:
            raise ScoringError(f"scorer returned a non-finite score ({scores[bad]}) for an item")
        return scores


class _HeapTrimmer:
    """Hands the C heap's free pages back to the OS (glibc `malloc_trim`), at most once per `every` seconds.

    A model scorer allocates activations of a different shape for every batch; glibc keeps what is freed in
    its heap, raising its mmap threshold as large blocks come and go, so the heap fragments and RSS climbs
    round after round under mixed traffic (TRM-lite: +50 MiB over four rounds of varied batches in process,
    flat with a trim after each call; docs/serving.md). A trim costs ~1 ms on that heap, so once a second
    is noise. Elsewhere than glibc it does nothing.
    """

    def __init__(self, every: float = 1.0):
        self.every = every
        self._last = 0.0
        self._trim = _malloc_trim()

    def maybe(self) -> None:
        now = time.monotonic()
        if self._trim is not None and now - self._last >= self.every:
            self._last = now
            self._trim(0)


def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None


def _settle(future: asyncio.Future, *, result: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
