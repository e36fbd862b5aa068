"""Gated thinking rewards for RL: the thinking score only shapes answers that are already right.

`r = r_v * (1 - alpha + alpha * sigmoid(z))`, with r_v the 0/1 verifier result (`thinkrm.verifiers`, math by
default) and z the thinking-reward score of the reasoning after normalisation. Why gated: a reward model
over reasoning can be gamed, so it must never make a wrong answer worth anything (wrong -> 0); among right
answers it moves the reward within [1 - alpha, 1], preferring cleaner reasoning without ever outweighing
correctness.

Why normalised: a Bradley-Terry reward model fixes score differences, not levels, so a raw score can sit
anywhere; TRM-lite's raw scores on correct traces are around +5..+30, where sigmoid is ~1 and the reward
equals r_v for every correct answer. `normalize` picks what z is:

* `calibrated`: z = (r_t - center) / scale with the scorer's calibration (`thinkrm.calibration`), measured on
  correct reference traces: a typical correct trace gets sigmoid ~0.5, the quartiles ~0.34 / ~0.66. Scores
  keep their meaning across groups, and two near-identical traces get near-identical rewards.
* `group`: z = r_t standardised over the correct completions of one prompt (a GRPO group) in the batch.
  Scale-free for any scorer, but it stretches whatever differences a group has to unit spread, noise too.
* `none`: z = r_t, the formula as written for a scorer whose raw scores are already centred.
* `auto` (the default of `ThinkingReward`): `calibrated` when the scorer carries a calibration, else `group`.
  Per-sample adapters (verl, OpenRLHF) see no group and default to `calibrated`.

`ThinkingReward` computes this over a batch and is directly a TRL `reward_funcs` entry
(`(prompts, completions, **kwargs) -> list[float | None]`); `AsyncThinkingReward` is the same as a coroutine.
verl and OpenRLHF adapters live in `thinkrm.verl_reward` and `thinkrm.openrlhf_reward`.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import statistics
import threading
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from .calibration import Calibration, parse_calibration
from .formatting import Item
from .io import GOLD_FIELDS, first_field
from .scoring import checked_scores
from .trace import split_response

GOLD_COLUMNS = GOLD_FIELDS  # dataset columns holding the gold answer, first present wins (`thinkrm.io`)
NORMALIZE = ("auto", "calibrated", "group", "none")
# A group's thinking term "reorders" it when its correct completions' rewards differ by more than this
# (1/200 of the alpha span at alpha = 0.2): below it the difference is float noise, not a preference.
REORDER_EPS = 1e-3


def sigmoid(x: float) -> float:
    """Logistic function that never overflows: exp is only taken of a non-positive number."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def _check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")


def gated(r_v: float, r_t: float, alpha: float = 0.2, *, normalize: str = "none",
          calibration: Calibration | None = None) -> float:
    """`r_v * (1 - alpha + alpha * sigmoid(z))`: 0 for a wrong answer, in [1 - alpha, 1] for a right one.

    z is r_t as given (`normalize="none"`) or calibrated (`"calibrated"`, needs `calibration`). Group
    normalisation needs the whole group: use `gated_batch`.
    """
    _check_alpha(alpha)
    _check_normalize(normalize)
    if normalize in ("group", "auto"):
        raise ValueError(f"normalize={normalize!r} needs the whole group: use gated_batch")
    if r_v == 0:  # a wrong answer gets nothing, whatever its score (even NaN or inf)
        return 0.0
    if math.isnan(r_t):
        raise ValueError("r_t is NaN: the thinking scorer returned no usable score")
    if normalize == "calibrated":
        if calibration is None:
            raise ValueError("normalize='calibrated' needs a calibration")
        r_t = calibration.apply(r_t)
    return r_v * (1.0 - alpha + alpha * sigmoid(r_t))


def resolve_normalize(normalize: str, calibration: Calibration | None, scorer: str, *, fix: str) -> str:
    """`normalize` with "auto" decided ("calibrated" when a calibration is known, else "group"); "calibrated"
    without a calibration is an error naming the scorer and `fix`, how the caller supplies one."""
    _check_normalize(normalize)
    if normalize == "auto":
        return "calibrated" if calibration is not None else "group"
    if normalize == "calibrated" and calibration is None:
        raise ValueError(f"normalize='calibrated' but scorer {scorer!r} has no calibration: pass {fix}, "
                         "measured with `thinkrm calibrate` on correct traces; or use normalize='group' "
                         "where whole groups are scored together")
    return normalize


def group_keys(prompts: Sequence[Any]) -> list[Hashable]:
    """One key per prompt such that completions of the same prompt (a GRPO group) share it."""
    return [p if isinstance(p, str) else json.dumps(p, sort_keys=True, default=str) for p in prompts]


def normalize_scores(r_t: Sequence[float | None], normalize: str, *,
                     r_v: Sequence[float | None] | None = None, calibration: Calibration | None = None,
                     groups: Sequence[Hashable] | None = None) -> list[float | None]:
    """z for each raw score (None stays None). `group` standardises over the correct items (r_v == 1) of
    each group; a group with one such item, or with all of them scored alike, gets z = 0 for all."""
    _check_normalize(normalize)
    if normalize == "auto":
        raise ValueError("resolve normalize='auto' first (ThinkingReward does)")
    if normalize == "none":
        return list(r_t)
    if normalize == "calibrated":
        if calibration is None:
            raise ValueError("normalize='calibrated' needs a calibration")
        return [None if t is None else calibration.apply(t) for t in r_t]
    if groups is None or r_v is None or not len(groups) == len(r_v) == len(r_t):
        raise ValueError("normalize='group' needs r_v and one group key per item")
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, (g, v, t) in enumerate(zip(groups, r_v, r_t)):
        if v == 1.0 and t is not None:
            members[g].append(i)
    z: list[float | None] = [None] * len(r_t)
    for idx in members.values():
        xs = [r_t[i] for i in idx]
        mean = statistics.fmean(xs)
        sd = statistics.pstdev(xs) if len(xs) > 1 else 0.0
        # Differences at float-rounding level are no preference; dividing by them would invent one.
        flat = sd <= 1e-9 * max(1.0, abs(mean))
        for i in idx:
            z[i] = 0.0 if flat else (r_t[i] - mean) / sd
    return z


def gated_batch(r_v: Sequence[float | None], r_t: Sequence[float | None], alpha: float = 0.2, *,
                normalize: str = "none", calibration: Calibration | None = None,
                groups: Sequence[Hashable] | None = None) -> tuple[list[float | None], list[float | None]]:
    """Gated rewards (None where r_v is None) and the z each used, for a batch."""
    _check_alpha(alpha)
    z = normalize_scores(r_t, normalize, r_v=r_v, calibration=calibration, groups=groups)
    rewards: list[float | None] = []
    for v, zi in zip(r_v, z):
        if v is None:
            rewards.append(None)
        elif v == 0:
            rewards.append(0.0)
        else:
            if zi is None:
                raise ValueError("a correct answer has no thinking score")
            rewards.append(gated(v, zi, alpha))
    return rewards, z


def reorder_stats(rewards: Sequence[float | None], r_v: Sequence[float | None],
                  groups: Sequence[Hashable]) -> dict[str, float | int]:
    """How often the thinking term changes a group's ranking: with r_v alone every correct completion of a
    group ties; the gated reward orders them when their rewards differ by more than `REORDER_EPS`.
    Returns the groups with >= 2 correct completions, the share of them reordered, and the mean
    within-group spread (max - min) of their rewards."""
    correct: dict[Hashable, list[float]] = defaultdict(list)
    for r, v, g in zip(rewards, r_v, groups):
        if v == 1.0 and r is not None:
            correct[g].append(r)
    spreads = [max(rs) - min(rs) for rs in correct.values() if len(rs) >= 2]
    if not spreads:
        return {"groups": 0, "reordered": 0.0, "spread": 0.0}
    return {"groups": len(spreads), "reordered": sum(s > REORDER_EPS for s in spreads) / len(spreads),
            "spread": statistics.fmean(spreads)}


@dataclass
class RewardBatch:
    """One batch of rewards with its parts, for logging: r_t / z are None where not computed."""

    rewards: list[float | None]
    r_v: list[float | None]
    r_t: list[float | None]
    z: list[float | None]
    normalize: str = "none"


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


# The last user turn of a prompt rendered with a chat template (ChatML / Qwen, Llama 3, and the
# "<|user|> ... <|assistant|>" style), which is what frameworks hand reward functions as "the prompt".
_CHAT_USER = (
    re.compile(r"<\|im_start\|>user\s*\n(.*?)<\|im_end\|>", re.S),
    re.compile(r"<\|start_header_id\|>user<\|end_header_id\|>\s*(.*?)<\|eot_id\|>", re.S),
    re.compile(r"<\|user\|>\s*(.*?)(?=<\|assistant\|>|<\|end\|>|$)", re.S),
)


def problem_from_chat(prompt: str) -> str:
    """The problem inside a chat-templated prompt (its last user turn); the prompt as is when it has no
    recognised template. TRMs are trained on `problem + "\\n" + reasoning`, not on template markup."""
    for pattern in _CHAT_USER:
        turns = pattern.findall(prompt)
        if turns:
            return turns[-1].strip()
    return prompt


def recover_response(query: str, prompt: str) -> str:
    """The response part of a `query` that is the prompt as the policy saw it followed by the response.

    The prompt is usually a prefix; a tokenizer round trip may prepend a BOS token or strip padding, so the
    prompt is also searched for. A query that does not contain its prompt raises `ValueError` rather than a
    guess, because a reward for the wrong span silently corrupts training.
    """
    if query.startswith(prompt):
        return query[len(prompt):]
    at = query.find(prompt)
    if at < 0:
        raise ValueError("the query does not contain its prompt, so the response cannot be recovered; "
                         "send the prompt exactly as it appears in the query")
    return query[at + len(prompt):]


class ThinkingReward:
    """The gated reward over a batch, usable directly as a TRL reward function.

    The scorer and verifier are loaded on first use (so building the reward is cheap and the object can be
    handed to a trainer, or pickled to another process, before any model is loaded). Only correct answers
    are scored by default: a wrong answer's reward is 0 whatever its score, and scoring is the expensive part
    (`score_all=True` scores every completion, e.g. to log r_t for wrong ones too). The gold answers are the
    first of `gold_columns` (default `thinkrm.io.GOLD_FIELDS`: `gold`, `ground_truth`, `answer`, `solution`)
    that TRL passes with values. Items without a gold answer get None (TRL treats that as "no reward from
    this function").
    """

    __name__ = "thinking_reward"  # the name TRL logs this reward under

    def __init__(self, scorer: str | Any = "lite", alpha: float = 0.2, *, normalize: str = "auto",
                 calibration: Calibration | dict | str | tuple | None = None, verifier: str | Any = "math",
                 timeout: float = 5.0, workers: int | None = None,
                 gold_columns: Sequence[str] = GOLD_COLUMNS, score_all: bool = False,
                 scorer_options: dict[str, Any] | Sequence[tuple[str, Any]] | None = None):
        _check_alpha(alpha)
        _check_normalize(normalize)
        self.scorer_spec = scorer
        self.alpha = alpha
        self.normalize = normalize
        self.calibration = parse_calibration(calibration)
        self.verifier_spec = verifier
        self.timeout = timeout
        self.workers = workers
        self.gold_columns = tuple(gold_columns)
        self.score_all = score_all
        self.scorer_options = dict(scorer_options or {})
        self._scorer = None
        self._verifier = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # TRL's async GRPO and multiprocessing ship reward functions to other processes: send the recipe,
        # not loaded models, open connections or locks; the other side loads them on first use.
        state = dict(self.__dict__)
        state["_lock"] = None
        if isinstance(self.scorer_spec, str):
            state["_scorer"] = None
        if isinstance(self.verifier_spec, str):
            state["_verifier"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def scorer(self):
        with self._lock:
            if self._scorer is None:
                from .scoring import load_scorer

                self._scorer = load_scorer(self.scorer_spec, **self.scorer_options)
            return self._scorer

    @property
    def verifier(self):
        with self._lock:
            if self._verifier is None:
                from .verifiers import load_verifier

                self._verifier = load_verifier(self.verifier_spec, timeout=self.timeout, workers=self.workers)
            return self._verifier

    def resolved_normalize(self) -> tuple[str, Calibration | None]:
        """The normalisation this batch uses and its calibration (own, else the scorer's)."""
        calibration = self.calibration
        if calibration is None and self.normalize in ("auto", "calibrated"):
            calibration = getattr(self.scorer, "calibration", None)
        spec = getattr(self.scorer, "spec", self.scorer_spec)
        fix = "calibration='CENTER,SCALE' (or a checkpoint directory that records one)"
        return resolve_normalize(self.normalize, calibration, spec, fix=fix), calibration

    def compute(self, prompts: Sequence[str], responses: Sequence[str], golds: Sequence[str | None],
                groups: Sequence[Hashable] | None = None) -> RewardBatch:
        """Rewards for plain-text prompts and responses against gold answers (None: no gold, no reward).

        `groups` marks completions of the same prompt (default: equal prompts), for `normalize="group"`.
        """
        if not len(prompts) == len(responses) == len(golds):
            raise ValueError(f"batch sizes differ: {len(prompts)} prompts, {len(responses)} responses, "
                             f"{len(golds)} gold answers")
        normalize, calibration = self.resolved_normalize()
        known = [i for i, g in enumerate(golds) if g is not None]
        r_v: list[float | None] = [None] * len(responses)
        verdicts = self.verifier.verify_batch([responses[i] for i in known], [str(golds[i]) for i in known],
                                              [prompts[i] for i in known])
        for i, ok in zip(known, verdicts):
            r_v[i] = 1.0 if ok else 0.0
        to_score = [i for i in known if self.score_all or r_v[i] == 1.0]
        r_t: list[float | None] = [None] * len(responses)
        if to_score:
            items = [Item(prompts[i], split_response(responses[i])[0]) for i in to_score]
            for i, s in zip(to_score, checked_scores(self.scorer, items)):
                r_t[i] = s
        rewards, z = gated_batch(r_v, r_t, self.alpha, normalize=normalize, calibration=calibration,
                                 groups=group_keys(prompts) if groups is None else groups)
        return RewardBatch(rewards=rewards, r_v=r_v, r_t=r_t, z=z, normalize=normalize)

    def gold_from(self, kwargs: dict[str, Any], n: int) -> list[str | None]:
        """The gold answers of a TRL batch: the first configured dataset column TRL passed along."""
        col = first_field(kwargs, self.gold_columns)
        if col is not None:
            golds = list(kwargs[col])
            if len(golds) != n:
                raise ValueError(f"column '{col}' has {len(golds)} values for {n} completions")
            return [None if g is None else str(g) for g in golds]
        raise ValueError("no gold answer column in the batch: expected one of "
                         f"{', '.join(self.gold_columns)} "
                         f"(dataset columns passed: {', '.join(sorted(kwargs)) or 'none'})")

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 **kwargs: Any) -> list[float | None]:
        """TRL reward function: standard or conversational prompts/completions, gold from a dataset column.

        GRPOTrainer passes each prompt once per completion, so equal prompts mark a group."""
        golds = self.gold_from(kwargs, len(completions))
        groups = group_keys(prompts)
        batch = self.compute([prompt_text(p) for p in prompts], [completion_text(c) for c in completions],
                             golds, groups)
        _log(batch, groups, kwargs.get("log_extra"), kwargs.get("log_metric"))
        return batch.rewards


class AsyncThinkingReward(ThinkingReward):
    """`ThinkingReward` as a coroutine, for TRL's async reward path (run on its event-loop thread).

    The work runs in a thread so the loop stays free for other async rewards; verification still gets its
    hard timeouts there because the math verifier always uses worker processes off the main thread.
    """

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                       **kwargs: Any) -> list[float | None]:
        return await asyncio.to_thread(ThinkingReward.__call__, self, prompts, completions, **kwargs)


def _log(batch: RewardBatch, groups: Sequence[Hashable], log_extra: Callable | None,
         log_metric: Callable | None) -> None:
    """Per-completion r_v / r_t / z columns, batch means and how often the thinking term reordered a group,
    through the hooks TRL passes to reward functions."""
    if log_extra is not None:
        log_extra("r_v", list(batch.r_v))
        log_extra("r_t", list(batch.r_t))
        log_extra("r_t_normalized", list(batch.z))
    if log_metric is not None:
        v = [x for x in batch.r_v if x is not None]
        t = [x for x in batch.r_t if x is not None]
        if v:
            log_metric("thinking_reward/r_v", sum(v) / len(v))
        if t:
            log_metric("thinking_reward/r_t", sum(t) / len(t))
        stats = reorder_stats(batch.rewards, batch.r_v, groups)
        if stats["groups"]:
            log_metric("thinking_reward/reordered", stats["reordered"])
            log_metric("thinking_reward/spread", stats["spread"])


def thinking_reward(scorer: str | Any = "lite", alpha: float = 0.2, *, asynchronous: bool = False,
                    **options: Any) -> ThinkingReward:
    """A TRL-ready gated reward: `GRPOTrainer(reward_funcs=[thinking_reward("lite")], ...)`."""
    cls = AsyncThinkingReward if asynchronous else ThinkingReward
    return cls(scorer, alpha, **options)


def per_sample_normalize(normalize: str) -> str:
    """The normalisation for a framework that hands over one sample at a time: a group of one has no
    spread, so "group" would make the thinking term a constant; "auto" therefore means "calibrated"."""
    if normalize == "group":
        raise ValueError("normalize='group' needs the completions of a prompt together, but this framework "
                         "calls the reward one sample at a time: use 'calibrated' (with the scorer's "
                         "calibration or calibration='CENTER,SCALE') or 'none'")
    return "calibrated" if normalize == "auto" else normalize


_shared: dict[str, ThinkingReward] = {}
_shared_lock = threading.Lock()


def shared_reward(scorer: str, alpha: float = 0.2, **options: Any) -> ThinkingReward:
    """One `ThinkingReward` per (scorer, alpha, options) per process, for frameworks that call a plain
    function per sample or batch (verl, OpenRLHF): the scorer is loaded once, not on every call."""
    key = repr((scorer, alpha, sorted(options.items())))
    with _shared_lock:
        if key not in _shared:
            _shared[key] = ThinkingReward(scorer, alpha, **options)
        return _shared[key]
