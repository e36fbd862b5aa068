"""`create_app`: the routes of each protocol, wired to the batcher and the work queues.

This is the only module that imports FastAPI (inside `create_app`): the handlers read a request through
`inputs`, score through the `batcher`, verify and analyse through `work`, and answer with the `schemas`.
What every request passes before it reaches a route (drain, auth, body limits) is in `guard`.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from ..calibration import parse_calibration
from ..formatting import Item
from ..rewards import gated_batch, group_keys, problem_from_chat, resolve_normalize, sigmoid
from ..scoring import Scorer, load_scorer
from ..trace import split_response
from .batcher import MicroBatcher
from .config import ServeConfig
from .errors import RequestProblem, ScoringError
from .guard import Guard
from .inputs import Limits, check_text, recover_response, split_formatted, validation_message
from .metrics import Metrics
from .schemas import (
    ClassifyData,
    ClassifyRequest,
    ClassifyResponse,
    EmbeddingData,
    EmbeddingsRequest,
    EmbeddingsResponse,
    GetRewardRequest,
    GetRewardResponse,
    Problem,
    ScoreRequest,
    ScoreResponse,
    Usage,
)
from .work import VERIFY_THREADS, WorkQueue, analyze_all, process_pool


def create_app(scorer: Scorer | str, config: ServeConfig | None = None) -> Guard:
    """The ASGI app serving `scorer` (a `Scorer` or a spec string) with `config`: a `Guard` around FastAPI.

    What is returned is not the FastAPI app itself but the ASGI guard wrapping it (`guard.Guard`), which
    drains, checks the API key, body size, content type and UTF-8, and counts every request before the
    FastAPI app sees it. Attributes it does not have itself (`openapi()`, `routes`, `state`, ...) come from
    the FastAPI app, which is also its `.app`; serve or mount the guard, since `.app` alone skips those checks.

    A scorer built here from a spec is closed when the app shuts down. `app.state.drain()` starts a graceful
    shutdown by hand (what SIGTERM does under `serve`), `app.state.metrics` holds the live counters.
    """
    from fastapi import FastAPI, Request
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from ..verifiers import load_verifier

    config = config or ServeConfig()
    verifier = load_verifier(config.verifier)
    owns_scorer = isinstance(scorer, str)  # a caller's Scorer instance stays open for the caller to close
    scorer = load_scorer(scorer) if owns_scorer else scorer
    model_name = config.model_name or getattr(scorer, "spec", "") or type(scorer).__name__
    calibration = parse_calibration(config.calibration) or getattr(scorer, "calibration", None)
    normalize = resolve_normalize(config.normalize, calibration, model_name, fix="--calibration CENTER,SCALE")
    metrics = Metrics(config.max_batch_size)
    work: dict[str, Any] = {}  # made in the server's event loop (lifespan), used by the handlers
    limits = Limits(config)

    async def score_items(items: list[Item]) -> list[float]:
        return await work["score"].score(items)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ahead = getattr(scorer, "prepares", False)  # a duck-typed scorer with only `score` scores in one stage
        batcher = MicroBatcher(scorer.score_prepared if ahead else scorer.score, metrics,
                               max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                               max_queue_items=config.score_queue_items, prepare=scorer.prepare if ahead else None)
        batcher.start()
        work["score"] = batcher
        # Verification waits on worker processes (math) or remote servers (llm), so threads suffice; the
        # math pool checks one batch at a time, the others overlap.
        work["verify"] = WorkQueue("verify", lambda: ThreadPoolExecutor(VERIFY_THREADS, "thinkrm-verify"),
                                   metrics, concurrency=VERIFY_THREADS, capacity=config.verify_queue,
                                   flag="verify-queue")
        work["analysis"] = WorkQueue("analysis", lambda: process_pool(config.analysis_workers), metrics,
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
        return JSONResponse({"detail": validation_message(exc.errors())}, status_code=422)

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
        analyses = work["analysis"].submit(analyze_all, items)
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
    return Guard(app, config, metrics, routes)


def _version() -> str:
    from .. import __version__

    return __version__
