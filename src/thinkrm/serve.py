"""`thinkrm serve`: one HTTP server that RL and evaluation frameworks call unchanged.

A trained TRM is only useful in training loops if the loop can reach it, and every framework already speaks a
protocol: verl and the reference TRM serving talk to SGLang's `/v1/embeddings`, vLLM clients to `/classify`,
OpenRLHF to `/get_reward`. This server answers all of them (plus our own `/score`) from any `Scorer`, so a
user swaps the backend without touching the trainer.

Three properties matter more than the protocols:

* **Throughput under concurrency.** RL rollouts fire hundreds of small requests at once. Requests that arrive
  together are merged into one `Scorer.score` call (dynamic micro-batching), which a model answers in
  roughly the time of one; inference runs in a single worker thread so the event loop keeps accepting.
* **Bad input never kills the server.** Limits on body size, items and characters, UTF-8 and JSON checks
  run before any scoring, and every rejection is a 4xx whose `detail` names the field or the limit.
* **Restarts do not drop rewards.** On SIGTERM/SIGINT the server keeps its socket open while in-flight
  requests finish, answering newcomers 503 (so load balancers and clients retry elsewhere), then exits.

How `/v1/embeddings` and `/classify` recover (prompt, reasoning) from one string: TRM-8B is served with
`format_input(prompt, reasoning) = prompt + "\\n" + reasoning`, so the text is split at its *first* newline.
For model scorers this is exact: `format_input` of the two halves rebuilds the same bytes, so the model sees
exactly what SGLang would have fed it. A prompt that itself spans lines leaves its later lines at the head
of the reasoning; clients that know the split should use `/score`, which takes the two fields separately.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from .calibration import parse_calibration
from .formatting import Item
from .io import text_problem
from .rewards import gated_batch, group_keys, problem_from_chat, resolve_normalize, sigmoid
from .rewards import recover_response as _recover_response
from .scoring import Scorer, load_scorer
from .serve_config import API_KEY_ENV, ServeConfig
from .trace import split_response


class RequestProblem(Exception):
    """A client error found while reading a request: becomes `status` with `{"detail": message}`."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after  # a 503 from a full queue says when to come back

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


# --------------------------------------------------------------------------------------------- metrics

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break

    def lines(self, name: str, labels: str = "") -> Iterator[str]:
        sep = "," if labels else ""
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts):
            cumulative += count
            yield f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {cumulative}'
        yield f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}'
        suffix = f"{{{labels}}}" if labels else ""
        yield f"{name}_sum{suffix} {self.sum:.6g}"
        yield f"{name}_count{suffix} {self.total}"


class Metrics:
    """Counters for `/metrics`, in the Prometheus text format (written by hand: no client library needed).

    Only touched from the event loop thread, so no locks. Routes outside the app's own (typos, scanners)
    are counted under `route="other"` so a fuzzer cannot blow up the label set.
    """

    def __init__(self, max_batch_size: int):
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, _Histogram] = {}
        sizes = [1]
        while sizes[-1] < max_batch_size:
            sizes.append(min(sizes[-1] * 2, max_batch_size))
        self.batch_sizes = _Histogram(sizes)
        self.items_scored = 0
        self.scorer_errors = 0
        self.queue_depth = 0
        self.in_flight = 0
        self.open_connections = 0
        self.closed_connections: dict[str, int] = {}  # closed by the server for a limit, by reason
        self.queued: dict[str, int] = {}  # requests queued or running, by kind of work
        self.rejected: dict[str, int] = {}  # requests turned away (503) because that queue was full

    def count(self, counter: dict[str, int], key: str, n: int = 1) -> None:
        counter[key] = counter.get(key, 0) + n

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
        self.latency.setdefault(route, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def render(self) -> str:
        out = ["# HELP thinkrm_requests_total HTTP requests by route and status code.",
               "# TYPE thinkrm_requests_total counter"]
        out += [f'thinkrm_requests_total{{route="{r}",status="{s}"}} {n}'
                for (r, s), n in sorted(self.requests.items())]
        out += ["# HELP thinkrm_request_duration_seconds Time from request start to response end.",
                "# TYPE thinkrm_request_duration_seconds histogram"]
        for route, hist in sorted(self.latency.items()):
            out += hist.lines("thinkrm_request_duration_seconds", f'route="{route}"')
        out += ["# HELP thinkrm_batch_size Items per scorer call (micro-batch size).",
                "# TYPE thinkrm_batch_size histogram", *self.batch_sizes.lines("thinkrm_batch_size"),
                "# HELP thinkrm_items_scored_total Items scored.",
                "# TYPE thinkrm_items_scored_total counter",
                f"thinkrm_items_scored_total {self.items_scored}",
                "# HELP thinkrm_scorer_errors_total Scorer calls that raised.",
                "# TYPE thinkrm_scorer_errors_total counter",
                f"thinkrm_scorer_errors_total {self.scorer_errors}",
                "# HELP thinkrm_queue_depth Items waiting for the scorer.",
                "# TYPE thinkrm_queue_depth gauge",
                f"thinkrm_queue_depth {self.queue_depth}",
                "# HELP thinkrm_in_flight_requests Requests being served.",
                "# TYPE thinkrm_in_flight_requests gauge",
                f"thinkrm_in_flight_requests {self.in_flight}",
                "# HELP thinkrm_open_connections Open client connections.",
                "# TYPE thinkrm_open_connections gauge",
                f"thinkrm_open_connections {self.open_connections}",
                "# HELP thinkrm_connections_closed_total Connections closed by a limit, by reason.",
                "# TYPE thinkrm_connections_closed_total counter"]
        out += [f'thinkrm_connections_closed_total{{reason="{r}"}} {n}'
                for r, n in sorted(self.closed_connections.items())]
        out += ["# HELP thinkrm_work_queued Requests queued or running, by kind of work.",
                "# TYPE thinkrm_work_queued gauge"]
        out += [f'thinkrm_work_queued{{kind="{k}"}} {n}' for k, n in sorted(self.queued.items())]
        out += ["# HELP thinkrm_work_rejected_total Requests answered 503 because their queue was full.",
                "# TYPE thinkrm_work_rejected_total counter"]
        out += [f'thinkrm_work_rejected_total{{kind="{k}"}} {n}' for k, n in sorted(self.rejected.items())]
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------- batching

@dataclass
class _Pending:
    items: list[Item]
    future: asyncio.Future


class ScoringError(RuntimeError):
    """The scorer raised or returned something unusable; the request gets a 500 naming it."""


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


def _settle(future: asyncio.Future, *, result: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


# --------------------------------------------------------------------------------------- input rules

def split_formatted(text: str) -> Item:
    """(prompt, reasoning) of an already-formatted `prompt + "\\n" + reasoning` string (see module doc).

    Text without a newline is all reasoning with an empty prompt: a bare trace is the common case then.
    """
    prompt, sep, reasoning = text.partition("\n")
    return Item(prompt, reasoning) if sep else Item("", text)


def recover_response(query: str, prompt: str, index: int) -> str:
    """The response part of an OpenRLHF `query` (`thinkrm.rewards.recover_response`), or a 422."""
    try:
        return _recover_response(query, prompt)
    except ValueError:
        raise RequestProblem(422, f"query[{index}] does not contain prompts[{index}], so the response cannot "
                                  "be recovered; send the prompt exactly as it appears in the query") from None


class _Limits:
    def __init__(self, config: ServeConfig):
        self.max_items = config.max_items
        self.max_chars = config.max_chars

    def count(self, n: int, field_name: str) -> None:
        if n == 0:
            raise RequestProblem(422, f"{field_name} is empty: send at least one item")
        if n > self.max_items:
            raise RequestProblem(413, f"{field_name} has {n} items, more than the limit of {self.max_items} "
                                      "per request (--max-items)")

    def text(self, value: str, where: str, *, allow_empty: bool = False) -> str:
        if not allow_empty and not value.strip():
            raise RequestProblem(422, f"{where} is empty")
        if len(value) > self.max_chars:
            raise RequestProblem(422, f"{where} has {len(value)} characters, more than the limit of "
                                      f"{self.max_chars} (--max-chars)")
        return check_text(value, where)


def check_text(value: str, where: str) -> str:
    """`value`, or a 422 naming `where` and the first character no scorer or verifier can take.

    JSON can carry what UTF-8 cannot: "\\ud800" decodes to a lone surrogate, which tokenizers refuse (the
    scorer then fails for every request merged with it). The rule is the one input files follow
    (`thinkrm.io.text_problem`), so a row `thinkrm score` refuses is refused here too."""
    problem = text_problem(value)
    if problem is None:
        return value
    raise RequestProblem(422, f"{where} {problem}")


# ------------------------------------------------------------------------------------------ the app

# Request and response bodies: they are the OpenAPI schema that clients and schemathesis read.

class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

class EmbeddingsRequest(Body):
    model: str | None = Field(None, description="Ignored: the server has one model; echoed back as served.")
    input: str | list[str] = Field(description='Formatted text(s), `prompt + "\\n" + reasoning`.')

class EmbeddingData(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float] = Field(description="One element: the raw TRM score.")

class Usage(BaseModel):
    prompt_tokens: int = Field(description="Characters, not tokens: the server is tokenizer-agnostic.")
    total_tokens: int

class EmbeddingsResponse(BaseModel):
    object: str = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage

class ClassifyRequest(Body):
    model: str | None = None
    input: str | list[str] = Field(description='Formatted text(s), `prompt + "\\n" + reasoning`.')
    # Strict: pydantic would read "yes", "off" or 0 as booleans, and a typo must not change what is returned.
    use_activation: StrictBool | None = Field(None,
                                              description="true: sigmoid(score); otherwise the raw score.")

class ClassifyData(BaseModel):
    index: int
    label: str = "score"
    probs: list[float]
    num_classes: int = 1

class ClassifyResponse(BaseModel):
    object: str = "list"
    data: list[ClassifyData]
    model: str
    usage: Usage

class GetRewardRequest(Body):
    query: list[str] = Field(description="Prompt + response, as the policy rendered them.")
    prompts: list[str] | None = Field(None, description="The prompt of each query, used to cut it off.")
    labels: list[str | float | int | None] | None = Field(
        None, description="Gold answers; when given, `rewards` is the gated reward.")

class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]

class ScoreItem(Body):
    prompt: str
    response: str = Field(description="The model's response or just its reasoning; text after `</think>` "
                                      "is not scored.")

class ScoreRequest(Body):
    items: list[ScoreItem]
    analysis: StrictBool = Field(False, description="Also return the ME² signals of each trace.")

class ScoreResponse(BaseModel):
    scores: list[float]
    analyses: list[dict[str, Any]] | None = None

class Problem(BaseModel):
    detail: str



def create_app(scorer: Scorer | str, config: ServeConfig | None = None):
    """The FastAPI app serving `scorer` (a `Scorer` or a spec string) with `config`.

    A scorer built here from a spec is closed when the app shuts down. `app.state.drain()` starts a graceful
    shutdown by hand (what SIGTERM does under `serve`), `app.state.metrics` holds the live counters.
    """
    from fastapi import FastAPI, Request
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .verifiers import load_verifier

    config = config or ServeConfig()
    verifier = load_verifier(config.verifier)
    owns_scorer = isinstance(scorer, str)  # a caller's Scorer instance stays open for the caller to close
    scorer = load_scorer(scorer) if owns_scorer else scorer
    model_name = config.model_name or getattr(scorer, "spec", "") or type(scorer).__name__
    calibration = parse_calibration(config.calibration) or getattr(scorer, "calibration", None)
    normalize = resolve_normalize(config.normalize, calibration, model_name, fix="--calibration CENTER,SCALE")
    metrics = Metrics(config.max_batch_size)
    work: dict[str, Any] = {}  # made in the server's event loop (lifespan), used by the handlers
    limits = _Limits(config)

    async def score_items(items: list[Item]) -> list[float]:
        return await work["score"].score(items)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(scorer.score, metrics, max_batch_size=config.max_batch_size,
                               max_wait_ms=config.max_wait_ms, max_queue_items=config.score_queue_items)
        batcher.start()
        work["score"] = batcher
        # Verification waits on worker processes (math) or remote servers (llm), so threads suffice; the
        # math pool checks one batch at a time, the others overlap.
        work["verify"] = WorkQueue("verify", lambda: ThreadPoolExecutor(VERIFY_THREADS, "thinkrm-verify"),
                                   metrics, concurrency=VERIFY_THREADS, capacity=config.verify_queue,
                                   flag="verify-queue")
        work["analysis"] = WorkQueue("analysis", lambda: _process_pool(config.analysis_workers), metrics,
                                     concurrency=config.analysis_workers, capacity=config.analysis_queue,
                                     flag="analysis-queue")
        try:
            yield
        finally:
            await batcher.stop()
            await work["verify"].close()
            await work["analysis"].close()
            verifier.close()
            if owns_scorer:
                scorer.close()

    # Documented so clients and schemathesis know them; 500 is a scorer failure, named in `detail`.
    errors: dict[int | str, dict[str, Any]] = {status: {"model": Problem}
                                               for status in (400, 401, 408, 413, 422, 500, 503)}
    app = FastAPI(title="thinkrm scoring server", version=_version(), lifespan=lifespan,
                  strict_content_type=False, responses=errors,
                  description="Scores reasoning traces with a thinking reward model. See docs/serving.md.")
    app.state.config = config
    app.state.metrics = metrics
    app.state.scorer = scorer
    app.state.draining = False
    app.state.drain = lambda: setattr(app.state, "draining", True)

    @app.exception_handler(RequestProblem)
    async def _problem(request: Request, exc: RequestProblem):
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _validation_message(exc.errors())}, status_code=422)

    @app.exception_handler(ScoringError)
    async def _scoring_failed(request: Request, exc: ScoringError):
        return JSONResponse({"detail": str(exc)}, status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # FastAPI turns any failure to read the body into a generic 400 "error parsing the body". With valid
        # UTF-8 (checked before) the one left is JSON nested deeper than Python's parser recurses, ~1,000
        # levels; a check on the bytes before parsing cost more than the parse on large batches.
        if isinstance(exc.__cause__, RecursionError):
            return JSONResponse({"detail": "request body nests JSON deeper than the parser allows (about "
                                           "1,000 levels); no route takes more than 3"}, status_code=422)
        return await http_exception_handler(request, exc)

    def texts_of(value: str | list[str]) -> tuple[list[Item], Usage]:
        texts = [value] if isinstance(value, str) else value
        limits.count(len(texts), "input")
        items = [split_formatted(limits.text(t, f"input[{i}]")) for i, t in enumerate(texts)]
        chars = sum(len(t) for t in texts)
        return items, Usage(prompt_tokens=chars, total_tokens=chars)

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, tags=["SGLang / verl"])
    async def embeddings(body: EmbeddingsRequest):
        """OpenAI/SGLang embeddings protocol; `data[i].embedding[0]` is the raw score of `input[i]`."""
        items, usage = texts_of(body.input)
        scores = await score_items(items)
        return EmbeddingsResponse(data=[EmbeddingData(index=i, embedding=[s]) for i, s in enumerate(scores)],
                                  model=model_name, usage=usage)

    @app.post("/classify", response_model=ClassifyResponse, tags=["vLLM"])
    async def classify(body: ClassifyRequest):
        """vLLM classification protocol; raw score unless `use_activation` is true (then its sigmoid)."""
        items, usage = texts_of(body.input)
        scores = await score_items(items)
        act = sigmoid if body.use_activation else float
        return ClassifyResponse(data=[ClassifyData(index=i, probs=[act(s)]) for i, s in enumerate(scores)],
                                model=model_name, usage=usage)

    @app.post("/get_reward", response_model=GetRewardResponse, tags=["OpenRLHF"])
    async def get_reward(body: GetRewardRequest):
        """OpenRLHF remote reward protocol. With `labels`, `rewards` = r_v * (1 - a + a * sigmoid(r_t))."""
        n = len(body.query)
        limits.count(n, "query")
        for name in ("prompts", "labels"):
            given = getattr(body, name)
            if given is not None and len(given) != n:
                raise RequestProblem(422, f"{name} has {len(given)} entries but query has {n}: "
                                          "send one per query")
        prompts = body.prompts
        items, responses = [], []
        for i, query in enumerate(body.query):
            limits.text(query, f"query[{i}]")
            if prompts is None:
                prompt, response = split_formatted(query)
            else:
                prompt = limits.text(prompts[i], f"prompts[{i}]", allow_empty=True)
                # A newline right after the prompt is the separator `format_input` puts there, not reasoning.
                response = recover_response(query, prompt, i).removeprefix("\n")
                # OpenRLHF sends the chat-templated prompt; the TRM was trained on the problem itself.
                prompt = problem_from_chat(prompt)
            items.append(Item(prompt, split_response(response)[0]))
            responses.append(response)
        if body.labels is None:
            r_t = await score_items(items)
            return GetRewardResponse(rewards=r_t, scores=r_t, extra_logs={"r_t": r_t})
        golds = [check_text(g, f"labels[{i}]") if isinstance(g, str) else "" if g is None else str(g)
                 for i, g in enumerate(body.labels)]
        problems = [it.prompt for it in items]
        # Verification runs in its own queue and threads (math in its own processes), overlapping with
        # scoring; a full queue refuses the request before any scoring starts.
        verdicts = work["verify"].submit(verifier.verify_batch, responses, golds, problems)
        r_t, r_v = await asyncio.gather(score_items(items), verdicts)
        r_v = [float(v) for v in r_v]
        rewards, z = gated_batch(r_v, r_t, config.alpha, normalize=normalize, calibration=calibration,
                                 groups=group_keys(body.prompts or problems))
        # `scores` drives OpenRLHF's dynamic filtering, which expects the 0/1 correctness. z is 0 where it
        # takes no part (a wrong answer under group normalisation): its reward is 0 whatever z would be.
        return GetRewardResponse(rewards=rewards, scores=r_v, extra_logs={
            "r_v": r_v, "r_t": r_t, "r_t_normalized": [0.0 if x is None else x for x in z]})

    @app.post("/score", response_model=ScoreResponse, response_model_exclude_none=True, tags=["thinkrm"])
    async def score(body: ScoreRequest):
        """thinkrm's own protocol: separate prompt and response fields, optional ME² analysis."""
        limits.count(len(body.items), "items")
        items = []
        for i, it in enumerate(body.items):
            limits.text(it.prompt, f"items[{i}].prompt", allow_empty=True)
            reasoning = split_response(limits.text(it.response, f"items[{i}].response"))[0]
            items.append(Item(it.prompt, reasoning))
        if not body.analysis:
            return ScoreResponse(scores=await score_items(items))
        # Admitted before scoring, so a full analysis queue costs the client no scorer time.
        analyses = work["analysis"].submit(_analyze_all, items)
        scores, analyses = await asyncio.gather(score_items(items), analyses)
        return ScoreResponse(scores=scores, analyses=analyses)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, Any]:
        """Liveness and what is served; needs no API key, so probes work (503 while draining)."""
        return {"status": "ok", "scorer": getattr(scorer, "spec", ""),
                "model": model_name, "version": _version()}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"])
    async def metrics_text() -> str:
        """Prometheus text format."""
        return metrics.render()

    routes = {r.path for r in app.routes}
    return _Guard(app, config, metrics, routes)


def _validation_message(errors: Sequence[dict[str, Any]]) -> str:
    """One readable clause per pydantic error, e.g. `items[0].prompt: Input should be a valid string`.

    For a union field (`input: str | list[str]`) pydantic reports every branch; an error located inside
    an element is kept and the vaguer whole-field one dropped, so the message points at the bad element.
    """
    located = []
    for err in errors:
        loc = tuple(p for p in err.get("loc", ()) if p != "body" and not _is_branch_tag(p))
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            pos = f" at character {loc[0]}" if loc else ""
            located.append(((), f"malformed JSON{pos}: {ctx.get('error', err.get('msg'))}"))
        else:
            located.append((loc, err.get("msg", "invalid")))
    parts = []
    for loc, msg in located:
        if loc and any(other[:len(loc)] == loc and len(other) > len(loc) for other, _ in located):
            continue
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        parts.append(f"{where}: {msg}" if where else msg)
    parts = list(dict.fromkeys(parts))
    more = f" (and {len(parts) - 5} more)" if len(parts) > 5 else ""
    return "; ".join(parts[:5]) + more


def _is_branch_tag(part: Any) -> bool:
    """Pydantic names union branches in `loc` (`'str'`, `'list[str]'`); they are not fields."""
    return isinstance(part, str) and ("[" in part or part in {"str", "float", "int", "none", "bool"})


# Verification batches in flight at once: LLM verifiers overlap them; math-verify's pool checks one at a time.
VERIFY_THREADS = 4


def _process_pool(workers: int) -> Any:
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


def _analyze_all(items: list[Item]) -> list[dict[str, Any]]:
    from .me2 import analyze

    try:
        return [analyze(it.reasoning, prompt=it.prompt).to_dict() for it in items]
    except Exception as e:
        raise ScoringError(f"ME² analysis failed: {type(e).__name__}: {e}") from e


def _version() -> str:
    from . import __version__

    return __version__


class _Guard:
    """The ASGI layer in front of the app: drain, auth, body limits, UTF-8, in-flight and metrics.

    It is plain ASGI rather than FastAPI middleware because it must see every request, including ones the
    router rejects, and must buffer the body once to enforce the byte limit before JSON parsing starts.
    """

    def __init__(self, app: Any, config: ServeConfig, metrics: Metrics, routes: set[str]):
        self.app = app
        self.state = app.state
        self.config = config
        self.metrics = metrics
        self.routes = routes
        self._key = config.api_key.encode() if config.api_key else None

    def __getattr__(self, name: str) -> Any:  # `openapi()`, `routes`, ... of the wrapped FastAPI app
        return getattr(self.app, name)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        route = path if path in self.routes else "other"
        status = {"code": 500}

        async def send_tracking(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            try:
                body = await self._admit(scope, receive)
            except RequestProblem as e:
                await _send_problem(send_tracking, e.status, e.message, draining=self.state.draining)
                return
            await self.app(scope, _replay(body, receive), send_tracking)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.observe_request(route, status["code"], time.perf_counter() - start)

    async def _admit(self, scope: dict, receive: Callable) -> bytes:
        if self.state.draining:
            raise RequestProblem(503, "server is shutting down; retry on another replica or after restart")
        if self._key is not None and scope["path"] != "/health":
            token = _bearer(scope)
            if token is None or not hmac.compare_digest(token, self._key):
                raise RequestProblem(401, "missing or wrong API key: send the header 'Authorization: Bearer "
                                          "<key>' with the server's --api-key / $THINKRM_API_KEY")
        limit = self.config.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestProblem(413, f"request body of {int(declared)} bytes exceeds the limit of {limit} "
                                      "bytes (--max-body-bytes)")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # Gone before the whole body came: the protocol's --body-timeout-s (it already answered
                # 408) or the client itself. Either way nothing is left to answer; the status is for metrics.
                raise RequestProblem(408 if scope.get("thinkrm.body_timeout") else 499,
                                     "client connection closed before the whole body arrived")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestProblem(413, f"request body exceeds the limit of {limit} bytes "
                                          "(--max-body-bytes)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not body:
            return body
        kind = (_header(scope, b"content-type") or "application/json").partition(";")[0].strip().lower()
        if not (kind == "application/json" or kind.startswith("application/") and kind.endswith("+json")):
            raise RequestProblem(422, f"request body has content-type {kind!r}; every route takes JSON: send "
                                      "'Content-Type: application/json'")
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _not_utf8(body, e) from None
        return body


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what the surrogateescape error handler turns bad bytes into


def _not_utf8(body: bytes, error: UnicodeDecodeError) -> RequestProblem:
    """A 422 naming the JSON field that holds the first invalid byte, or the byte offset alone if the body
    does not parse as JSON around it."""
    try:
        where = _find_string(json.loads(body.decode("utf-8", "surrogateescape")), _ESCAPED_BYTE.search)
    except (ValueError, RecursionError):
        where = None
    byte = body[error.start]
    return RequestProblem(422, f"{where or 'request body'} is not valid UTF-8 (byte 0x{byte:02x} at byte "
                               f"{error.start} of the body: {error.reason}); send UTF-8 text")


def _find_string(doc: Any, bad: Callable[[str], Any], path: str = "") -> str | None:
    """The path (`items[0].response`) of the first string, key or value, in `doc` for which `bad` holds."""
    if isinstance(doc, str):
        return path if bad(doc) else None
    if isinstance(doc, dict):
        children = []
        for key, value in doc.items():
            child = f"{path}.{key}" if path else str(key)
            if bad(key):
                return f"a key in {path}" if path else "a key"
            children.append((child, value))
    elif isinstance(doc, list):
        children = [(f"{path}[{i}]", value) for i, value in enumerate(doc)]
    else:
        return None
    return next((found for child, value in children if (found := _find_string(value, bad, child))), None)


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _bearer(scope: dict) -> bytes | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    kind, _, token = value.partition(" ")
    return token.strip().encode("latin-1") if kind.lower() == "bearer" else None


def _replay(body: bytes, receive: Callable) -> Callable:
    """The buffered body once, then the real channel (so a client disconnect still reaches the app)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _problem_app(status: int, message: str) -> Callable:
    """An ASGI app that answers every request with `status` and closes the connection."""
    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        await _send_problem(send, status, message, draining=False)

    return app


async def _send_problem(send: Callable, status: int, message: str, *, draining: bool) -> None:
    payload = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if draining:
        headers += [(b"connection", b"close"), (b"retry-after", b"1")]
    elif status in (408, 413, 431):  # the rest of the request may still be coming: the connection is spent
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


# ----------------------------------------------------------------------------------------- running

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
                               http=_guarded_protocol(config, app.metrics, _connection_cap(config)),
                               access_log=False, lifespan="on")
    return DrainingServer(uv_config)


def _connection_cap(config: ServeConfig) -> int:
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


def _guarded_protocol(config: ServeConfig, metrics: Metrics, max_connections: int) -> type:
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
            app, self.app = self.app, _problem_app(431, f"request headers of {size} bytes exceed the limit "
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


__all__ = ["ServeConfig", "create_app", "make_server", "bind", "serve", "running", "split_formatted",
           "MicroBatcher", "Metrics", "API_KEY_ENV"]
