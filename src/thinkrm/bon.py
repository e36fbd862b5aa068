"""Best-of-N selection with a thinking reward model, measured against the baselines that matter.

Given a pool of candidate responses per problem, Best-of-N asks: if we sample N of them, how often does a
selection rule pick a right one? Rules (`STRATEGIES`):

* `argmax`: the candidate with the highest score;
* `vote`: majority vote over final answers, answers grouped by math-verify equivalence ("0.5" = "\\frac12"),
  not string equality;
* `weighted-vote`: each answer class is weighted by the sum of softmax(score / T) over its candidates;
  by default T is `AUTO_TEMPERATURE` standard deviations of the pool's scores, so the rule does not depend
  on the scale of the scorer's raw outputs.

Baselines need no scorer: `random` (expected accuracy of a uniform pick), `shortest`, `longest` (by response
length), `oracle` (any right candidate in the subset) and `majority-vote` (the `vote` rule).

For each N, accuracy is averaged over `repeats` seeded random subsets of N candidates per problem (N capped
at the pool size); every rule sees the same subsets, so differences between rules are paired. The 95%
confidence interval is over problems (each problem's accuracy averaged over the repeats), the uncertainty
that matters when comparing rules on a fixed benchmark.

Scores are computed once per distinct (prompt, reasoning) and cached in a resumable JSONL file, because
scoring is the only expensive part; everything else runs in seconds.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .formatting import Item
from .io import (
    GOLD_FIELDS,
    PROMPT_FIELDS,
    RESPONSE_FIELDS,
    InputError,
    ResumableJsonl,
    atomic_write,
    first_field,
    iter_records,
)
from .scoring import score_chunks
from .trace import split_response

STRATEGIES = ("argmax", "vote", "weighted-vote")
BASELINES = ("random", "shortest", "longest", "oracle", "majority-vote")
DEFAULT_NS = (1, 2, 4, 8, 16)
Z95 = 1.959963984540054
# `auto` temperature in standard deviations of the pool's scores. A reward model that picks worse than
# majority vote on its own (TRM-lite's argmax trails the vote at N >= 4) should not let a somewhat higher
# score outvote two candidates that agree: at 4 sigma a candidate's weight moves by e^0.25 per sigma of
# score, so one outweighs two only from 4 ln 2 = 2.8 sigma above both; the scores settle ties and near-ties.
# On a validation split of training problems (five trained TRM-lite models, both pools, N = 2..9) 3 sigma and
# up never did worse than 1 sigma and beat majority vote at N <= 4, where 1 sigma did not always;
# docs/bon-and-rl.md has the table.
AUTO_TEMPERATURE = 4.0


@dataclass
class Candidate:
    """One candidate response to a problem; `correct` is filled by the verifier when the input lacks it."""

    problem_id: str
    prompt: str
    response: str
    correct: bool | None = None
    gold: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reasoning(self) -> str:
        return split_response(self.response)[0]

    @property
    def key(self) -> str:
        """Cache key of the scorer input: identical (prompt, reasoning) pairs are scored once."""
        h = hashlib.sha1(usedforsecurity=False)
        h.update(self.prompt.encode())
        h.update(b"\x00")
        h.update(self.reasoning.encode())
        return h.hexdigest()[:20]


def load_candidates(path: str | Path) -> list[Candidate]:
    """Read the candidate format (`problem_id`, `prompt`, `response`, optional `correct`, `gold`).

    Field names follow the table in `thinkrm.io`: the prompt may be any of `PROMPT_FIELDS` (`prompt`,
    `question`, `problem`), the response any of `RESPONSE_FIELDS` (`response`, `completion`), the gold answer
    any of `GOLD_FIELDS` (`gold`, `ground_truth`, `answer`, `solution`); the first with a value wins. Every
    row needs `correct` or a gold answer; errors name the file, line and field.
    """
    out = []
    for line, rec in iter_records(path):
        if isinstance(rec, InputError):
            raise rec
        out.append(candidate_from_record(rec, file=str(path), line=line))
    if not out:
        raise InputError("no candidates in file", file=path)
    return out


def candidate_from_record(rec: dict[str, Any], *, file: str | None = None,
                          line: int | None = None) -> Candidate:
    def need(names: tuple[str, ...], types: type | tuple[type, ...], label: str) -> tuple[str, Any]:
        name = first_field(rec, names)
        if name is None:
            raise InputError("missing" if len(names) == 1 else f"missing (one of {', '.join(names)})",
                             file=file, line=line, field=names[0])
        v = rec[name]
        if isinstance(v, bool) or not isinstance(v, types):
            raise InputError(f"expected {label}, got {type(v).__name__}", file=file, line=line, field=name)
        return name, v

    _, pid = need(("problem_id",), (str, int), "a string or integer")
    prompt_key, prompt = need(PROMPT_FIELDS, str, "a string")
    response_key, response = need(RESPONSE_FIELDS, str, "a string")
    correct = rec.get("correct")
    if correct is not None and not isinstance(correct, bool):
        raise InputError(f"expected true/false, got {correct!r}", file=file, line=line, field="correct")
    gold_key = first_field(rec, GOLD_FIELDS)
    gold = None if gold_key is None else rec[gold_key]
    if gold is not None and (isinstance(gold, bool) or not isinstance(gold, (str, int, float))):
        raise InputError(f"expected a string or number, got {type(gold).__name__}", file=file, line=line,
                         field=gold_key)
    if correct is None and gold is None:
        others = ", ".join(GOLD_FIELDS[1:])
        raise InputError(f"needs 'correct' or 'gold' (or another gold answer field: {others}) to verify the "
                         "answer", file=file, line=line)
    used = {"problem_id", prompt_key, response_key, "correct", gold_key}
    extra = {k: v for k, v in rec.items() if k not in used}
    return Candidate(str(pid), prompt, response, correct, None if gold is None else str(gold), extra)


def ns_to_pool_size(candidates: Iterable[Candidate]) -> list[int]:
    """Every N worth reporting for a pool: the powers of two below its largest problem's candidate count, and
    that count itself (the whole pool)."""
    from collections import Counter

    size = max(Counter(c.problem_id for c in candidates).values())
    return [n for n in (1, 2, 4, 8, 16, 32) if n < size] + [size]


def _slug(spec: str) -> str:
    """A file-name-safe cache name; the hash keeps long specs that share a prefix apart."""
    digest = hashlib.sha1(spec.encode("utf-8")).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', spec).strip('_')[:60] or 'scorer'}-{digest}"


def score_candidates(candidates: Sequence[Candidate], scorer: Any, *, cache: str | Path | None = None,
                     batch_size: int = 64, on_progress: Callable[[int, int], None] | None = None
                     ) -> tuple[list[float], dict[str, Any]]:
    """Scores of all candidates, each distinct scorer input scored once; `cache` makes it resumable."""
    keys = [c.key for c in candidates]
    known: dict[str, float] = {}
    store = ResumableJsonl(cache, key="key") if cache is not None else None
    try:
        if store is not None:
            for rec in store.records():
                known[str(rec["key"])] = float(rec["score"])
        first = {}
        for c, k in zip(candidates, keys):
            if k not in known:
                first.setdefault(k, c)
        todo = list(first.items())
        cached = len(set(keys) & known.keys())
        start = time.perf_counter()
        chunks = (todo[b:b + batch_size] for b in range(0, len(todo), batch_size))
        done = 0
        for chunk, scores in score_chunks(scorer, chunks, lambda ch: [Item(c.prompt, c.reasoning) for _, c in ch]):
            known.update((k, s) for (k, _), s in zip(chunk, scores))
            if store is not None:
                store.add_many({"key": k, "score": known[k]} for k, _ in chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, len(todo))
        seconds = time.perf_counter() - start
    finally:
        if store is not None:
            store.close()
    per_ms = round(1000 * seconds / len(todo), 3) if todo else None
    return [known[k] for k in keys], {"scored": len(todo), "cached": cached, "seconds": round(seconds, 3),
                                      "per_candidate_ms": per_ms}


@dataclass
class _Problem:
    correct: np.ndarray  # bool, per candidate
    scores: np.ndarray
    lengths: np.ndarray
    classes: np.ndarray  # answer class id per candidate, -1 for no answer


def _softmax_weights(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = (scores - scores.max()) / temperature
    w = np.exp(z)
    return w / w.sum()


def _vote(p: _Problem, idx: np.ndarray, rng: np.random.Generator, weights: np.ndarray | None) -> float:
    """Correctness of the answer class with the most (weighted) votes; ties broken at random."""
    cls = p.classes[idx]
    has = cls >= 0
    if not has.any():  # nobody stated an answer: the vote degenerates to a random pick
        return float(p.correct[idx].mean())
    w = np.ones(len(idx)) if weights is None else weights
    totals: dict[int, float] = {}
    for c, wi in zip(cls[has], w[has]):
        totals[int(c)] = totals.get(int(c), 0.0) + float(wi)
    best = max(totals.values())
    tied = [c for c, t in totals.items() if t >= best - 1e-12 * max(1.0, abs(best))]
    winner = tied[int(rng.integers(len(tied)))] if len(tied) > 1 else tied[0]
    members = idx[cls == winner]
    return float(p.correct[members].mean())  # members of one class agree; averaging guards grader noise


def _evaluate(problem: _Problem, idx: np.ndarray, rng: np.random.Generator, strategies: Sequence[str],
              temperature: float) -> dict[str, float]:
    c = problem.correct
    # argmin/argmax break ties by position, and subsets come in random order, so ties are broken at random.
    out = {
        "random": float(c[idx].mean()),
        "shortest": float(c[idx[np.argmin(problem.lengths[idx])]]),
        "longest": float(c[idx[np.argmax(problem.lengths[idx])]]),
        "oracle": float(c[idx].any()),
        "majority-vote": _vote(problem, idx, rng, None),
    }
    for s in strategies:
        if s == "argmax":
            out[s] = float(c[idx[np.argmax(problem.scores[idx])]])
        elif s == "vote":
            out[s] = out["majority-vote"]
        elif s == "weighted-vote":
            out[s] = _vote(problem, idx, rng, _softmax_weights(problem.scores[idx], temperature))
    return out


def _stats(per_problem: np.ndarray) -> dict[str, float]:
    mean = float(per_problem.mean())
    half = Z95 * float(per_problem.std(ddof=1)) / math.sqrt(len(per_problem)) if len(per_problem) > 1 else 0.0
    return {"mean": round(mean, 5), "ci_low": round(mean - half, 5), "ci_high": round(mean + half, 5)}


def evaluate_bon(problems: Sequence[_Problem], *, strategies: Sequence[str] = STRATEGIES,
                 ns: Iterable[int] = DEFAULT_NS, repeats: int = 5, seed: int = 0,
                 temperature: float = 1.0) -> dict[str, Any]:
    """Accuracy per rule and N (mean and 95% CI over problems), plus paired differences of the key rules."""
    max_pool = max(len(p.correct) for p in problems)
    eff_ns = sorted({min(int(n), max_pool) for n in ns})
    names = [*strategies, *BASELINES]
    acc: dict[str, dict[str, Any]] = {name: {} for name in names}
    diffs: dict[str, dict[str, Any]] = {}
    for n in eff_ns:
        per = {name: np.zeros(len(problems)) for name in names}
        for r in range(repeats):
            # Separate streams: the subsets drawn must not depend on how many ties the rules broke.
            subsets, ties = np.random.default_rng([seed, n, r]), np.random.default_rng([seed, n, r, 1])
            for j, p in enumerate(problems):
                k = min(n, len(p.correct))
                idx = subsets.permutation(len(p.correct))[:k]
                for name, v in _evaluate(p, idx, ties, strategies, temperature).items():
                    per[name][j] += v
        for name in names:
            per[name] /= repeats
            acc[name][str(n)] = _stats(per[name])
        pairs = [("argmax", "random"), ("weighted-vote", "majority-vote"), ("argmax", "majority-vote")]
        for a, b in pairs:
            if a in per:
                diffs.setdefault(f"{a} - {b}", {})[str(n)] = _stats(per[a] - per[b])
    return {"ns": eff_ns, "strategies": {s: acc[s] for s in strategies},
            "baselines": {b: acc[b] for b in BASELINES}, "differences": diffs}


def best_of_n(candidates: Sequence[Candidate | dict[str, Any]], scorer: Any = "lite", *,
              strategies: Sequence[str] = STRATEGIES, ns: Iterable[int] = DEFAULT_NS, repeats: int = 5,
              seed: int = 0, temperature: float | str = "auto", cache_dir: str | Path | None = None,
              verify_timeout: float = 5.0, workers: int | None = None, verifier: Any = "math",
              on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Best-of-N accuracy of `scorer` (a spec like "lite" or a `Scorer`) on a candidate pool.

    Candidates without `correct` are verified against `gold` by `verifier` (a spec of
    `thinkrm.verifiers.load_verifier`, "math" by default, or a `Verifier`). With `cache_dir`, scores go to
    `cache_dir/scores-<scorer>-<hash of the spec>.jsonl` and a rerun scores only what is missing. Returns a
    JSON-ready dict:
    accuracy per strategy and baseline per N, paired differences, and where the time went.
    """
    from .scoring import load_scorer
    from .verifiers import load_verifier
    from .verify import answer_classes, extract_answer

    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategy {unknown[0]!r}; expected one of {', '.join(STRATEGIES)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    ns = [int(n) for n in ns]
    if not ns or min(ns) < 1:
        raise ValueError(f"--n values must be positive integers, got {ns}")
    if temperature != "auto" and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0 or 'auto', got {temperature!r}")
    cands = [c if isinstance(c, Candidate) else candidate_from_record(c, line=i)
             for i, c in enumerate(candidates, 1)]
    if not cands:
        raise ValueError("no candidates")
    timings: dict[str, Any] = {}

    own_verifier = isinstance(verifier, str)
    checker = load_verifier(verifier, timeout=verify_timeout, workers=workers)  # a bad spec fails at once
    own = isinstance(scorer, str)
    sc = load_scorer(scorer) if own else scorer  # first: a scorer that cannot load fails before any work
    spec = getattr(sc, "spec", "") or type(sc).__name__
    # A scorer that names the weights it runs (`Scorer.version`, e.g. TRM-lite's weights hash) keys its cache by
    # them too: the same spec after a retrain or an upgrade must not read the old model's scores.
    version = getattr(sc, "version", "")
    cache = (Path(cache_dir) / f"scores-{_slug(f'{spec}@{version}' if version else spec)}.jsonl"
             if cache_dir is not None else None)
    try:
        # Correctness where the input does not give it.
        need = [i for i, c in enumerate(cands) if c.correct is None]
        if need:
            report = checker.verify_batch_report([cands[i].response for i in need],
                                                 [cands[i].gold for i in need],
                                                 [cands[i].prompt for i in need])
            for i, ok in zip(need, report.results):
                cands[i].correct = bool(ok)
            timings["verify"] = {"verifier": checker.spec, "verified": len(need), "timeouts": report.timeouts,
                                 "errors": report.errors, "unparseable": report.unparseable,
                                 "seconds": round(report.seconds, 3)}
        scores, timings["scoring"] = score_candidates(
            cands, sc, cache=cache,
            on_progress=None if on_progress is None else (lambda d, t: on_progress("scoring", d, t)))
    finally:
        if own:
            sc.close()
        if own_verifier:
            checker.close()

    # Answer classes for voting, one list per problem.
    order: dict[str, list[int]] = {}
    for i, c in enumerate(cands):
        order.setdefault(c.problem_id, []).append(i)
    start = time.perf_counter()
    answers = [extract_answer(c.response) for c in cands]
    classes, group_timeouts = answer_classes([[answers[i] for i in ids] for ids in order.values()],
                                             timeout=verify_timeout, workers=workers)
    timings["grouping"] = {"seconds": round(time.perf_counter() - start, 3), "timeouts": group_timeouts}

    problems = [
        _Problem(correct=np.array([bool(cands[i].correct) for i in ids]),
                 scores=np.array([scores[i] for i in ids], dtype=float),
                 lengths=np.array([len(cands[i].response) for i in ids]),
                 classes=np.array([-1 if k is None else k for k in cls], dtype=int))
        for ids, cls in zip(order.values(), classes)
    ]
    if temperature == "auto":
        # Scores are raw and their scale depends on the scorer (TRM logits, minus characters, ...); a
        # temperature in units of the pool's standard deviation makes weighted-vote scale-free.
        spread = float(np.std(scores))
        temperature = AUTO_TEMPERATURE * spread if spread > 0 else 1.0
    start = time.perf_counter()
    result = evaluate_bon(problems, strategies=strategies, ns=ns, repeats=repeats, seed=seed,
                          temperature=temperature)
    timings["selection"] = {"seconds": round(time.perf_counter() - start, 3)}
    sizes = [len(p.correct) for p in problems]
    return {"scorer": spec, "n_problems": len(problems), "n_candidates": len(cands),
            "pool_size": {"min": min(sizes), "max": max(sizes)}, "requested_ns": ns, "repeats": repeats,
            "seed": seed, "temperature": round(float(temperature), 6),
            "no_answer": sum(a is None for a in answers),
            **result, "timings": timings}


def plot_bon(result: dict[str, Any], path: str | Path) -> None:
    """The PNG of a `best_of_n` result: accuracy vs N, strategies as solid lines, baselines dashed, 95% CIs
    as bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    lines = [(n, s, "-") for n, s in result["strategies"].items()]
    lines += [(n, s, "--") for n, s in result["baselines"].items()
              if not (n == "majority-vote" and "vote" in result["strategies"])]
    for name, stats, style in lines:
        ns = [int(n) for n in stats]
        mean = [stats[str(n)]["mean"] * 100 for n in ns]
        (line,) = ax.plot(ns, mean, style, marker="o", label=name)
        ax.fill_between(ns, [stats[str(n)]["ci_low"] * 100 for n in ns],
                        [stats[str(n)]["ci_high"] * 100 for n in ns], color=line.get_color(), alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xticks(result["ns"], [str(n) for n in result["ns"]])
    ax.set_xlabel("N (candidates per problem)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Best-of-N, scorer {result['scorer']} ({result['n_problems']} problems, "
                 f"{result['repeats']} repeats)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
