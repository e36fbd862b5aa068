"""ME² perturbations: flawed copies of good traces, as preference pairs with known causes.

Why: preference pairs judged by an LLM are expensive, and public ones (PRMBench) cover effectiveness flaws
far better than efficiency flaws. A correct trace can be made worse in a controlled way, one ME² dimension
at a time, so that the original is preferred for a reason we know. Every operation keeps the final answer
(it never edits the last step, which states it, nor inserts or removes text that states an answer) and
changes exactly one contiguous span, recorded in the pair as `edit` so that

    rejected == chosen[:edit.start] + edit.inserted + chosen[edit.start + len(edit.removed):]

Operations (ME² dimension broken):

=======================  =====================  ====================================================
op                       dimension              what it does
=======================  =====================  ====================================================
``restart``              macro_efficiency       "Wait, let me start over." then a copy of an earlier
                                                stretch of steps, inserted later in the trace
``detour``               macro_effectiveness    an irrelevant tangent (a step from another problem)
                                                opened and abandoned
``duplicate_check``      micro_efficiency       a verification (or calculation) step repeated right
                                                after itself, announced as a re-check
``filler``               micro_efficiency       padding sentences and a paraphrase loop restating the
                                                previous step
``wrong_then_fixed``     micro_effectiveness    a step re-stated with a wrong result, then retracted
``drop_justification``   micro_effectiveness    a middle step that derives a result is removed and
                                                replaced by a bare "clearly" claim
=======================  =====================  ====================================================

A pair names its operation in `kind` (what `thinkrm eval-pairs` reports accuracy per) and the ME² dimension
it breaks in `dimension`. Operations are deterministic given `seed` and the trace id; an operation that does
not apply to a trace (too few steps, no calculation to corrupt) is skipped rather than forced.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .io import InputError
from .steps import Step, split_steps
from .trace import Trace

OPS: dict[str, str] = {
    "restart": "macro_efficiency",
    "detour": "macro_effectiveness",
    "duplicate_check": "micro_efficiency",
    "filler": "micro_efficiency",
    "wrong_then_fixed": "micro_effectiveness",
    "drop_justification": "micro_effectiveness",
}

# Text that states a final answer must never be inserted or removed, so the graded answer stays the same.
_ANSWER_MARK = re.compile(r"\\boxed|####|^\s*A:|answer is|final answer", re.IGNORECASE | re.MULTILINE)
_VERIFY = re.compile(r"\b(?:verify|check|confirm|substitut|plug(?:ging)? (?:it|this|back))", re.IGNORECASE)
_DERIVES = re.compile(r"=|\bbecause\b|\bsince\b|\btherefore\b|\bthus\b|\bhence\b", re.IGNORECASE)
# A stated result: after "=", or the visible number after a GSM8K `<<16-7=9>>` calculator annotation.
_NUMBER_RESULT = re.compile(r"(=\s*\$?|>>)(-?\d+(?:\.\d+)?)")

_RESTART = ["Wait, let me start over and redo this from the beginning.", "Hmm, let me restart this problem.",
            "Actually, let me go back and set this up again.", "Let me start again from the top."]
_DETOUR_OPEN = ["Alternatively, maybe this is related to a different idea.", "Hmm, this reminds me of "
                "something else.", "Let me also consider another direction."]
_DETOUR_CLOSE = ["Actually, that has nothing to do with this problem. Back to the original approach.",
                 "No, that is irrelevant here. Let me return to where I was.",
                 "That does not help with this question, so let me drop it."]
_RECHECK = ["Let me double-check that once more.", "Wait, let me verify this again to be sure.",
            "Just to be safe, let me re-check this step."]
_FILLER = ["Hmm, okay, let me think about this carefully.", "Okay, so, basically, we just keep going here.",
           "Let me think. Right, so, where was I?", "Alright, so, let me see, I mean, this seems fine."]
_RESTATE = ["In other words, to restate what we just did:", "So, put differently, the point is that:",
            "Let me rephrase that to make sure:"]
_RETRACT = ["Wait, that's not right. Let me redo that calculation.", "Hmm, no, that is wrong. Let me recompute.",
            "Wait, no, I made an arithmetic mistake there. Let me fix it."]
_CLAIM = ["Clearly, the next step follows.", "It is obvious how this works out.", "This clearly gives what we need."]


@dataclass(frozen=True)
class Edit:
    """One contiguous change: `removed` (text of chosen at `start`) replaced by `inserted`."""

    start: int
    inserted: str
    removed: str = ""

    def apply(self, text: str) -> str:
        if text[self.start:self.start + len(self.removed)] != self.removed:
            raise ValueError("edit does not match the text it claims to change")
        return text[:self.start] + self.inserted + text[self.start + len(self.removed):]


@dataclass(frozen=True)
class Perturbation:
    op: str
    dimension: str
    edit: Edit


class _Context:
    """A trace's response, where its reasoning sits in it, its steps and the editable region."""

    def __init__(self, response: str, reasoning: str):
        self.response = response
        self.offset = response.find(reasoning) if reasoning else -1
        if self.offset < 0:
            raise ValueError("reasoning is not a substring of the response")
        self.steps: list[Step] = split_steps(reasoning)
        self.sep = "\n\n" if "\n\n" in reasoning.strip() else "\n"

    def at(self, step: Step) -> int:
        """Response offset where `step` begins (insertions go there, so they precede it)."""
        return self.offset + step.start

    def clean(self, i: int) -> bool:
        """Step i may be copied or removed: it states no answer."""
        return not _ANSWER_MARK.search(self.steps[i].text)

    def block(self, *parts: str) -> str:
        return self.sep.join(parts) + self.sep


def _restart(ctx: _Context, rng: random.Random, _: Sequence[str]) -> Edit | None:
    n = len(ctx.steps)
    if n < 3:
        return None
    at = rng.randrange(2, n)  # insert before step `at` (never after the last, which states the answer)
    length = min(at, rng.randint(1, 2))
    copied = [ctx.steps[i].text for i in range(length) if ctx.clean(i)]
    if len(copied) < length:
        return None
    return Edit(ctx.at(ctx.steps[at]), ctx.block(rng.choice(_RESTART), *copied))


def _detour(ctx: _Context, rng: random.Random, others: Sequence[str]) -> Edit | None:
    n = len(ctx.steps)
    usable = [t for t in others if not _ANSWER_MARK.search(t)]
    if n < 2 or not usable:
        return None
    at = rng.randrange(1, n)
    return Edit(ctx.at(ctx.steps[at]), ctx.block(rng.choice(_DETOUR_OPEN), rng.choice(usable),
                                                  rng.choice(_DETOUR_CLOSE)))


def _duplicate_check(ctx: _Context, rng: random.Random, _: Sequence[str]) -> Edit | None:
    n = len(ctx.steps)
    body = [i for i in range(n - 1) if ctx.clean(i)]
    checks = [i for i in body if _VERIFY.search(ctx.steps[i].text)] or [i for i in body if "=" in ctx.steps[i].text]
    if not checks:
        return None
    i = rng.choice(checks)
    return Edit(ctx.at(ctx.steps[i + 1]), ctx.block(rng.choice(_RECHECK), ctx.steps[i].text))


def _filler(ctx: _Context, rng: random.Random, _: Sequence[str]) -> Edit | None:
    n = len(ctx.steps)
    body = [i for i in range(n - 1) if ctx.clean(i)]
    if not body:
        return None
    i = rng.choice(body)
    pad = rng.sample(_FILLER, 2)
    return Edit(ctx.at(ctx.steps[i + 1]), ctx.block(pad[0], f"{rng.choice(_RESTATE)} {ctx.steps[i].text}", pad[1]))


def _visible_results(text: str) -> list[re.Match]:
    """Stated results outside `<<...>>` annotations (a reader, and a grader, sees only those)."""
    return [m for m in _NUMBER_RESULT.finditer(text)
            if text.rfind("<<", 0, m.start(2)) <= text.rfind(">>", 0, m.start(2))]


def _wrong_then_fixed(ctx: _Context, rng: random.Random, _: Sequence[str]) -> Edit | None:
    n = len(ctx.steps)
    results = {i: _visible_results(ctx.steps[i].text) for i in range(n - 1) if ctx.clean(i)}
    cands = [i for i, found in results.items() if found]
    if not cands:
        return None
    i = rng.choice(cands)
    text = ctx.steps[i].text
    m = rng.choice(results[i])
    value = m.group(2)
    wrong = str(int(value) + rng.choice([-2, -1, 1, 2, 10])) if "." not in value else f"{float(value) * 1.1:.2f}"
    corrupted = text[:m.start(2)] + wrong + text[m.end(2):]
    # The corrupted copy goes first and the original step (the correction) follows it unchanged.
    return Edit(ctx.at(ctx.steps[i]), ctx.block(corrupted, rng.choice(_RETRACT)))


def _drop_justification(ctx: _Context, rng: random.Random, _: Sequence[str]) -> Edit | None:
    n = len(ctx.steps)
    cands = [i for i in range(1, n - 1) if ctx.clean(i) and _DERIVES.search(ctx.steps[i].text)]
    if not cands:
        return None
    i = rng.choice(cands)
    s = ctx.steps[i]
    removed = ctx.response[ctx.at(s):ctx.at(ctx.steps[i + 1])]
    return Edit(ctx.at(s), ctx.block(rng.choice(_CLAIM)), removed)


_OPERATIONS = {"restart": _restart, "detour": _detour, "duplicate_check": _duplicate_check, "filler": _filler,
               "wrong_then_fixed": _wrong_then_fixed, "drop_justification": _drop_justification}


def parse_ops(ops: str | Iterable[str] | None) -> list[str]:
    """Operation names from a comma-separated string or a list (None = all), validated."""
    if ops is None:
        return list(OPS)
    names = [o.strip() for o in (ops.split(",") if isinstance(ops, str) else ops) if o.strip()]
    bad = [o for o in names if o not in OPS]
    if bad or not names:
        raise ValueError(f"unknown perturbation op(s) {', '.join(bad) or '(none given)'}; choose from "
                         + ", ".join(OPS))
    return names


def perturb_trace(trace: Trace, ops: Sequence[str] | None = None, *, seed: int = 0,
                  detour_pool: Sequence[str] = ()) -> list[Perturbation]:
    """One flawed copy of `trace.full_response` per applicable op, deterministic in (seed, trace id, op).

    `detour_pool` holds step texts from *other* problems for the `detour` op (it is skipped when empty).
    """
    if not trace.reasoning.strip():
        return []
    try:
        ctx = _Context(trace.full_response, trace.reasoning)
    except ValueError as e:
        raise InputError(str(e), file=trace.source, field="reasoning") from None
    out = []
    for op in parse_ops(ops):
        rng = random.Random(f"{seed}\x00{trace.id}\x00{op}")
        edit = _OPERATIONS[op](ctx, rng, detour_pool)
        if edit is not None:
            out.append(Perturbation(op, OPS[op], edit))
    return out


def perturb_records(traces: Iterable[Trace], ops: Sequence[str] | None = None, *, seed: int = 0,
                    pool_size: int = 2000) -> Iterator[dict[str, Any]]:
    """TRL-style preference pairs (`prompt`, `chosen`, `rejected`) from the correct traces among `traces`.

    A trace with `correct: false` is skipped (a flawed copy of a wrong trace says nothing about reasoning);
    one without a `correct` field is taken as given. Detour text is drawn from the steps of earlier traces of
    other problems (a bounded reservoir), so the input is streamed in one pass.
    """
    ops = parse_ops(ops)
    pool: list[tuple[str, str]] = []  # (prompt, step text)
    pool_rng = random.Random(seed)
    for trace in traces:
        if trace.extra.get("correct") is False:
            continue
        others = [t for p, t in pool if p != trace.prompt]
        for p in perturb_trace(trace, ops, seed=seed, detour_pool=others):
            rec = {k: v for k, v in trace.extra.items() if k not in {"chosen", "rejected", "edit", "kind", "dimension"}}
            rec.update(id=f"{trace.id}:{p.op}", source_id=trace.id, prompt=trace.prompt, chosen=trace.full_response,
                       rejected=p.edit.apply(trace.full_response), kind=p.op, dimension=p.dimension,
                       edit=asdict(p.edit))
            yield rec
        for step in split_steps(trace.reasoning):
            if 60 <= len(step.text) <= 600:
                if len(pool) < pool_size:
                    pool.append((trace.prompt, step.text))
                elif pool_rng.random() < 0.1:
                    pool[pool_rng.randrange(pool_size)] = (trace.prompt, step.text)
