"""Dynamic micro-batching: requests that arrive together share one scorer call, and the model never waits.

This is where the server's throughput under concurrency comes from (RL rollouts fire hundreds of small
requests at once, and a model answers a merged batch in roughly the time of one). Scoring runs as a
two-stage pipeline: the scorer's `prepare` (tokenizing, on the CPU) for requests that arrive while the
model is busy, then `score_prepared` on whatever is ready the moment the model is free. Without the first
stage an accelerator idles while each merged batch is tokenized (issue 17's H200: the tokenizer took most of
each call). It owns the worker threads, the bound on items waiting (`--score-queue-items`), and the heap
trimming that keeps a model scorer's memory flat under mixed batch shapes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..formatting import Item
from .errors import RequestProblem, ScoringError
from .metrics import Metrics


@dataclass(eq=False)
class _Pending:
    items: list[Item]
    future: asyncio.Future
    arrived: float  # event-loop time
    prepared: list[Any] | None = None


class MicroBatcher:
    """Merges concurrently submitted requests into single scorer calls, and prepares them ahead of the model.

    Two stages, each in its own worker thread, each taking everything that waits for it (up to
    `max_batch_size` items; a single larger request goes alone, whole):

    * `prepare` (optional: `None` for scorers with nothing to do before the model) turns requests into what
      the model stage takes, while the model works on earlier ones, at most two batches ahead of it;
    * `score` (the model, e.g. `Scorer.score_prepared`) scores one merged batch at a time.

    A request that finds the model idle waits at most `max_wait_ms` from its arrival for others to share its
    call; requests that queued while the model was busy are older than that and go at once, so under load
    batches fill without any waiting and the model runs back to back. Models are not thread-safe, so all
    scoring happens in one thread, and the event loop stays free to accept requests. If a merged call fails
    (in either stage) its requests are retried in halves down to single requests, so one poisonous input
    fails only its sender. Text the scorer may choke on (lone surrogates, NUL) is refused before it gets
    here, so in practice a failure is the model's, not a client's.
    """

    def __init__(self, score: Callable[[list[Any]], list[float]], metrics: Metrics, *, max_batch_size: int,
                 max_wait_ms: float, max_queue_items: int = 16_384,
                 prepare: Callable[[list[Item]], list[Any]] | None = None):
        self._score = score
        self._prepare = prepare
        self._metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_items = max_queue_items
        self._trim = _HeapTrimmer()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="thinkrm-scorer")
        self._prep_executor = ThreadPoolExecutor(1, thread_name_prefix="thinkrm-prepare") if prepare else None
        self._arrivals: deque[_Pending] = deque()  # waiting for `prepare`
        self._ready: deque[_Pending] = deque()  # waiting for the model
        self._open: set[_Pending] = set()  # every request not answered yet, wherever it is
        self._arrived = asyncio.Event()
        self._readied = asyncio.Event()
        self._room = asyncio.Event()  # the model took prepared requests: the prepare stage may go on
        self._tasks: list[asyncio.Task] = []
        self._model_free_since = -math.inf

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._score_loop())]
        if self._prepare is not None:
            self._tasks.append(loop.create_task(self._prepare_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        # Also those a stage had taken when it was cancelled: their callers must not wait forever.
        for pending in self._open:
            _settle(pending.future, exc=ScoringError("server stopped before this request was scored"))
        self._arrivals.clear()
        self._ready.clear()
        self._metrics.queue_depth = 0
        # Off the loop: a model call in progress finishes first, and other apps' requests keep being served.
        await asyncio.to_thread(self.executor.shutdown, wait=True)
        if self._prep_executor is not None:
            await asyncio.to_thread(self._prep_executor.shutdown, wait=True)

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
        loop = asyncio.get_running_loop()
        pending = _Pending(items, loop.create_future(), loop.time())
        self._metrics.queue_depth += len(items)
        if self._prepare is None:
            pending.prepared = items
            self._ready.append(pending)
            self._readied.set()
        else:
            self._arrivals.append(pending)
            self._arrived.set()
        self._open.add(pending)
        try:
            return await pending.future
        finally:
            self._open.discard(pending)

    def _take(self, queue: deque[_Pending]) -> list[_Pending]:
        """The requests at the head of `queue` that fit one call; requests whose caller left are dropped."""
        taken: list[_Pending] = []
        size = 0
        while queue and (not taken or size + len(queue[0].items) <= self.max_batch_size):
            pending = queue.popleft()
            if pending.future.done():  # its caller went away (cancelled): do not work on it
                self._metrics.queue_depth -= len(pending.items)
                continue
            taken.append(pending)
            size += len(pending.items)
        return taken

    async def _prepare_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._arrivals:
                # At most two batches prepared ahead of the model: a backlog's token ids would cost host memory
                # (Python ints, ~9x the text) and tokenizer time on requests whose clients may leave.
                while self._ready_items() >= 2 * self.max_batch_size:
                    self._room.clear()
                    await self._room.wait()
                if group := self._take(self._arrivals):
                    # A request that fails here never reaches the model: it leaves the queue gauge now.
                    await self._in_halves(group, partial(self._prepare_group, loop), still_queued=True)

    async def _in_halves(self, group: list[_Pending], run: Callable[[list[_Pending]], Awaitable[None]], *,
                         still_queued: bool = False) -> None:
        """`await run(group)`; if it raises, the same for each half, down to single requests, which get the error.

        Halves, not one call per request: one poisonous request among n costs ~2 log2(n) calls, and the other
        requests are still served in batches."""
        try:
            await run(group)
        except Exception as e:
            self._metrics.scorer_errors += 1
            if len(group) == 1:
                if still_queued:
                    self._metrics.queue_depth -= len(group[0].items)
                _settle(group[0].future, exc=e)
                return
            half = len(group) // 2
            await self._in_halves(group[:half], run, still_queued=still_queued)
            await self._in_halves(group[half:], run, still_queued=still_queued)

    async def _prepare_group(self, loop: asyncio.AbstractEventLoop, group: list[_Pending]) -> None:
        items = [it for p in group for it in p.items]
        prepared = await loop.run_in_executor(self._prep_executor, self._checked_prepare, items)
        start = 0
        for pending in group:
            pending.prepared = prepared[start:start + len(pending.items)]
            start += len(pending.items)
            self._ready.append(pending)
        self._readied.set()

    def _ready_items(self) -> int:
        return sum(len(p.items) for p in self._ready)

    async def _score_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._readied.wait()
            self._readied.clear()
            while self._ready:
                # Only a request that found the model idle waits for company (from its arrival); one that
                # queued while the model was busy has had its company already, and the model goes on at once.
                oldest = self._ready[0].arrived
                deadline = oldest + self.max_wait if oldest >= self._model_free_since else oldest
                while self._ready_items() < self.max_batch_size and (left := deadline - loop.time()) > 0:
                    try:
                        await asyncio.wait_for(self._readied.wait(), left)
                    except TimeoutError:
                        break
                    self._readied.clear()
                batch = self._take(self._ready)
                self._room.set()
                for pending in batch:
                    self._metrics.queue_depth -= len(pending.items)
                if batch:
                    await self._in_halves(batch, partial(self._score_batch, loop))
                    self._model_free_since = loop.time()

    async def _score_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        prepared = [x for p in batch for x in p.prepared]
        scores = await loop.run_in_executor(self.executor, self._checked_score, prepared)
        self._metrics.batch_sizes.observe(len(prepared))
        self._metrics.items_scored += len(prepared)
        start = 0
        for pending in batch:
            _settle(pending.future, result=scores[start:start + len(pending.items)])
            start += len(pending.items)

    def _checked_prepare(self, items: list[Item]) -> list[Any]:
        try:
            prepared = list(self._prepare(items))
        except Exception as e:
            raise ScoringError(f"scorer failed: {type(e).__name__}: {e}") from e
        if len(prepared) != len(items):
            raise ScoringError(f"scorer prepared {len(prepared)} inputs for {len(items)} items")
        return prepared

    def _checked_score(self, prepared: list[Any]) -> list[float]:
        try:
            scores = [float(s) for s in self._score(prepared)]
        except Exception as e:
            raise ScoringError(f"scorer failed: {type(e).__name__}: {e}") from e
        finally:
            self._trim.maybe()
        if len(scores) != len(prepared):
            raise ScoringError(f"scorer returned {len(scores)} scores for {len(prepared)} items")
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
