"""Gated thinking rewards for RL: the thinking score only shapes answers that are already right.

`gated(r_v, r_t, alpha) = r_v * (1 - alpha + alpha * sigmoid(r_t))`, with r_v the 0/1 verifier result
(`thinkrm.verify`) and r_t the raw thinking-reward score of the reasoning (any `thinkrm.scoring` spec, local
or remote). Why gated: a reward model over reasoning can be gamed, so it must never make a wrong answer
worth anything (wrong -> 0); among right answers it moves the reward within [1 - alpha, 1], preferring
cleaner reasoning without ever outweighing correctness.

`ThinkingReward` computes this over a batch and is directly a TRL `reward_funcs` entry
(`(prompts, completions, **kwargs) -> list[float | None]`); `AsyncThinkingReward` is the same as a coroutine,
which TRL runs on its event loop next to other async rewards. verl and OpenRLHF adapters live in
`thinkrm.verl_reward` and `thinkrm.openrlhf_reward`.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .formatting import Item
from .trace import split_response

GOLD_COLUMNS = ("answer", "solution", "gold")


def sigmoid(x: float) -> float:
    """Logistic function that never overflows: exp is only taken of a non-positive number."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def gated(r_v: float, r_t: float, alpha: float = 0.2) -> float:
    """`r_v * (1 - alpha + alpha * sigmoid(r_t))`: 0 for a wrong answer, in [1 - alpha, 1] for a right one."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if r_v == 0:  # a wrong answer gets nothing, whatever its score (even NaN or inf)
        return 0.0
    if math.isnan(r_t):
        raise ValueError("r_t is NaN: the thinking scorer returned no usable score")
    return r_v * (1.0 - alpha + alpha * sigmoid(r_t))


@dataclass
class RewardBatch:
    """One batch of rewards with its parts, for logging: r_t is None where it was not computed."""

    rewards: list[float | None]
    r_v: list[float | None]
    r_t: list[float | None]


def _text(content: Any) -> str:
    """A message's text: plain strings, or the text parts of a multimodal content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and p.get("type", "text") == "text")
    return "" if content is None else str(content)


def prompt_text(prompt: str | Sequence[dict]) -> str:
    """The problem a TRM should read: a standard prompt as is, or the last user turn of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [_text(m.get("content")) for m in prompt if m.get("role") == "user"]
    return users[-1] if users else "\n".join(_text(m.get("content")) for m in prompt)


def completion_text(completion: str | Sequence[dict]) -> str:
    """A completion as one string: standard text, or the assistant turns of a conversational completion."""
    if isinstance(completion, str):
        return completion
    return "".join(_text(m.get("content")) for m in completion if m.get("role", "assistant") == "assistant")


class ThinkingReward:
    """The gated reward over a batch, usable directly as a TRL reward function.

    The scorer is loaded on first use (so building the reward is cheap and the object can be handed to a
    trainer before any model is loaded). Only correct answers are scored by default: a wrong answer's reward
    is 0 whatever its score, and scoring is the expensive part (`score_all=True` scores every completion,
    e.g. to log r_t for wrong ones too). Items without a gold answer get None (TRL treats that as "no
    reward from this function").
    """

    __name__ = "thinking_reward"  # the name TRL logs this reward under

    def __init__(self, scorer: str | Any = "lite", alpha: float = 0.2, *, timeout: float = 5.0,
                 workers: int | None = None, gold_columns: Sequence[str] = GOLD_COLUMNS,
                 score_all: bool = False,
                 scorer_options: dict[str, Any] | Sequence[tuple[str, Any]] | None = None):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.scorer_spec = scorer
        self.alpha = alpha
        self.timeout = timeout
        self.workers = workers
        self.gold_columns = tuple(gold_columns)
        self.score_all = score_all
        self.scorer_options = dict(scorer_options or {})
        self._scorer = None
        self._lock = threading.Lock()

    @property
    def scorer(self):
        with self._lock:
            if self._scorer is None:
                from .scoring import load_scorer

                self._scorer = load_scorer(self.scorer_spec, **self.scorer_options)
            return self._scorer

    def compute(self, prompts: Sequence[str], responses: Sequence[str],
                golds: Sequence[str | None]) -> RewardBatch:
        """Rewards for plain-text prompts and responses against gold answers (None: no gold, no reward)."""
        from .verify import verify_batch

        if not len(prompts) == len(responses) == len(golds):
            raise ValueError(f"batch sizes differ: {len(prompts)} prompts, {len(responses)} responses, "
                             f"{len(golds)} gold answers")
        known = [i for i, g in enumerate(golds) if g is not None]
        r_v: list[float | None] = [None] * len(responses)
        for i, ok in zip(known, verify_batch([responses[i] for i in known], [str(golds[i]) for i in known],
                                             timeout=self.timeout, workers=self.workers)):
            r_v[i] = 1.0 if ok else 0.0
        to_score = [i for i in known if self.score_all or r_v[i] == 1.0]
        r_t: list[float | None] = [None] * len(responses)
        if to_score:
            items = [Item(prompts[i], split_response(responses[i])[0]) for i in to_score]
            for i, s in zip(to_score, self.scorer.score(items)):
                r_t[i] = float(s)
        # An unscored item is a wrong one, whose reward is 0 whatever r_t would have been.
        rewards = [None if v is None else gated(v, r_t[i] if r_t[i] is not None else 0.0, self.alpha)
                   for i, v in enumerate(r_v)]
        return RewardBatch(rewards=rewards, r_v=r_v, r_t=r_t)

    def gold_from(self, kwargs: dict[str, Any], n: int) -> list[str | None]:
        """The gold answers of a TRL batch: the first configured dataset column TRL passed along."""
        for col in self.gold_columns:
            if col in kwargs and kwargs[col] is not None:
                golds = list(kwargs[col])
                if len(golds) != n:
                    raise ValueError(f"column '{col}' has {len(golds)} values for {n} completions")
                return [None if g is None else str(g) for g in golds]
        raise ValueError("no gold answer column in the batch: expected one of "
                         f"{', '.join(self.gold_columns)} "
                         f"(dataset columns passed: {', '.join(sorted(kwargs)) or 'none'})")

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 **kwargs: Any) -> list[float | None]:
        """TRL reward function: standard or conversational prompts/completions, gold from a dataset column."""
        golds = self.gold_from(kwargs, len(completions))
        batch = self.compute([prompt_text(p) for p in prompts], [completion_text(c) for c in completions],
                             golds)
        _log(batch, kwargs.get("log_extra"), kwargs.get("log_metric"))
        return batch.rewards


class AsyncThinkingReward(ThinkingReward):
    """`ThinkingReward` as a coroutine, for TRL's async reward path (run on its event-loop thread).

    The work runs in a thread so the loop stays free for other async rewards; verification still gets its
    hard timeouts there because `verify_batch` always uses worker processes.
    """

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                       **kwargs: Any) -> list[float | None]:
        return await asyncio.to_thread(ThinkingReward.__call__, self, prompts, completions, **kwargs)


def _log(batch: RewardBatch, log_extra: Callable | None, log_metric: Callable | None) -> None:
    """Per-completion r_v / r_t columns and batch means, through the hooks TRL passes to reward functions."""
    if log_extra is not None:
        log_extra("r_v", list(batch.r_v))
        log_extra("r_t", list(batch.r_t))
    if log_metric is not None:
        v = [x for x in batch.r_v if x is not None]
        t = [x for x in batch.r_t if x is not None]
        if v:
            log_metric("thinking_reward/r_v", sum(v) / len(v))
        if t:
            log_metric("thinking_reward/r_t", sum(t) / len(t))


def thinking_reward(scorer: str | Any = "lite", alpha: float = 0.2, *, asynchronous: bool = False,
                    **options: Any) -> ThinkingReward:
    """A TRL-ready gated reward: `GRPOTrainer(reward_funcs=[thinking_reward("lite")], ...)`."""
    cls = AsyncThinkingReward if asynchronous else ThinkingReward
    return cls(scorer, alpha, **options)


_shared: dict[tuple, ThinkingReward] = {}
_shared_lock = threading.Lock()


def shared_reward(scorer: str, alpha: float = 0.2, **options: Any) -> ThinkingReward:
    """One `ThinkingReward` per (scorer, alpha, options) per process, for frameworks that call a plain
    function per sample or batch (verl, OpenRLHF): the scorer is loaded once, not on every call."""
    key = (scorer, alpha, tuple(sorted(options.items())))
    with _shared_lock:
        if key not in _shared:
            _shared[key] = ThinkingReward(scorer, alpha, **options)
        return _shared[key]
