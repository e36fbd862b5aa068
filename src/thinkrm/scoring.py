"""Scorers: one interface, many backends, chosen by a spec string.

`load_scorer("hf:PATH")`, `"sglang:URL"`, `"vllm:URL"`, `"openrlhf:URL"`, `"thinkrm:URL"`, `"length"`,
`"random"`, `"lite"`. Every scorer returns raw, unbounded floats, higher = better; nothing downstream
needs to know which backend produced them. Backends are imported only when their spec is used, so
`import thinkrm` never pulls in torch.
"""

from __future__ import annotations

import importlib
import math
import numbers
import random as _random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from .calibration import Calibration, parse_calibration
from .formatting import Item

C = TypeVar("C")

# spec prefix -> "module:factory"; each factory takes (argument_after_colon, **options).
BACKENDS: dict[str, str] = {
    "length": "thinkrm.scoring:LengthScorer",
    "random": "thinkrm.scoring:RandomScorer",
    "lite": "thinkrm.lite:LiteScorer",
    "hf": "thinkrm.hf_scorer:HFScorer",
    "sglang": "thinkrm.remote:SGLangScorer",
    "vllm": "thinkrm.remote:VLLMScorer",
    "openrlhf": "thinkrm.remote:OpenRLHFScorer",
    "thinkrm": "thinkrm.remote:ThinkrmScorer",
}


class Scorer(ABC):
    """Scores (prompt, reasoning) items. Implementations batch internally as they see fit."""

    spec: str = ""
    # Inputs cut by the truncation policy so far (thinkrm.formatting); backends that tokenize locally count
    # them so reports can say how many scores saw a shortened trace.
    truncated: int = 0
    # Centre and scale of this model's raw scores on correct traces (thinkrm.calibration), where known: what
    # the gated RL reward needs to turn a raw score into a sigmoid that moves. None = not calibrated.
    calibration: Calibration | None = None
    # A name for the weights behind `spec` where the backend knows them (TRM-lite: a hash of its files), so
    # caches of scores keyed by spec are not read across a retrain. "" = unknown.
    version: str = ""

    @abstractmethod
    def score(self, items: Sequence[Item | tuple[str, str]]) -> list[float]:
        """Raw scores, one per item, in order."""

    # Scoring in two stages, `score_prepared(prepare(items)) == score(items)`: the scoring server runs the
    # first for requests that arrive while the model is busy with earlier ones, so an accelerator never
    # waits for the tokenizer between batches. A backend with CPU work to do before its model (tokenizing)
    # overrides both; the default does nothing ahead.
    def prepare(self, items: Sequence[Item | tuple[str, str]]) -> list[Any]:
        """The work that needs no model, one entry per item, in order (here: the items themselves)."""
        return list(items)

    def score_prepared(self, prepared: Sequence[Any]) -> list[float]:
        """Raw scores of what `prepare` returned (any concatenation of its results), in order."""
        return self.score(prepared)

    @property
    def prepares(self) -> bool:
        """Whether `prepare` does work worth running ahead of the model (in its own thread, beside it)."""
        return type(self).prepare is not Scorer.prepare

    def close(self) -> None:
        """Release connections or memory; scorers are also context managers."""

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def checked_scores(scorer: Scorer, items: Sequence[Item | tuple[str, str]]) -> list[float]:
    """`scorer.score(items)`, held to the interface's promise: one finite float per item, in order.

    Every consumer scores through this, so a backend that drops an item or returns NaN stops the run with the
    scorer and the item named, instead of shifting scores onto the wrong items or turning an accuracy, a
    Best-of-N pick or an RL reward into noise. Raises `ValueError`.
    """
    return _checked(scorer, scorer.score(items), len(items))


def _checked(scorer: Scorer, scores: Sequence[Any], n: int) -> list[float]:
    name = scorer.spec or type(scorer).__name__
    if len(scores) != n:
        raise ValueError(f"scorer {name!r} returned {len(scores)} scores for {n} items")
    out = []
    for i, s in enumerate(scores):
        value = float(s) if isinstance(s, numbers.Real) and not isinstance(s, bool) else None
        if value is None or not math.isfinite(value):
            raise ValueError(f"scorer {name!r} returned {s!r} for item {i}: expected a finite number")
        out.append(value)
    return out


_END = object()


def score_chunks(scorer: Scorer, chunks: Iterable[C], items: Callable[[C], Sequence[Item | tuple[str, str]]], *,
                 keep_going: bool = False) -> Iterator[tuple[C, list[float] | Exception]]:
    """`(chunk, checked scores of items(chunk))` for each chunk of a stream, in order. Where scoring a chunk
    failed, its exception is raised; with `keep_going` it is handed over instead, as `(chunk, exception)`, and
    the stream goes on (a caller may retry its rows one by one).

    The commands score their input a chunk at a time (progress, resumable output, bounded memory), and an
    accelerator would wait while each chunk is tokenized. With a scorer that `prepares` (`hf:` on a GPU),
    the next chunk is prepared in a background thread while this one is on the model. The stream itself is
    read here, in the caller's thread; an error it raises (a bad row) comes after the chunks read before it.
    """
    for chunk, result in _scored_chunks(scorer, chunks, items):
        if isinstance(result, Exception) and not keep_going:
            raise result
        yield chunk, result


def _scored_chunks(scorer: Scorer, chunks: Iterable[C], items: Callable[[C], Sequence[Item | tuple[str, str]]]
                   ) -> Iterator[tuple[C, list[float] | Exception]]:
    """`score_chunks` with every chunk's failure handed over."""
    if not scorer.prepares:
        for chunk in chunks:
            try:
                yield chunk, checked_scores(scorer, items(chunk))
            except Exception as e:  # noqa: BLE001 - handed to the caller, who decides
                yield chunk, e
        return
    from concurrent.futures import Future, ThreadPoolExecutor

    stream = iter(chunks)
    with ThreadPoolExecutor(1, thread_name_prefix="thinkrm-prepare") as pool:

        def submit(chunk: C) -> tuple[C, int, Future]:
            try:
                its = items(chunk)
            except Exception as e:  # noqa: BLE001 - the chunk's failure, handed over with it
                failed: Future = Future()
                failed.set_exception(e)
                return chunk, 0, failed
            return chunk, len(its), pool.submit(scorer.prepare, its)

        current = None if (first := next(stream, _END)) is _END else submit(first)
        while current is not None:
            failure = None
            try:
                following = None if (nxt := next(stream, _END)) is _END else submit(nxt)
            except Exception as e:  # noqa: BLE001 - raised once this chunk is answered
                following, failure = None, e
            chunk, n, prepared = current
            try:
                result: list[float] | Exception = _checked(scorer, scorer.score_prepared(prepared.result()), n)
            except Exception as e:  # noqa: BLE001 - handed to the caller, who decides
                result = e
            yield chunk, result
            if failure is not None:
                raise failure
            current = following


class LengthScorer(Scorer):
    """Baseline: the shorter reasoning scores higher (score = -characters)."""

    spec = "length"

    def __init__(self, arg: str = "", **_: Any):
        pass

    def score(self, items):
        return [-float(len(Item(*it).reasoning)) for it in items]


class RandomScorer(Scorer):
    """Baseline: uniform random scores, seeded (`random:SEED`, default 0) so reports are reproducible."""

    def __init__(self, arg: str = "", **_: Any):
        self.spec = f"random:{arg or 0}"
        self._rng = _random.Random(int(arg or 0))

    def score(self, items):
        return [self._rng.random() for _ in items]


def load_scorer(spec: str | Scorer, **options: Any) -> Scorer:
    """Build a scorer from a spec string (see module docstring); a `Scorer` instance passes through.

    `calibration=` (CENTER,SCALE, a dict, or a checkpoint path that records one) overrides or supplies the
    scorer's calibration, for models served elsewhere whose checkpoint thinkrm cannot read.
    """
    calibration = parse_calibration(options.pop("calibration", None))
    if isinstance(spec, Scorer):
        if calibration is not None:
            spec.calibration = calibration
        return spec
    name, _, arg = spec.partition(":")
    if name not in BACKENDS:
        raise ValueError(f"unknown scorer spec {spec!r}; expected one of: "
                         + ", ".join(f"{k}:..." if k in {"hf", "sglang", "vllm", "openrlhf", "thinkrm"} else k
                                     for k in BACKENDS))
    module, _, factory = BACKENDS[name].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise ValueError(f"scorer {name!r} is not available in this build of thinkrm ({module} missing)") from None
        raise
    scorer = getattr(mod, factory)(arg, **options)
    scorer.spec = spec
    if calibration is not None:
        scorer.calibration = calibration
    return scorer
