"""The preference-dataset builder: problems in, TRL-compatible preference pairs out.

`thinkrm build-pairs problems.jsonl -o pairs.jsonl` runs five stages:

1. **generate** `n` traces per problem from each generator endpoint;
2. **verify** each final answer against the gold answer with the configured verifier (`thinkrm.verifiers`;
   the default, math, runs math-verify in worker processes with a hard per-item timeout), keeping only
   correct traces;
3. **pair**: at most `k` pairs per problem among its correct traces, cross-generator pairs first, with both
   lengths recorded; the choice is a pure function of the verified traces and `seed`, so a rerun picks the
   same pairs;
4. **judge** each pair with the ME² judge (`thinkrm.llm.judge`), DAGs built by the configured structurer;
5. **write** the kept pairs as JSONL rows `prompt`, `chosen`, `rejected` (reasoning texts, as
   `thinkrm train` / `thinkrm.pairs` read them) plus metadata, atomically.

Stages 1, 2 and 4 append to stores in `<output>.work/` (`traces.jsonl`, `verified.jsonl`, `verdicts.jsonl`,
`thinkrm.io.ResumableJsonl`, keyed by ids), and every LLM answer is cached in `<output>.work/llm-cache.sqlite`
before it is stored: after a crash or `kill -9`, a rerun skips what is stored, gets what was in flight from
the cache when it had arrived, and never writes a record twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import (
    GOLD_FIELDS,
    PROMPT_FIELDS,
    InputError,
    ResumableJsonl,
    first_field,
    iter_records,
    write_json,
    write_jsonl,
)
from ..trace import split_response
from ..verifiers import MathVerifier, Verifier, load_verifier
from . import prompts as P
from .client import LLMClient, LLMConfig, Usage, gather_limited
from .judge import JudgeConfig, PairInput, judge_many, summarize_verdicts

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class Generator:
    """A generator endpoint: a display name, a model and its base URL (None: the judge's server)."""

    name: str
    model: str
    base_url: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Generator:
        """`[NAME=]MODEL[@BASE_URL]`, e.g. `qwen=Qwen/Qwen3-8B@http://127.0.0.1:8000/v1`."""
        name, eq, rest = spec.partition("=")
        if not eq or "/" in name or "@" in name:  # that "=" belongs to the model or URL, not a name
            name, rest = "", spec
        model, at, url = rest.partition("@")
        if not model.strip() or (at and not url.strip()):
            raise ValueError(f"bad generator spec {spec!r}: expected [NAME=]MODEL[@BASE_URL]")
        name = name.strip() or model.strip().rsplit("/", 1)[-1]
        if any(c in name for c in "#|"):
            raise ValueError(f"bad generator name {name!r}: '#' and '|' are reserved for ids")
        return cls(name=name, model=model.strip(), base_url=url.strip() or None)


@dataclass
class BuildConfig:
    """How pairs are built. Every field but `generators` (`-g/--generator`) and `judge` (the `JudgeConfig`
    flags) is also a `thinkrm build-pairs` flag with this default and help; the generation settings are
    `--gen-temperature`, `--gen-top-p` and `--gen-max-tokens` there (`--temperature` etc. are the judge's)."""

    generators: list[str] = field(default_factory=list)  # specs, see `Generator.parse`
    n: int = field(default=4, metadata={"help": "Traces per problem and generator."})
    temperature: float = field(default=0.8, metadata={"help": "Generation temperature."})
    top_p: float = field(default=0.95, metadata={"help": "Generation top-p."})
    max_tokens: int = field(default=4096, metadata={"help": "Generation max tokens."})
    k: int = field(default=4, metadata={"help": "Pairs per problem, at most."})
    seed: int = field(default=0, metadata={"help": "Seed of the pair sampling."})
    verify_timeout: float = field(default=5.0, metadata={
        "help": "Seconds per verified answer (hard, wall clock; llm verifier: per request)."})
    verify_workers: int | None = field(default=None, metadata={"help": "Verifier processes (default: min(4, CPUs))."})
    verifier: str = field(default="math", metadata={
        "help": "Answer checker: math, choice, llm:URL[,URL...] (docs/bon-and-rl.md, Verifiers)."})
    work_dir: str | None = field(default=None, metadata={"help": "Stage stores and cache (default: <out>.work)."})
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def validate(self) -> list[Generator]:
        if not self.generators:
            raise ValueError("no generator: pass --generator [NAME=]MODEL[@BASE_URL] at least once")
        gens = [Generator.parse(s) for s in self.generators]
        if len({g.name for g in gens}) != len(gens):
            raise ValueError("generator names must be distinct (use NAME=MODEL@URL)")
        if self.n < 1 or self.k < 1:
            raise ValueError("n and k must be >= 1")
        self.make_verifier()  # a bad spec fails before any generation
        self.judge.validate()
        return gens

    def make_verifier(self) -> Verifier:
        return load_verifier(self.verifier, timeout=self.verify_timeout, workers=self.verify_workers)


@dataclass
class Problem:
    id: str
    prompt: str
    gold: str


def load_problems(path: str | os.PathLike) -> list[Problem]:
    """Problems with a prompt (`prompt`/`question`/`problem`) and a gold answer (`gold`/`answer`/`solution`)."""
    out, seen = [], set()
    for line, rec in iter_records(path):
        if isinstance(rec, InputError):
            raise rec
        pk = first_field(rec, PROMPT_FIELDS)
        gk = first_field(rec, GOLD_FIELDS)
        if pk is None:
            raise InputError(f"missing prompt (one of {', '.join(PROMPT_FIELDS)})", file=path, line=line)
        if gk is None:
            raise InputError(f"missing gold answer (one of {', '.join(GOLD_FIELDS)})", file=path, line=line)
        for k in (pk, gk):
            if not isinstance(rec[k], str) or not rec[k].strip():
                raise InputError("expected a non-empty string", file=path, line=line, field=k)
        pid = rec.get("id", rec.get("problem_id", str(line)))
        if not isinstance(pid, (str, int)) or isinstance(pid, bool):
            raise InputError("expected a string or integer", file=path, line=line, field="id")
        pid = str(pid)
        if any(c in pid for c in "#|"):
            raise InputError("'#' and '|' are reserved in ids", file=path, line=line, field="id")
        if pid in seen:
            raise InputError(f"duplicate id {pid!r}", file=path, line=line, field="id")
        seen.add(pid)
        out.append(Problem(pid, rec[pk], rec[gk]))
    return out


def sample_pairs(problem_id: str, traces: list[dict[str, Any]], k: int, seed: int) -> list[tuple[dict, dict]]:
    """At most `k` pairs of distinct correct traces, cross-generator pairs first, sides shuffled.

    Deterministic in (`problem_id`, the trace ids, `seed`), so a resumed run pairs exactly as before.
    """
    rng = random.Random(hashlib.sha256(f"{seed}|{problem_id}".encode()).digest())
    traces = sorted(traces, key=lambda t: t["id"])
    cands = [(a, b) for a, b in itertools.combinations(traces, 2) if a["reasoning"] != b["reasoning"]]
    rng.shuffle(cands)
    cands.sort(key=lambda ab: ab[0]["generator"] == ab[1]["generator"])  # stable: cross-generator first
    return [(a, b) if rng.random() < 0.5 else (b, a) for a, b in cands[:k]]


def _length_bias(kept: list[dict[str, Any]]) -> dict[str, Any]:
    decided = [r for r in kept if r["lengths"]["chosen"] != r["lengths"]["rejected"]]
    shorter = sum(1 for r in decided if r["lengths"]["chosen"] < r["lengths"]["rejected"])
    return {"kept_with_different_lengths": len(decided), "shorter_won": shorter,
            "shorter_won_rate": shorter / len(decided) if decided else None}


def _merge_usage(into: dict[str, Usage], usage: dict[str, Usage], rename: dict[str, str] | None = None) -> None:
    for stage, u in usage.items():
        mine = into.setdefault((rename or {}).get(stage, stage), Usage())
        for name, v in vars(u).items():
            setattr(mine, name, getattr(mine, name) + v)


class Builder:
    """One build: its stores, clients and counters (see the module docstring for the stages)."""

    def __init__(self, problems_path: str | os.PathLike, out_path: str | os.PathLike, judge_llm: LLMConfig,
                 cfg: BuildConfig, on_progress: Progress | None = None):
        self.gens = cfg.validate()
        self.problems = load_problems(problems_path)
        self.out_path = Path(out_path)
        self.work = Path(cfg.work_dir or f"{out_path}.work")
        self.cfg = cfg
        self.cache = str(self.work / "llm-cache.sqlite")
        # Resolved now, so a missing server or model fails before any work is done.
        self.judge_llm = LLMConfig(**{**vars(judge_llm.resolved()), "cache": self.cache})
        self.work.mkdir(parents=True, exist_ok=True)
        self.progress = on_progress or (lambda stage, done, total: None)
        self.usage: dict[str, Usage] = {}
        self.notes: list[str] = []

    def _client(self, gen: Generator) -> LLMClient:
        base = self.judge_llm
        return LLMClient(LLMConfig(**{**vars(base), "base_url": gen.base_url or base.base_url, "model": gen.model}))

    async def generate(self, store: ResumableJsonl) -> None:
        todo = [(p, g, s) for p in self.problems for g in self.gens for s in range(self.cfg.n)
                if f"{p.id}#{g.name}#{s}" not in store]
        total = len(self.problems) * len(self.gens) * self.cfg.n
        done = total - len(todo)
        self.progress("generate", done, total)
        clients = {g.name: self._client(g) for g in self.gens}
        for c in clients.values():
            await c.__aenter__()
        try:
            async def one(p: Problem, g: Generator, s: int) -> None:
                nonlocal done
                c = await clients[g.name].chat([P.user(P.generate_user(p.prompt))], temperature=self.cfg.temperature,
                                               top_p=self.cfg.top_p, max_tokens=self.cfg.max_tokens, sample=s,
                                               stage="generate")
                reasoning, answer = split_response(c.text)
                store.add({"id": f"{p.id}#{g.name}#{s}", "problem_id": p.id, "generator": g.name, "sample": s,
                           "response": c.text, "reasoning": reasoning, "finish_reason": c.finish_reason,
                           "tokens": c.completion_tokens})
                done += 1
                self.progress("generate", done, total)
            await gather_limited(one(*t) for t in todo)
        finally:
            for c in clients.values():
                _merge_usage(self.usage, c.usage)
                await c.__aexit__(None, None, None)

    def verify(self, traces: list[dict[str, Any]], store: ResumableJsonl) -> None:
        with self.cfg.make_verifier() as checker:
            self._verify_with(checker, traces, store)

    def _verify_with(self, checker: Verifier, traces: list[dict[str, Any]], store: ResumableJsonl) -> None:
        from ..verify import extract_answer

        gold = {p.id: p.gold for p in self.problems}
        prompt = {p.id: p.prompt for p in self.problems}
        todo = [t for t in traces if t["id"] not in store]
        pids = sorted({t["problem_id"] for t in todo})
        if isinstance(checker, MathVerifier):
            # A gold answer math-verify cannot read would silently mark every trace wrong: check each against
            # itself (in the pool, like the traces) and say so.
            check = checker.verify_batch_report([f"\\boxed{{{gold[p]}}}" for p in pids],
                                                [gold[p] for p in pids])
            for pid, ok in zip(pids, check.results):
                if not ok:
                    self.notes.append(f"problem {pid!r}: math-verify cannot read the gold answer "
                                      f"{gold[pid]!r}; its traces count as wrong")
        done = len(traces) - len(todo)
        self.progress("verify", done, len(traces))
        chunk = 64  # each chunk is stored before the next starts, so a kill loses at most one chunk of work
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            report = checker.verify_batch_report([t["response"] for t in part],
                                                 [gold[t["problem_id"]] for t in part],
                                                 [prompt[t["problem_id"]] for t in part])
            recs = []
            for t, ok in zip(part, report.results):
                answer = extract_answer(t["response"])
                rec = {"id": t["id"], "correct": bool(ok), "answer": answer}
                if answer is None:
                    rec["note"] = "no final answer found after the reasoning"
                recs.append(rec)
            store.add_many(recs)
            if report.failed:
                self.notes.append(f"verify: {report.timeouts} items timed out after "
                                  f"{self.cfg.verify_timeout}s, {report.errors} failed and {report.unparseable} "
                                  "got no verdict; counted as wrong")
            done += len(part)
            self.progress("verify", done, len(traces))

    def pairs(self, traces: list[dict[str, Any]], verified: dict[str, dict]) -> list[PairInput]:
        by_problem: dict[str, list[dict]] = {}
        for t in traces:
            if verified.get(t["id"], {}).get("correct") and t["reasoning"].strip():
                by_problem.setdefault(t["problem_id"], []).append(t)
        prompts = {p.id: p.prompt for p in self.problems}
        out = []
        for pid in sorted(by_problem):
            for a, b in sample_pairs(pid, by_problem[pid], self.cfg.k, self.cfg.seed):
                out.append(PairInput(id=f"{pid}|{a['id']}|{b['id']}", prompt=prompts[pid], a=a["reasoning"],
                                     b=b["reasoning"], extra={
                                         "problem_id": pid, "a_id": a["id"], "b_id": b["id"],
                                         "generators": {"a": a["generator"], "b": b["generator"]},
                                         "lengths": {"a": len(a["reasoning"]), "b": len(b["reasoning"])}}))
        return out

    async def judge(self, pairs: list[PairInput], store: ResumableJsonl) -> None:
        todo = [p for p in pairs if p.id not in store]
        done = len(pairs) - len(todo)
        self.progress("judge", done, len(pairs))

        def add(rec: dict[str, Any]) -> None:
            nonlocal done
            store.add({**rec, **extra[rec["id"]]})
            done += 1
            self.progress("judge", done, len(pairs))

        extra = {p.id: p.extra for p in pairs}
        async with LLMClient(self.judge_llm) as llm:
            try:
                await judge_many(llm, todo, self.cfg.judge, add)
            finally:
                _merge_usage(self.usage, llm.usage)

    def write(self, pairs: list[PairInput], verdicts: dict[str, dict]) -> list[dict[str, Any]]:
        rows = []
        for p in pairs:
            v = verdicts.get(p.id)
            if v is None or v["winner"] not in ("a", "b"):
                continue
            w, lose = v["winner"], "b" if v["winner"] == "a" else "a"
            side = {"a": p.a, "b": p.b}
            rows.append({
                "id": p.id, "prompt": p.prompt, "chosen": side[w], "rejected": side[lose],
                "problem_id": p.extra["problem_id"],
                "chosen_id": p.extra[f"{w}_id"], "rejected_id": p.extra[f"{lose}_id"],
                "generators": {"chosen": p.extra["generators"][w], "rejected": p.extra["generators"][lose]},
                "lengths": {"chosen": p.extra["lengths"][w], "rejected": p.extra["lengths"][lose]},
                "dimensions": {d.key: [vote["dimensions"][d.key]["decision"] == w for vote in v["votes"]]
                               for d in P.DIMENSIONS},
                "votes": [{"order": vote["order"], "repeat": vote["repeat"], "chosen_won": vote["decision"] == w}
                          for vote in v["votes"]],
                "judge_tokens": v["tokens"],
            })
        write_jsonl(self.out_path, rows)
        return rows

    async def _run(self) -> dict[str, Any]:
        with ResumableJsonl(self.work / "traces.jsonl") as tstore:
            await self.generate(tstore)
            traces = list(tstore.records())
        with ResumableJsonl(self.work / "verified.jsonl") as vstore:
            self.verify(traces, vstore)
            verified = {r["id"]: r for r in vstore.records()}
        pairs = self.pairs(traces, verified)
        with ResumableJsonl(self.work / "verdicts.jsonl") as jstore:
            await self.judge(pairs, jstore)
            ids = {p.id for p in pairs}
            verdicts = {r["id"]: r for r in jstore.records() if r["id"] in ids}
        rows = self.write(pairs, verdicts)
        judged = summarize_verdicts(verdicts.values())
        correct = sum(1 for r in verified.values() if r["correct"])
        summary = {
            "problems": len(self.problems), "traces": len(traces), "verified_correct": correct,
            "no_answer": sum(1 for r in verified.values() if r["answer"] is None),
            "problems_with_pairs": len({p.extra["problem_id"] for p in pairs}),
            "pairs_judged": judged["pairs"], "kept": len(rows),
            "reasons": {r: judged[r] for r in ("consistent", "tie", "inconsistent", "invalid")},
            "rates": judged["rates"], "calls_saved_by_early_stop": judged["calls_saved"],
            "length_bias": _length_bias(rows),
            "tokens_this_run": {stage: u.to_dict() for stage, u in sorted(self.usage.items())},
            "output": str(self.out_path), "work_dir": str(self.work), "notes": self.notes,
        }
        write_json(self.work / "summary.json", summary)
        return summary

    def run(self) -> dict[str, Any]:
        return asyncio.run(self._run())


def build_pairs(problems_path: str | os.PathLike, out_path: str | os.PathLike, judge_llm: LLMConfig,
                cfg: BuildConfig, *, on_progress: Progress | None = None) -> dict[str, Any]:
    """Run (or resume) a build; returns the summary (also written to `<work_dir>/summary.json`)."""
    return Builder(problems_path, out_path, judge_llm, cfg, on_progress).run()
