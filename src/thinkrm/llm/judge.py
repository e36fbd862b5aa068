"""The ME² pairwise judge: which of two correct traces reasons better, and is the judge sure?

For each pair, an LLM answers four dimension questions (Macro-Efficiency and Macro-Effectiveness read the
two traces' macro views, Micro-Efficiency and Micro-Effectiveness their micro paths) and an aggregation
question that sees the full traces and the four verdicts. One such set of five answers is a *vote*.

A judge has position bias and sampling noise, so a label is only worth training on if it survives both:
each pair is judged in both presentation orders, `repeats` times each, and kept only if every aggregated
verdict, mapped back to a/b, names the same trace and none is a tie. Orders alternate (ab, ba, ab, ...), so a
position-biased judge is caught after two votes and the remaining calls are skipped (`calls_saved`).

Answers must end with `<|decision|>Trace 1`, `<|decision|>Trace 2` or `<|decision|>Tie`. Anything else is
invalid: it is re-asked (`invalid_retries` times, by `thinkrm.llm.client.ask_until_valid`: sampling at
temperature >= 0.7 so a retry can differ) and then counted as invalid; a pair with an invalid vote gets no
label. Nothing is ever guessed.

Truncation policy: each view of a trace longer than `max_trace_chars` keeps its first 60% and last 40% of
that budget with a visible `[... N characters omitted ...]` marker (`thinkrm.llm.prompts.clip`, the rule
every prompt of the pipeline uses: the start sets up the approach, the end holds the conclusion). If the
server still reports a context overflow, the budget is halved, up to three times, and the pair records
`truncated_to`.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..io import InputError, ResumableJsonl, iter_records
from ..trace import split_response
from . import prompts as P
from .client import ContextOverflowError, LLMClient, LLMConfig, ask_until_valid, gather_limited

REASONS = ("consistent", "tie", "inconsistent", "invalid")
_DECISION_RE = re.compile(r"<\|decision\|>[ \t]*(Trace 1|Trace 2|Tie)\s*\Z")


@dataclass
class JudgeConfig:
    """How pairs are judged. Every field is also a `thinkrm judge` (and `thinkrm build-pairs`) flag with this
    default and help (`max_trace_chars` -> `--max-trace-chars`)."""

    repeats: int = field(default=3, metadata={"help": "Judge votes per presentation order."})
    view: str = field(default="structured", metadata={
        "help": "structured (macro/micro views) or raw (full traces, the prompt-only baseline)."})
    structurer: str = field(default="heuristic", metadata={
        "help": "DAG structurer of the structured view: heuristic, embedding, llm, llm-batch."})
    llm_summaries: bool = field(default=False, metadata={
        "help": "One-sentence LLM summaries in the macro view instead of extractive ones."})
    temperature: float = field(default=0.7, metadata={"help": "Judge sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Judge sampling top-p."})
    max_tokens: int = field(default=1024, metadata={"help": "Max tokens per judge answer."})
    invalid_retries: int = field(default=2, metadata={"help": "Re-asks after an answer without a valid decision."})
    max_trace_chars: int = field(default=24000, metadata={
        "help": "Per view of each trace; longer ones keep head + tail."})
    early_stop: bool = field(default=True, metadata={"help": "Stop judging a pair once it can no longer be kept."})
    pair_concurrency: int = field(default=16, metadata={"help": "Pairs in flight (each runs its votes in sequence)."})

    def validate(self) -> None:
        if self.view not in ("structured", "raw"):
            raise ValueError(f"view must be 'structured' or 'raw', got {self.view!r}")
        if self.repeats < 1:
            raise ValueError("repeats must be >= 1")
        if self.invalid_retries < 0 or self.max_trace_chars < 200:
            raise ValueError("invalid_retries must be >= 0 and max_trace_chars >= 200")
        from ..structurers import STRUCTURERS

        if self.view == "structured" and self.structurer not in STRUCTURERS:
            raise ValueError(f"unknown structurer {self.structurer!r}; choose one of {', '.join(STRUCTURERS)}")


@dataclass
class PairInput:
    """Two traces of one problem; `a` and `b` are reasoning texts (text after `</think>` is dropped)."""

    id: str
    prompt: str
    a: str
    b: str
    extra: dict[str, Any] = field(default_factory=dict)


def parse_decision(text: str) -> tuple[str | None, str]:
    """`("Trace 1" | "Trace 2" | "Tie" | None, rationale)`; None unless the text ends with a valid decision."""
    m = _DECISION_RE.search(text.rstrip())
    if m is None:
        return None, text.strip()
    return m.group(1), text[:m.start()].strip()


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """`(P.clip(text, limit), whether it cut)`: the pipeline's one head/tail rule, plus the flag a pair records."""
    return P.clip(text, limit), len(text) > limit


def _valid_decision(text: str) -> tuple[str, str] | None:
    """`parse_decision` for `ask_until_valid`: `(label, rationale)`, or None while the answer is invalid."""
    label, rationale = parse_decision(text)
    return None if label is None else (label, rationale)


def _to_side(label: str | None, order: str) -> str | None:
    """Map "Trace 1"/"Trace 2"/"Tie" back to "a"/"b"/"tie" given the presentation order ("ab" or "ba")."""
    if label is None:
        return None
    if label == "Tie":
        return "tie"
    first = label == "Trace 1"
    return ("a" if first else "b") if order == "ab" else ("b" if first else "a")


@dataclass
class Views:
    """What the judge shows of one trace."""

    full: str
    macro: str
    micro: str


async def trace_views(llm: LLMClient, prompt: str, reasoning: str, cfg: JudgeConfig) -> Views:
    if cfg.view == "raw":
        return Views(reasoning, reasoning, reasoning)
    from .structuring import build_dag_async, summarize_dag

    dag = await build_dag_async(llm, reasoning, cfg.structurer, prompt=prompt)
    if cfg.llm_summaries:
        await summarize_dag(llm, dag, prompt)
    return Views(reasoning, dag.macro_view(), dag.micro_view())


class _Pair:
    """The running state of one pair: calls and tokens so far."""

    def __init__(self, llm: LLMClient, cfg: JudgeConfig):
        self.llm, self.cfg = llm, cfg
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    async def ask(self, system: str, user: str, sample: int, stage: str) -> dict[str, Any]:
        """One decision, re-asked while invalid; returns label, rationale, attempts and the last raw text."""
        answer = await ask_until_valid(self.llm, [P.system(system), P.user(user)], _valid_decision,
                                       retries=self.cfg.invalid_retries, temperature=self.cfg.temperature,
                                       sample=sample * 100, top_p=self.cfg.top_p, max_tokens=self.cfg.max_tokens,
                                       stage=stage)
        for c in answer.completions:
            self.calls += 1
            self.prompt_tokens += c.prompt_tokens
            self.completion_tokens += c.completion_tokens
        if answer.value is not None:
            label, rationale = answer.value
            return {"label": label, "rationale": rationale, "attempts": answer.attempts}
        c = answer.last
        # The end of an invalid answer is where its decision line should have been: keep that part.
        return {"label": None, "rationale": c.text.strip()[-2000:], "attempts": answer.attempts,
                "finish_reason": c.finish_reason}


async def _vote(state: _Pair, pair: PairInput, va: Views, vb: Views, order: str, repeat: int,
                limit: int) -> tuple[dict[str, Any], bool]:
    """One vote (four dimensions + aggregation) in one order; returns the vote and whether it truncated."""
    first, second = (va, vb) if order == "ab" else (vb, va)
    truncated = False

    def cut(text: str) -> str:
        nonlocal truncated
        out, did = truncate(text, limit)
        truncated |= did
        return out

    view_of = {"macro": lambda v: v.macro, "micro": lambda v: v.micro}
    use_raw = state.cfg.view == "raw"

    async def dim(d: P.Dimension) -> dict[str, Any]:
        pick = (lambda v: v.full) if use_raw else view_of[d.view]
        user = P.dimension_user(d, pair.prompt, cut(pick(first)), cut(pick(second)), "raw" if use_raw else d.view)
        return await state.ask(P.JUDGE_SYSTEM, user, repeat, stage="judge")

    answers = await gather_limited(dim(d) for d in P.DIMENSIONS)
    dims = {d.key: {"decision": _to_side(a["label"], order), **a} for d, a in zip(P.DIMENSIONS, answers)}
    vote: dict[str, Any] = {"order": order, "repeat": repeat, "dimensions": dims, "aggregate": None}
    if any(a["label"] is None for a in answers):
        vote["decision"] = None
        return vote, truncated
    assessments = [(d.title, a["rationale"], a["label"]) for d, a in zip(P.DIMENSIONS, answers)]
    user = P.aggregate_user(pair.prompt, cut(first.full), cut(second.full), assessments)
    agg = await state.ask(P.AGGREGATE_SYSTEM, user, repeat, stage="judge")
    vote["aggregate"] = {"decision": _to_side(agg["label"], order), **agg}
    vote["decision"] = vote["aggregate"]["decision"]
    return vote, truncated


def _verdict(decisions: list[str | None]) -> str | None:
    """The pair's reason so far, or None while it can still be kept."""
    if any(d is None for d in decisions):
        return "invalid"
    sides = {d for d in decisions if d != "tie"}
    if len(sides) > 1:
        return "inconsistent"
    if "tie" in decisions:
        return "tie"
    return None


async def judge_pair(llm: LLMClient, pair: PairInput, cfg: JudgeConfig) -> dict[str, Any]:
    """Judge one pair; the result is one output record (see `thinkrm judge`)."""
    cfg.validate()
    state = _Pair(llm, cfg)
    va, vb = await gather_limited([trace_views(llm, pair.prompt, pair.a, cfg),
                                   trace_views(llm, pair.prompt, pair.b, cfg)])
    schedule = [(order, r) for r in range(cfg.repeats) for order in ("ab", "ba")]
    calls_per_vote = len(P.DIMENSIONS) + 1
    votes: list[dict[str, Any]] = []
    limit, truncated, error = cfg.max_trace_chars, False, None
    for order, repeat in schedule:
        for _ in range(4):  # the budget may be halved three times
            try:
                vote, cut = await _vote(state, pair, va, vb, order, repeat, limit)
                break
            except ContextOverflowError as e:
                error, limit = str(e), limit // 2
        else:
            votes.append({"order": order, "repeat": repeat, "decision": None, "error": error})
            break
        truncated |= cut
        votes.append(vote)
        if cfg.early_stop and _verdict([v["decision"] for v in votes]) is not None:
            break
    done = len(votes)
    reason = _verdict([v["decision"] for v in votes]) or "consistent"
    winner = votes[0]["decision"] if reason == "consistent" else None
    out = {
        "id": pair.id, "winner": winner, "reason": reason, "view": cfg.view, "votes": votes,
        "calls": state.calls, "calls_saved": (len(schedule) - done) * calls_per_vote,
        "tokens": {"prompt": state.prompt_tokens, "completion": state.completion_tokens},
        "truncated": truncated,
    }
    if limit != cfg.max_trace_chars:
        out["truncated_to"] = limit
        out["error"] = error
    return out


def judge_input_from_record(rec: dict[str, Any], *, default_id: str, file: str | None = None,
                     line: int | None = None) -> PairInput:
    """Validate a `prompt`, `a`, `b` row; a side with `</think>` keeps only its reasoning."""
    def text(name: str) -> str:
        if name not in rec:
            raise InputError("missing", file=file, line=line, field=name)
        v = rec[name]
        if not isinstance(v, str) or not v.strip():
            raise InputError("expected a non-empty string", file=file, line=line, field=name)
        return v

    prompt = text("prompt")
    a, b = split_response(text("a"))[0], split_response(text("b"))[0]
    for name, side in (("a", a), ("b", b)):
        if not side.strip():
            raise InputError("no reasoning before the end-of-thinking marker", file=file, line=line, field=name)
    rid = rec.get("id", default_id)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise InputError("expected a string or integer", file=file, line=line, field="id")
    extra = {k: v for k, v in rec.items() if k not in ("id", "prompt", "a", "b")}
    return PairInput(id=str(rid), prompt=prompt, a=a, b=b, extra=extra)


def load_judge_pairs(path: str | os.PathLike) -> list[PairInput]:
    """All rows of a pairs file, validated up front so a bad row fails before any paid call."""
    out, seen = [], set()
    for line, rec in iter_records(path):
        if isinstance(rec, InputError):
            raise rec
        p = judge_input_from_record(rec, default_id=str(line), file=str(path), line=line)
        if p.id in seen:
            raise InputError(f"duplicate id {p.id!r}", file=path, line=line, field="id")
        seen.add(p.id)
        out.append(p)
    return out


async def judge_many(llm: LLMClient, pairs: Iterable[PairInput], cfg: JudgeConfig,
                     on_result: Callable[[dict[str, Any]], None]) -> None:
    """Judge pairs concurrently (at most `pair_concurrency` at once), handing each result to `on_result`."""
    sem = asyncio.Semaphore(cfg.pair_concurrency)

    async def one(p: PairInput) -> None:
        async with sem:
            on_result(await judge_pair(llm, p, cfg))

    await gather_limited(one(p) for p in pairs)


def summarize_verdicts(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts and rates of reasons, calls, calls saved by early stopping, tokens."""
    recs = list(records)
    n = len(recs)
    counts = {r: sum(1 for x in recs if x["reason"] == r) for r in REASONS}
    return {
        "pairs": n, **counts,
        "rates": {r: (counts[r] / n if n else 0.0) for r in REASONS},
        "calls": sum(x["calls"] for x in recs), "calls_saved": sum(x["calls_saved"] for x in recs),
        "tokens": {"prompt": sum(x["tokens"]["prompt"] for x in recs),
                   "completion": sum(x["tokens"]["completion"] for x in recs)},
    }


def judge_file(pairs_path: str | os.PathLike, out_path: str | os.PathLike, llm_config: LLMConfig,
               cfg: JudgeConfig | None = None, *, on_progress: Callable[[int, int], None] | None = None,
               resume: bool = True) -> dict[str, Any]:
    """Judge every pair of `pairs_path` into `out_path` (resumable JSONL keyed by `id`); returns the summary.

    Pairs already in `out_path` are skipped, so an interrupted run continues where it stopped; with the
    LLM cache on, even a pair that was in flight costs nothing the second time.
    """
    cfg = cfg or JudgeConfig()
    cfg.validate()
    llm_config = llm_config.resolved()  # a missing server or model fails before anything is written
    pairs = load_judge_pairs(pairs_path)

    async def main() -> dict[str, Any]:
        with ResumableJsonl(out_path, key="id", resume=resume) as store:
            todo = [p for p in pairs if p.id not in store]
            done = len(pairs) - len(todo)
            if on_progress:
                on_progress(done, len(pairs))

            def add(rec: dict[str, Any]) -> None:
                nonlocal done
                store.add(rec)
                done += 1
                if on_progress:
                    on_progress(done, len(pairs))

            async with LLMClient(llm_config) as llm:
                await judge_many(llm, todo, cfg, add)
                usage = {k: u.to_dict() for k, u in llm.usage.items()}
            summary = summarize_verdicts(store.records())
        summary["usage"] = usage
        return summary

    return asyncio.run(main())
