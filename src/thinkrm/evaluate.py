"""Pairwise evaluation of a scorer: how often does it rank the chosen trace above the rejected one?

Definitions (also in docs/reward-models.md):

* accuracy = correct / num_pairs, a pair being correct only if score(chosen) > score(rejected); a tie counts
  as wrong, as in the TRM paper, so a constant scorer gets 0, not 0.5.
* per-kind accuracy groups pairs by their `kind` (e.g. the perturbation that made the rejected trace).
* length-matched accuracy uses only pairs whose two reasoning texts differ in length by at most
  `length_tolerance` (10%) of the longer one: there, "shorter is better" cannot be the whole story.
* the `length` baseline (shorter reasoning wins) is computed on the same pairs, so every report shows what
  a model must beat.

Bad rows (empty side, identical sides, missing field, wrong type, invalid JSON) are counted and reported
with file:line, never fatal: an evaluation should not die an hour in on row 90,000.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from .io import InputError
from .pairs import Pair, load_pairs
from .scoring import LengthScorer, Scorer, load_scorer, score_chunks

LENGTH_TOLERANCE = 0.10
MAX_BAD_EXAMPLES = 20


@dataclass
class Tally:
    num_pairs: int = 0
    correct: int = 0
    ties: int = 0

    def add(self, chosen: float, rejected: float) -> None:
        self.num_pairs += 1
        self.correct += chosen > rejected
        self.ties += chosen == rejected

    def to_dict(self) -> dict[str, Any]:
        acc = self.correct / self.num_pairs if self.num_pairs else None
        return {"accuracy": acc, "num_pairs": self.num_pairs, "correct": self.correct, "ties": self.ties}


@dataclass
class _Report:
    """Accuracy overall, per kind and on length-matched pairs, for one scorer."""

    overall: Tally = field(default_factory=Tally)
    per_kind: dict[str, Tally] = field(default_factory=dict)
    length_matched: Tally = field(default_factory=Tally)

    def add(self, pair: Pair, chosen: float, rejected: float, matched: bool) -> None:
        self.overall.add(chosen, rejected)
        if pair.kind is not None:
            self.per_kind.setdefault(pair.kind, Tally()).add(chosen, rejected)
        if matched:
            self.length_matched.add(chosen, rejected)

    def to_dict(self, tolerance: float) -> dict[str, Any]:
        d = self.overall.to_dict()
        if self.per_kind:
            d["per_kind"] = {k: t.to_dict() for k, t in sorted(self.per_kind.items())}
        d["length_matched"] = {"tolerance": tolerance, **self.length_matched.to_dict()}
        return d


def length_matched(pair: Pair, tolerance: float = LENGTH_TOLERANCE) -> bool:
    a, b = len(pair.chosen), len(pair.rejected)
    return abs(a - b) <= tolerance * max(a, b)


def _chunks(it: Iterable[Pair], size: int) -> Iterator[list[Pair]]:
    it = iter(it)
    while chunk := list(islice(it, size)):
        yield chunk


def evaluate_pairs(pairs: str | os.PathLike | Iterable[Pair], scorer: Scorer | str, *, chunk_size: int = 64,
                   length_tolerance: float = LENGTH_TOLERANCE,
                   on_pair: Callable[[dict[str, Any]], None] | None = None,
                   progress: Callable[[Iterable[Pair]], Iterable[Pair]] | None = None) -> dict[str, Any]:
    """Score every pair (both sides in one `scorer.score` call per chunk) and return the results dict.

    `pairs` is a path (bad rows are then counted, with file:line, under `bad_rows`) or validated `Pair`s.
    `on_pair` receives one output row per scored pair, in input order (`id`, `kind`, `scores_chosen`,
    `scores_rejected`, `results`: RewardBench's column names), so callers can stream them to disk.
    `progress` wraps the stream of valid pairs (a CLI progress bar).
    """
    bad: list[InputError] = []
    if isinstance(pairs, (str, os.PathLike)):
        pairs = load_pairs(pairs, skip_bad=True, on_bad=bad.append)
    owned = not isinstance(scorer, Scorer)  # built here from a spec, so closed here
    scorer = load_scorer(scorer)
    try:
        return _evaluate(pairs, scorer, bad, length_tolerance, progress, on_pair, chunk_size)
    finally:
        if owned:
            scorer.close()


def _evaluate(pairs, scorer: Scorer, bad: list[InputError], length_tolerance: float, progress, on_pair,
              chunk_size: int) -> dict[str, Any]:
    baseline = LengthScorer()
    truncated_before = scorer.truncated
    model, length = _Report(), _Report()
    def both_sides(chunk: list[Pair]) -> list[tuple[str, str]]:
        return [(p.prompt, p.chosen) for p in chunk] + [(p.prompt, p.rejected) for p in chunk]

    stream = _chunks(progress(pairs) if progress is not None else pairs, chunk_size)
    for chunk, scores in score_chunks(scorer, stream, both_sides):
        base = baseline.score(both_sides(chunk))
        n = len(chunk)
        for i, pair in enumerate(chunk):
            matched = length_matched(pair, length_tolerance)
            model.add(pair, scores[i], scores[n + i], matched)
            length.add(pair, base[i], base[n + i], matched)
            if on_pair is not None:
                row = {"id": pair.id, "scores_chosen": scores[i], "scores_rejected": scores[n + i],
                       "results": int(scores[i] > scores[n + i])}
                if pair.kind is not None:
                    row["kind"] = pair.kind
                on_pair(row)
    results = {"scorer": scorer.spec, **model.to_dict(length_tolerance),
               "baselines": {"length": length.to_dict(length_tolerance)},
               "truncated_inputs": scorer.truncated - truncated_before,
               "bad_rows": {"count": len(bad), "examples": [str(e) for e in bad[:MAX_BAD_EXAMPLES]]}}
    return results
