"""One OpenAI-compatible chat-completions client for every LLM-backed stage.

The judge, the LLM structurer and the preference-dataset builder all talk to models through `LLMClient`, so
the things that make paid calls safe live in one place:

* bounded concurrency (an `asyncio.Semaphore`), so a big job does not flood a server;
* retries with exponential backoff (and the server's `Retry-After`) on 429, 5xx, timeouts and connect
  errors, because those are transient on every real server; anything else fails fast with a clear message
  (`LLMConnectionError`, `LLMAuthError`, `ContextOverflowError`, `LLMError`);
* an on-disk SQLite cache keyed by model, messages, sampling parameters and a *sample index*: a rerun after
  a crash costs nothing, and the k-th sampled vote is cached separately from the j-th so repeated votes stay
  distinct instead of collapsing onto one cached answer;
* token accounting from the server's `usage`, per stage, so reports can say what each stage cost;
* `response_format` JSON schema where the server accepts it, dropped (and remembered as unsupported) when
  the server rejects the field, so callers always validate the text with a strict parser anyway;
* `ask_until_valid`, the one "ask again while the answer does not parse" loop of the judge, the batch
  structurer and the LLM summaries, with one retry-temperature rule (`retry_temperature`).

Configuration comes from arguments or the environment (`THINKRM_LLM_BASE_URL`, `THINKRM_LLM_API_KEY`,
`THINKRM_LLM_MODEL`). httpx is imported only when a client is opened.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

ENV_BASE_URL = "THINKRM_LLM_BASE_URL"
ENV_API_KEY = "THINKRM_LLM_API_KEY"
ENV_MODEL = "THINKRM_LLM_MODEL"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# Phrases servers use when a prompt does not fit (vLLM, SGLang, OpenAI, transformers, llama.cpp).
_OVERFLOW_HINTS = ("context length", "context_length", "maximum context", "max_model_len", "too long",
                   "exceeds the model", "context window", "max_position_embeddings", "longer than")
_FORMAT_HINTS = ("response_format", "json_schema", "guided", "structured output")

# Retries of an invalid answer sample at least this hot; see `retry_temperature`.
RETRY_TEMPERATURE = 0.7

T = TypeVar("T")
V = TypeVar("V")


class LLMError(RuntimeError):
    """An LLM call failed in a way retrying will not fix; the message says what to change."""


class LLMConnectionError(LLMError, ConnectionError):
    """The server could not be reached (or kept failing) after every retry."""


class LLMAuthError(LLMError):
    """The server refused the API key (401/403)."""


class ContextOverflowError(LLMError):
    """The request does not fit the model's context window."""


@dataclass
class LLMConfig:
    """Where and how to call a chat model. Empty fields fall back to the `THINKRM_LLM_*` environment."""

    base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1
    api_key: str | None = None
    model: str | None = None
    concurrency: int = 8  # requests in flight at once
    timeout: float = 120.0  # seconds per request
    max_retries: int = 5  # for 429/5xx/timeouts/connect errors
    backoff: float = 1.0  # first retry delay in seconds; doubles each retry (with jitter)
    cache: str | None = None  # SQLite path; None disables caching

    def resolved(self) -> LLMConfig:
        base_url = self.base_url or os.environ.get(ENV_BASE_URL)
        model = self.model or os.environ.get(ENV_MODEL)
        if not base_url:
            raise LLMError(f"no LLM server configured: pass --base-url or set {ENV_BASE_URL} "
                           "(an OpenAI-compatible endpoint such as http://127.0.0.1:8000/v1)")
        if not model:
            raise LLMError(f"no LLM model configured: pass --model or set {ENV_MODEL}")
        if self.concurrency < 1:
            raise LLMError("concurrency must be >= 1")
        return LLMConfig(base_url=base_url.rstrip("/"), api_key=self.api_key or os.environ.get(ENV_API_KEY),
                         model=model, concurrency=self.concurrency, timeout=self.timeout,
                         max_retries=self.max_retries, backoff=self.backoff, cache=self.cache)


@dataclass
class Completion:
    """One chat completion. `cached` completions cost nothing but still report the tokens they once used."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False


@dataclass
class Usage:
    """Calls and tokens of one stage. `paid_*` exclude cache hits; the plain counts include them."""

    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    paid_prompt_tokens: int = 0
    paid_completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, c: Completion) -> None:
        self.calls += 1
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens
        if c.cached:
            self.cache_hits += 1
        else:
            self.paid_prompt_tokens += c.prompt_tokens
            self.paid_completion_tokens += c.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "tokens": self.tokens}


class _Cache:
    """Completions on disk, one row per request key. WAL mode so concurrent runs do not block each other."""

    def __init__(self, path: str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._lock = threading.Lock()

    def get(self, key: str) -> Completion | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM completions WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return Completion(**{**json.loads(row[0]), "cached": True})

    def put(self, key: str, c: Completion) -> None:
        value = json.dumps({"text": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                            "completion_tokens": c.completion_tokens})
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO completions (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def request_key(base_url: str, model: str, messages: list[dict[str, Any]], params: dict[str, Any],
                sample: int) -> str:
    """Cache key of one sampled answer. The server is part of it: two endpoints may serve different weights
    under the same model name, and build-pairs gives all its generators one cache file."""
    blob = json.dumps({"base_url": base_url, "model": model, "messages": messages, "params": params,
                       "sample": sample},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class LLMClient:
    """An async chat-completions client; use as `async with LLMClient(cfg) as llm: await llm.chat(...)`.

    `usage` maps a stage name (the `stage=` of each call) to its `Usage`. `json_schema_supported` starts as
    None (unknown) and becomes False after the server rejects `response_format`, so later calls skip it;
    `seed_supported` likewise for `seed`.
    """

    config: LLMConfig
    usage: dict[str, Usage] = field(default_factory=dict)
    json_schema_supported: bool | None = None
    seed_supported: bool = True

    def __post_init__(self) -> None:
        self.config = self.config.resolved()
        self._http = None
        self._sem: asyncio.Semaphore | None = None
        self._cache = _Cache(self.config.cache) if self.config.cache else None

    async def __aenter__(self) -> LLMClient:
        import httpx

        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        limits = httpx.Limits(max_connections=self.config.concurrency)
        self._http = httpx.AsyncClient(base_url=self.config.base_url, headers=headers, limits=limits,
                                       timeout=httpx.Timeout(self.config.timeout,
                                                             connect=min(10.0, self.config.timeout)))
        self._sem = asyncio.Semaphore(self.config.concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()
        self._http = None
        if self._cache is not None:
            self._cache.close()

    def stage_usage(self, stage: str) -> Usage:
        return self.usage.setdefault(stage, Usage())

    async def chat(self, messages: list[dict[str, Any]], *, temperature: float = 0.0, top_p: float = 1.0,
                   max_tokens: int = 1024, sample: int = 0, stage: str = "default",
                   json_schema: dict[str, Any] | None = None, model: str | None = None) -> Completion:
        """One completion, from the cache when this exact request (and sample index) was answered before.

        `json_schema` is `{"name": ..., "schema": {...}}`; it is sent as `response_format` unless the server
        has rejected that field before. `sample` distinguishes repeated samples of the same request: it is
        part of the cache key and, at temperature > 0, is sent as the `seed` so servers that honour seeds
        give reproducible votes.
        """
        if self._http is None:
            raise LLMError("LLMClient used outside `async with`")
        model = model or self.config.model
        params = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        if json_schema is not None:
            params["json_schema"] = json_schema
        key = request_key(self.config.base_url, model, messages, params, sample)
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            self.stage_usage(stage).add(hit)
            return hit
        body: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature,
                                "top_p": top_p, "max_tokens": max_tokens}
        if temperature > 0 and self.seed_supported:
            body["seed"] = sample
        if json_schema is not None and self.json_schema_supported is not False:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": json_schema["name"], "schema": json_schema["schema"],
                                                       "strict": True}}
        async with self._sem:
            result = await self._post_with_retries(body)
        if self._cache is not None:
            self._cache.put(key, result)
        self.stage_usage(stage).add(result)
        return result

    async def _post_with_retries(self, body: dict[str, Any]) -> Completion:
        import httpx

        url = f"{self.config.base_url}/chat/completions"
        last = ""
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                resp = await self._http.post("/chat/completions", json=body)
            except httpx.TimeoutException:
                last = f"timed out after {self.config.timeout:g}s"
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
                last = f"cannot connect ({type(e).__name__}: {e})"
            else:
                if resp.status_code == 200:
                    return self._parse(resp, url)
                detail = _error_detail(resp)
                low = detail.lower()
                if resp.status_code in (401, 403):
                    raise LLMAuthError(f"{url} refused the API key (HTTP {resp.status_code}: {detail}); "
                                       f"check --api-key / {ENV_API_KEY}")
                if resp.status_code in (400, 413, 422) and "response_format" in body and \
                        any(h in low for h in _FORMAT_HINTS):
                    # Not a failure of the server: re-send at once without the field, as a fresh attempt.
                    self.json_schema_supported = False
                    body = {k: v for k, v in body.items() if k != "response_format"}
                    continue
                if resp.status_code in (400, 422) and "seed" in body and "seed" in low:
                    self.seed_supported = False  # votes stay distinct through the cache key regardless
                    body = {k: v for k, v in body.items() if k != "seed"}
                    continue
                if resp.status_code in (400, 413, 422) and any(h in low for h in _OVERFLOW_HINTS):
                    raise ContextOverflowError(f"{url}: the request does not fit the model's context window "
                                               f"(HTTP {resp.status_code}: {detail})")
                if resp.status_code == 404:
                    raise LLMError(f"{url} returned 404 ({detail}); is the base URL right (it usually ends in "
                                   f"/v1) and is model '{body['model']}' served there?")
                if resp.status_code not in RETRY_STATUS:
                    raise LLMError(f"{url} rejected the request (HTTP {resp.status_code}: {detail})")
                last = f"HTTP {resp.status_code}: {detail}"
                retry_after = _retry_after(resp)
            if attempt >= self.config.max_retries:
                raise LLMConnectionError(f"{url} failed after {attempt + 1} attempts; last error: {last}")
            delay = self.config.backoff * 2 ** attempt * (0.5 + random.random())
            await asyncio.sleep(min(60.0, max(delay, retry_after or 0.0)))
            attempt += 1

    def _parse(self, resp: Any, url: str) -> Completion:
        try:
            data = resp.json()
            choice = data["choices"][0]
            message = choice["message"]
            text = message.get("content") or ""
            # Servers with a reasoning parser (vLLM, SGLang) return the thinking apart from the answer; the
            # pipeline needs it, in the `<think>` form the rest of thinkrm reads.
            thinking = message.get("reasoning_content") or message.get("reasoning")
            if isinstance(thinking, str) and thinking.strip():
                text = f"<think>\n{thinking.strip()}\n</think>\n{text}"
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise LLMError(f"{url} answered with something that is not a chat completion: "
                           f"{resp.text[:200]!r}") from None
        usage = data.get("usage") or {}
        return Completion(text=text, finish_reason=choice.get("finish_reason"),
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0))


def _error_detail(resp: Any) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300].strip() or resp.reason_phrase
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message", data)))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:300]
    return str(data)[:300]


def _retry_after(resp: Any) -> float | None:
    try:
        return float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None


async def gather_limited(aws: Iterable[Awaitable[T]]) -> list[T]:
    """`asyncio.gather` that cancels the siblings when one fails, so a fatal error stops the job at once."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def retry_temperature(temperature: float, attempt: int) -> float:
    """The temperature of attempt `attempt` (0 = first ask) at a caller's `temperature`.

    The first ask uses the caller's temperature; every re-ask after an invalid answer uses
    `max(temperature, RETRY_TEMPERATURE)`. Why: re-asking the same messages at temperature 0 mostly gets the
    same invalid answer back (greedy decoding is deterministic on most servers), so a retry must sample to
    have a chance of differing; taking the max never makes a caller who already samples hotter any colder.
    """
    return temperature if attempt == 0 else max(temperature, RETRY_TEMPERATURE)


@dataclass
class Answer(Generic[V]):
    """What `ask_until_valid` got: the parsed `value` (None: no attempt was valid) and every completion."""

    value: V | None
    completions: list[Completion]

    @property
    def attempts(self) -> int:
        return len(self.completions)

    @property
    def last(self) -> Completion:
        return self.completions[-1]


async def ask_until_valid(llm: LLMClient, messages: list[dict[str, Any]], parse: Callable[[str], V | None], *,
                          retries: int, temperature: float = 0.0, sample: int = 0,
                          **chat_options: Any) -> Answer[V]:
    """Ask, and re-ask up to `retries` times while `parse(text)` returns None.

    Attempt `k` is sent at `retry_temperature(temperature, k)` with sample index `sample + k`, so every
    attempt is its own cache entry (a rerun replays the same attempts for free) and, at temperature > 0, its
    own seed. `chat_options` go to `LLMClient.chat` (stage, max_tokens, top_p, json_schema, ...).
    """
    completions: list[Completion] = []
    for attempt in range(retries + 1):
        c = await llm.chat(messages, temperature=retry_temperature(temperature, attempt),
                           sample=sample + attempt, **chat_options)
        completions.append(c)
        value = parse(c.text)
        if value is not None:
            return Answer(value, completions)
    return Answer(None, completions)
