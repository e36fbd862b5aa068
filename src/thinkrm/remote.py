"""Scorers that call a reward model served elsewhere: SGLang, vLLM, OpenRLHF, and thinkrm's own server.

All four share `RemoteScorer`: items are sent in chunks (`batch_size` per request, `concurrency` requests in
flight) to an `EndpointPool` (`thinkrm.endpoints`). The URL may be several, comma-separated
(`vllm:http://h1:8000,http://h2:8000,h3:8000`): chunks are spread over the replicas; one that fails to
connect, drops connections or answers 429/5xx is taken out for a cooldown (honouring a numeric
`Retry-After`) while its chunks go to the others, and a request waits, with exponential backoff, only when
every replica is out. With one URL that is plain retrying. Every unexpected answer becomes one clear error
naming the URL, the HTTP status and the start of the body. A read timeout is not retried: the server may
still be working on the request, and sending it again would only pile up load. Each chunk's scores come
from exactly one answer. Protocols differ only in `_payload` and `_parse`.

What each server is sent, by protocol:

* `sglang:URL`: POST URL/v1/embeddings `{"model", "input": [text, ...]}`; score = `data[i].embedding[0]`
  (how the published TRM-8B is served). text = `format_input(prompt, reasoning)`.
* `vllm:URL`: POST URL/classify `{"input": [text, ...], "use_activation": false}`; score = `data[i].probs[0]`,
  the raw head output since the activation is off.
* `openrlhf:URL`: POST URL/get_reward `{"query": [text, ...], "prompts": [prompt, ...]}`; score =
  `rewards[i]`. OpenRLHF feeds `query` to its model as is, so query is the full formatted input.
* `thinkrm:URL`: POST URL/score `{"items": [{"prompt", "response"}], "analysis": false}`; score =
  `scores[i]`. The reasoning goes in `response`; the server formats (and truncates) it itself.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .endpoints import EndpointPool, ServerResponseError
from .formatting import Item, format_input
from .scoring import Scorer


class RemoteScorer(Scorer):
    """Shared transport: chunking, bounded concurrency, failover across replicas, retries with backoff,
    timeouts, checked answers. Picklable: the copy opens its own connections."""

    endpoint = ""
    kind = ""

    def __init__(self, arg: str, *, batch_size: int = 32, concurrency: int = 4, timeout: float = 120.0,
                 connect_timeout: float = 10.0, retries: int = 4, backoff: float = 0.5,
                 api_key: str | None = None, model: str | None = None, **_: Any):
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be >= 1")
        if not arg.strip():
            raise ValueError(f"{self.kind} scorer needs a server URL: {self.kind}:http://HOST:PORT "
                             "(several replicas: comma-separated)")
        self.pool = EndpointPool(arg, headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
                                 timeout=timeout, connect_timeout=connect_timeout, retries=retries,
                                 backoff=backoff, max_connections=concurrency)
        self.base_urls = list(self.pool.urls)
        self.base_url = self.base_urls[0]  # the first replica; where one URL is expected (messages, health)
        self.url = self.base_url + self.endpoint
        self.batch_size, self.concurrency = batch_size, concurrency
        self.model = model

    @property
    def requests_sent(self) -> int:
        """Attempts, retries included; tests and logs read it."""
        return self.pool.requests_sent

    def _payload(self, items: list[Item]) -> dict[str, Any]:
        raise NotImplementedError

    def _parse(self, body: Any, n: int) -> list[Any]:
        """Raw score values from a decoded JSON answer; raise `ValueError` naming what is wrong."""
        raise NotImplementedError

    def _score_chunk(self, items: list[Item]) -> list[float]:
        url, body = self.pool.post_json(self.endpoint, self._payload(items))
        try:
            values = self._parse(body, len(items))
            if len(values) != len(items):
                raise ValueError(f"expected {len(items)} scores, got {len(values)}")
            return [_finite(v, i) for i, v in enumerate(values)]
        except (ValueError, KeyError, TypeError, IndexError) as e:
            problem = str(e) if isinstance(e, ValueError) else \
                f"unexpected answer shape ({type(e).__name__}: {e})"
            raise ServerResponseError(url, problem, status=200, body=json.dumps(body)) from None

    def score(self, items: Sequence[Item | tuple[str, str]]) -> list[float]:
        items = [Item(*it) for it in items]
        chunks = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        if len(chunks) <= 1:
            return self._score_chunk(chunks[0]) if chunks else []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(chunks))) as pool:
            return [s for chunk_scores in pool.map(self._score_chunk, chunks) for s in chunk_scores]

    def close(self) -> None:
        self.pool.close()


def _finite(value: Any, i: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"score {i} is not a number: {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"score {i} is not finite: {value!r}")
    return float(value)


def _data_rows(body: Any, n: int) -> list[dict[str, Any]]:
    """OpenAI-style `data` list, put back in request order by each row's `index` when present."""
    rows = body["data"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("'data' must be a list of objects")
    if len(rows) != n:
        raise ValueError(f"expected {n} scores, got {len(rows)}")
    if all("index" in r for r in rows):
        if sorted(r["index"] for r in rows) != list(range(n)):
            raise ValueError("'index' values are not 0..n-1")
        rows = sorted(rows, key=lambda r: r["index"])
    return rows


class SGLangScorer(RemoteScorer):
    """`sglang:URL`: a reward model served by SGLang (`--is-embedding`), the TRM-8B reference protocol."""

    endpoint = "/v1/embeddings"
    kind = "sglang"

    def _payload(self, items):
        return {"model": self.model or "default", "input": [format_input(p, r) for p, r in items]}

    def _parse(self, body, n):
        return [row["embedding"][0] for row in _data_rows(body, n)]


class VLLMScorer(RemoteScorer):
    """`vllm:URL`: a reward model served by `vllm serve` with the classify task."""

    endpoint = "/classify"
    kind = "vllm"

    def _payload(self, items):
        payload: dict[str, Any] = {"input": [format_input(p, r) for p, r in items], "use_activation": False}
        if self.model:
            payload["model"] = self.model
        return payload

    def _parse(self, body, n):
        return [row["probs"][0] for row in _data_rows(body, n)]


class OpenRLHFScorer(RemoteScorer):
    """`openrlhf:URL`: OpenRLHF's remote reward-model protocol (`openrlhf.cli.serve_rm`)."""

    endpoint = "/get_reward"
    kind = "openrlhf"

    def _payload(self, items):
        return {"query": [format_input(p, r) for p, r in items], "prompts": [p for p, _ in items]}

    def _parse(self, body, n):
        rewards = body["rewards"]
        if not isinstance(rewards, list):
            raise ValueError("'rewards' must be a list")
        # Some OpenRLHF reward servers wrap each reward in a one-element list.
        return [r[0] if isinstance(r, list) and len(r) == 1 else r for r in rewards]


class ThinkrmScorer(RemoteScorer):
    """`thinkrm:URL`: thinkrm's own scoring server (`thinkrm serve`); bearer token from `api_key` or
    the THINKRM_API_KEY environment variable."""

    endpoint = "/score"
    kind = "thinkrm"

    def __init__(self, arg: str, *, api_key: str | None = None, **options: Any):
        super().__init__(arg, api_key=api_key or os.environ.get("THINKRM_API_KEY") or None, **options)

    def _payload(self, items):
        return {"items": [{"prompt": p, "response": r} for p, r in items], "analysis": False}

    def _parse(self, body, n):
        scores = body["scores"]
        if not isinstance(scores, list):
            raise ValueError("'scores' must be a list")
        return scores
