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
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .formatting import Item
from .rewards import gated, sigmoid
from .scoring import Scorer, load_scorer
from .trace import split_response

API_KEY_ENV = "THINKRM_API_KEY"


@dataclass
class ServeConfig:
    """Server settings; each field is also a `thinkrm serve` flag (`max_batch_size` -> `--max-batch-size`)."""

    scorer: str = "lite"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # None: $THINKRM_API_KEY; "": no auth; else all routes but /health need it
    model_name: str | None = None  # the "model" echoed in responses; defaults to the scorer spec
    max_batch_size: int = 64  # items per scorer call; 1 turns batching off
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_body_bytes: int = 8 * 1024 * 1024
    max_items: int = 512  # items (or queries / inputs) per request
    max_chars: int = 200_000  # characters per prompt, response or input string
    alpha: float = 0.2  # gated-reward weight of the TRM score on /get_reward with labels
    graceful_timeout_s: float = 30.0  # how long shutdown waits for in-flight requests
    log_level: str = "warning"

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        checks = {"max_batch_size": self.max_batch_size >= 1, "max_wait_ms": self.max_wait_ms >= 0,
                  "max_body_bytes": self.max_body_bytes >= 1, "max_items": self.max_items >= 1,
                  "max_chars": self.max_chars >= 1, "graceful_timeout_s": self.graceful_timeout_s >= 0,
                  "alpha": 0.0 <= self.alpha <= 1.0, "port": 0 <= self.port <= 65535}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid --{name.replace('_', '-')}: {getattr(self, name)!r}")


class RequestProblem(Exception):
    """A client error found while reading a request: becomes `status` with `{"detail": message}`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


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
                f"thinkrm_in_flight_requests {self.in_flight}"]
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
    If a merged call fails, each request is retried alone, so one poisonous input fails only its sender.
    """

    def __init__(self, score: Callable[[list[Item]], list[float]], metrics: Metrics, *, max_batch_size: int,
                 max_wait_ms: float):
        self._score = score
        self._metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
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
            for pending in batch:
                await self._score_batch(loop, [pending])
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
        if len(scores) != len(items):
            raise ScoringError(f"scorer returned {len(scores)} scores for {len(items)} items")
        bad = next((i for i, s in enumerate(scores) if not math.isfinite(s)), None)
        if bad is not None:
            raise ScoringError(f"scorer returned a non-finite score ({scores[bad]}) for an item")
        return scores


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
    """The response part of an OpenRLHF `query`, which is the prompt as the policy rendered it + response.

    The prompt is usually a prefix; a tokenizer round trip may prepend a BOS token or strip padding, so the
    prompt is also searched for. A query that does not contain its prompt is an error rather than a guess,
    because a reward for the wrong span silently corrupts training.
    """
    if query.startswith(prompt):
        return query[len(prompt):]
    at = query.find(prompt)
    if at < 0:
        raise RequestProblem(422, f"query[{index}] does not contain prompts[{index}], so the response cannot "
                                  "be recovered; send the prompt exactly as it appears in the query")
    return query[at + len(prompt):]


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
        return value


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
    use_activation: bool | None = Field(None, description="true: sigmoid(score); otherwise the raw score.")

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
    analysis: bool = Field(False, description="Also return the ME² signals of each trace.")

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
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse

    config = config or ServeConfig()
    owns_scorer = isinstance(scorer, str)  # a caller's Scorer instance stays open for the caller to close
    scorer = load_scorer(scorer) if owns_scorer else scorer
    model_name = config.model_name or getattr(scorer, "spec", "") or type(scorer).__name__
    metrics = Metrics(config.max_batch_size)
    batcher_box: dict[str, MicroBatcher] = {}
    limits = _Limits(config)

    async def score_items(items: list[Item]) -> list[float]:
        return await batcher_box["batcher"].score(items)

    async def run_in_worker(fn: Callable[..., Any], *args: Any) -> Any:
        """CPU work besides scoring (verification, analysis) also leaves the event loop free."""
        return await asyncio.to_thread(fn, *args)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(scorer.score, metrics, max_batch_size=config.max_batch_size,
                               max_wait_ms=config.max_wait_ms)
        batcher.start()
        batcher_box["batcher"] = batcher
        try:
            yield
        finally:
            await batcher.stop()
            if owns_scorer:
                scorer.close()

    # Documented so clients and schemathesis know them; 500 is a scorer failure, named in `detail`.
    errors: dict[int | str, dict[str, Any]] = {status: {"model": Problem}
                                               for status in (400, 401, 413, 422, 500, 503)}
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
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _validation_message(exc.errors())}, status_code=422)

    @app.exception_handler(ScoringError)
    async def _scoring_failed(request: Request, exc: ScoringError):
        return JSONResponse({"detail": str(exc)}, status_code=500)

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
            items.append(Item(prompt, split_response(response)[0]))
            responses.append(response)
        if body.labels is None:
            r_t = await score_items(items)
            return GetRewardResponse(rewards=r_t, scores=r_t, extra_logs={"r_t": r_t})
        golds = ["" if g is None else str(g) for g in body.labels]
        # Verification runs in its own processes, so it overlaps with scoring instead of following it.
        r_t, r_v = await asyncio.gather(score_items(items), run_in_worker(_verify_batch, responses, golds))
        rewards = [gated(v, t, alpha=config.alpha) for v, t in zip(r_v, r_t)]
        # `scores` drives OpenRLHF's dynamic filtering, which expects the 0/1 correctness.
        return GetRewardResponse(rewards=rewards, scores=r_v, extra_logs={"r_v": r_v, "r_t": r_t})

    @app.post("/score", response_model=ScoreResponse, response_model_exclude_none=True, tags=["thinkrm"])
    async def score(body: ScoreRequest):
        """thinkrm's own protocol: separate prompt and response fields, optional ME² analysis."""
        limits.count(len(body.items), "items")
        items = []
        for i, it in enumerate(body.items):
            limits.text(it.prompt, f"items[{i}].prompt", allow_empty=True)
            reasoning = split_response(limits.text(it.response, f"items[{i}].response"))[0]
            items.append(Item(it.prompt, reasoning))
        scores = await score_items(items)
        if not body.analysis:
            return ScoreResponse(scores=scores)
        analyses = await run_in_worker(_analyze_all, items)
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


def _verify_batch(responses: list[str], golds: list[str]) -> list[float]:
    from .verify import verify_batch

    return [float(v) for v in verify_batch(responses, golds)]


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
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestProblem(413, f"request body exceeds the limit of {limit} bytes "
                                          "(--max-body-bytes)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestProblem(400, f"request body is not valid UTF-8 ({e.reason} at byte {e.start})"
                                 ) from None
        return body


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


async def _send_problem(send: Callable, status: int, message: str, *, draining: bool) -> None:
    payload = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if draining:
        headers += [(b"connection", b"close"), (b"retry-after", b"1")]
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
            if self.drain_deadline is not None and (app.metrics.in_flight == 0
                                                    or time.monotonic() > self.drain_deadline):
                self.should_exit = True
            return await super().on_tick(counter)

    uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                               timeout_graceful_shutdown=max(config.graceful_timeout_s, 0.1),
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
        app.state.drain()
        thread.join(timeout=config.graceful_timeout_s + 10)
        sock.close()


__all__ = ["ServeConfig", "create_app", "make_server", "bind", "serve", "running", "split_formatted",
           "MicroBatcher", "Metrics", "API_KEY_ENV"]
