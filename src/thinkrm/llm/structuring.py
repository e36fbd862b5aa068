"""LLM structurers for the reasoning DAG, and the LLM macro view.

Both plug into the state machine of `thinkrm.dag` through the `thinkrm.structurers` protocols (`Structurer`,
`BatchStructurer`): they only
*propose* actions, the state machine validates and applies them, so whatever a model answers the DAG is
valid.

* `LLMStructurer` (`structurer="llm"`), the method's per-step protocol. For each step the model sees the last
  8 main-path steps, the current step and up to 5 other open leaves, explains briefly and answers
  `<|action|>continue|backtrack|merge` and `<|previous|>ids`. A round draws `votes_per_round` samples; after
  each round, if one action has a strict plurality among the valid answers so far it wins, else another
  round is drawn, up to `max_rounds`. A tie left after the last round goes to continue > backtrack > merge;
  no valid answer at all means continue (failing closed to the plainest structure).
* `BatchLLMStructurer` (`structurer="llm-batch"`), ours: one call labels a window of `batch_size` upcoming
  steps with a JSON object (sent as a `response_format` JSON schema where the server supports it, always
  checked by a strict parser). An unparsable answer is re-asked `invalid_retries` times
  (`thinkrm.llm.client.ask_until_valid`), then its steps continue. Far fewer calls and tokens per trace
  (docs/llm-pipeline.md has the measured ratio).
* `summarize_dag` replaces the extractive summaries of a DAG's super-nodes with one-sentence LLM summaries
  (one call per trace); `DAG.macro_view()` then prefixes each with its role tag.

Validity of an answer (per-step mode): backtrack names exactly one step that is on the main path and is not
the current tip; merge names >= 2 distinct steps, at least one an open leaf of another branch and at most
one on the main path. Invalid answers do not vote.

The structurers are synchronous, as the protocol is. Built by name (`build_dag(text, "llm")`) they read the
server from `THINKRM_LLM_*`; inside an async pipeline `build_dag_async` shares that pipeline's client (its
cache, concurrency bound and token accounting) by running the DAG walk in a worker thread. Step texts longer
than `max_step_chars` are cut to head + tail (`thinkrm.llm.prompts.clip`), so one huge step cannot blow the
context window.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..structurers import BatchStructurer, Proposal, StepRef, Structurer, View
from . import prompts as P
from .client import LLMClient, LLMConfig, Usage, ask_until_valid
from .prompts import clip

if TYPE_CHECKING:
    from ..dag import DAG
    from ..steps import Step

T = TypeVar("T")
ACTIONS = ("continue", "backtrack", "merge")  # also the tie-break priority
_ACTION_RE = re.compile(r"<\|action\|>\s*(continue|backtrack|merge)\b", re.I)
_PREVIOUS_RE = re.compile(r"<\|previous\|>[ \t]*([^\n]*)")
_FENCE_RE = re.compile(r"^```(?:json)?\s*|\s*```$")


class _Runner:
    """Runs an LLM coroutine for a synchronous caller.

    With a shared client and its event loop (the caller is a worker thread of an async pipeline), the call is
    scheduled on that loop. Standalone, the runner starts its own loop in a daemon thread with one client
    from `config` on first use, so consecutive calls reuse connections, the cache and one usage account.
    """

    def __init__(self, llm: LLMClient | None, loop: asyncio.AbstractEventLoop | None, config: LLMConfig | None):
        self.llm, self.loop = llm, loop
        self.config = config or LLMConfig()
        self._owned = False
        self.closed_usage: dict[str, Usage] = {}  # what the runner's own client spent, kept after close

    def __call__(self, fn: Callable[[LLMClient], Awaitable[T]]) -> T:
        if self.llm is None:
            self._start()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:  # waiting here would block the very loop that must answer
            raise RuntimeError("an LLM structurer sharing a client cannot run on that client's event loop; "
                               "use `await thinkrm.llm.structuring.build_dag_async(...)`")
        return asyncio.run_coroutine_threadsafe(fn(self.llm), self.loop).result()

    def _start(self) -> None:
        client = LLMClient(self.config)  # resolves the config first: a missing server fails here, clearly
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, daemon=True, name="thinkrm-llm")
        self._thread.start()
        asyncio.run_coroutine_threadsafe(client.__aenter__(), loop).result()
        self.llm, self.loop, self._owned = client, loop, True

    def close(self) -> None:
        if self._owned:
            asyncio.run_coroutine_threadsafe(self.llm.__aexit__(None, None, None), self.loop).result()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.close()
            self.closed_usage = self.llm.usage
            self.llm, self.loop, self._owned = None, None, False


class _LLMBase:
    stage = "structure"

    def __init__(self, *, llm: LLMClient | None = None, loop: asyncio.AbstractEventLoop | None = None,
                 config: LLMConfig | None = None, temperature: float = 0.7, max_tokens: int = 512,
                 max_step_chars: int = 1500):
        self._run = _Runner(llm, loop, config)
        self.temperature, self.max_tokens, self.max_step_chars = temperature, max_tokens, max_step_chars
        self.prompt = ""
        self.calls = 0  # this structurer's calls, for per-trace accounting
        self.invalid_answers = 0

    @property
    def usage(self) -> dict[str, Usage]:
        """Usage of the client this structurer calls (shared with the pipeline when it was given one)."""
        return self._run.llm.usage if self._run.llm is not None else self._run.closed_usage

    def close(self) -> None:
        """Close the structurer's own client, if it opened one (a shared client is its owner's to close)."""
        self._run.close()

    def __enter__(self) -> _LLMBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, steps: Sequence[Step], *, prompt: str = "") -> None:
        self.prompt = prompt

    def _ref(self, s: StepRef) -> tuple[int, str]:
        return s.id, clip(s.text, self.max_step_chars)


def parse_step_answer(text: str, view: View) -> Proposal | None:
    """The proposal in a per-step answer, or None when it is missing or breaks the validity rules."""
    actions = _ACTION_RE.findall(text)
    if not actions:
        return None
    action = actions[-1].lower()
    if action == "continue":
        return Proposal("continue")
    prev = _PREVIOUS_RE.findall(text)
    ids = [int(x) for x in re.findall(r"\d+", prev[-1])] if prev else []
    main = set(view.main_path)
    if action == "backtrack":
        if len(ids) != 1 or ids[0] not in main or ids[0] == view.tip.id:
            return None
        return Proposal("backtrack", (ids[0],))
    distinct = sorted(set(ids))
    leaves = {s.id for s in view.open_leaves}
    on_main = [i for i in distinct if i in main]
    on_leaves = [i for i in distinct if i in leaves]
    if len(distinct) < 2 or not on_leaves or len(on_main) > 1 or len(on_main) + len(on_leaves) != len(distinct):
        return None
    return Proposal("merge", tuple(distinct))


def decide(votes: Sequence[Proposal]) -> Proposal | None:
    """The winning proposal if one action has a strict plurality, else None (another round is needed)."""
    counts = Counter(v.action for v in votes)
    if not counts:
        return None
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None
    return _pick(votes, ranked[0][0])


def _pick(votes: Sequence[Proposal], action: str) -> Proposal:
    """The most common target set among the votes for `action` (earliest on ties)."""
    targets = Counter(v.targets for v in votes if v.action == action)
    return Proposal(action, targets.most_common(1)[0][0])  # type: ignore[arg-type]


def tie_break(votes: Sequence[Proposal]) -> Proposal:
    """After the last round: the most voted action, ties to continue > backtrack > merge; none -> continue."""
    counts = Counter(v.action for v in votes)
    if not counts:
        return Proposal("continue", reason="no valid answer")
    top = max(counts.values())
    action = next(a for a in ACTIONS if counts.get(a) == top)
    return _pick(votes, action)


class LLMStructurer(_LLMBase):
    """The method's per-step protocol (see the module docstring)."""

    name = "llm"

    def __init__(self, *, votes_per_round: int = 3, max_rounds: int = 5, **kw: Any):
        super().__init__(**kw)
        if votes_per_round < 1 or max_rounds < 1:
            raise ValueError("votes_per_round and max_rounds must be >= 1")
        self.votes_per_round, self.max_rounds = votes_per_round, max_rounds

    def propose(self, view: View) -> Proposal:
        tip = view.tip.id
        leaves = [self._ref(s) for s in view.open_leaves if s.id != tip]
        user = P.step_user([self._ref(s) for s in view.window], self._ref(view.step), leaves)
        if self.prompt:
            user = f"Problem:\n{self.prompt}\n\n{user}"
        messages = [P.system(P.STEP_SYSTEM), P.user(user)]
        votes: list[Proposal] = []
        for rnd in range(self.max_rounds):
            first = rnd * self.votes_per_round

            async def draw(llm: LLMClient, first: int = first) -> list:
                return await asyncio.gather(*(
                    llm.chat(messages, temperature=self.temperature, max_tokens=self.max_tokens,
                             sample=first + k, stage=self.stage) for k in range(self.votes_per_round)))
            texts = self._run(draw)
            self.calls += len(texts)
            for c in texts:
                p = parse_step_answer(c.text, view)
                if p is None:
                    self.invalid_answers += 1
                else:
                    votes.append(p)
            winner = decide(votes)
            if winner is not None:
                return winner
        return tie_break(votes)


def parse_batch_answer(text: str, upcoming: Sequence[StepRef]) -> list[Proposal] | None:
    """Proposals for `upcoming` from a JSON answer, or None if it is not exactly the requested labels.

    Strict: one JSON object (a surrounding ```json fence is tolerated), `steps` listing the requested ids in
    order, each with a known action and integer `previous` ids. Whether the targets make sense is left to
    the state machine, which sees the DAG as it grows inside the window.
    """
    try:
        data = json.loads(_FENCE_RE.sub("", text.strip()))
        items = data["steps"]
        if not isinstance(items, list) or [it["id"] for it in items] != [s.id for s in upcoming]:
            return None
        out = []
        for it in items:
            action, prev = it["action"], it.get("previous", [])
            if action not in ACTIONS or not isinstance(prev, list) or \
                    not all(isinstance(x, int) and not isinstance(x, bool) for x in prev):
                return None
            out.append(Proposal(action, tuple(sorted(set(prev))) if action == "merge" else tuple(prev)))
        return out
    except (ValueError, KeyError, TypeError):
        return None


class BatchLLMStructurer(_LLMBase):
    """One JSON call labels `batch_size` upcoming steps (see the module docstring)."""

    name = "llm-batch"

    def __init__(self, *, batch_size: int = 16, invalid_retries: int = 2, **kw: Any):
        kw.setdefault("temperature", 0.0)
        kw.setdefault("max_tokens", 64 + 24 * batch_size)
        super().__init__(**kw)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size, self.invalid_retries = batch_size, invalid_retries

    def propose_batch(self, view: View, upcoming: Sequence[StepRef]) -> Sequence[Proposal]:
        seen = {s.id: s for s in (*view.window, *view.open_leaves)}
        context = [self._ref(seen[i]) for i in sorted(seen)]
        user = P.batch_user(context, [self._ref(s) for s in upcoming])
        if self.prompt:
            user = f"Problem:\n{self.prompt}\n\n{user}"
        messages = [P.system(P.BATCH_SYSTEM), P.user(user)]
        answer = self._run(lambda llm: ask_until_valid(
            llm, messages, lambda text: parse_batch_answer(text, upcoming), retries=self.invalid_retries,
            temperature=self.temperature, max_tokens=self.max_tokens, stage=self.stage,
            json_schema=P.BATCH_SCHEMA))
        self.calls += answer.attempts
        self.invalid_answers += answer.attempts - (0 if answer.value is None else 1)
        if answer.value is not None:
            return answer.value
        return [Proposal("continue", reason="no valid answer")] * len(upcoming)


def make_structurer(name: str, llm: LLMClient, loop: asyncio.AbstractEventLoop,
                    **options: Any) -> str | Structurer | BatchStructurer:
    """An LLM structurer sharing `llm` (on `loop`), or `name` itself for the non-LLM structurers."""
    if name == "llm":
        return LLMStructurer(llm=llm, loop=loop, **options)
    if name == "llm-batch":
        return BatchLLMStructurer(llm=llm, loop=loop, **options)
    return name


async def build_dag_async(llm: LLMClient, text: str, structurer: str = "heuristic", *, prompt: str = "") -> DAG:
    """`build_dag` from async code: LLM structurers use `llm`; the walk runs in a worker thread."""
    from ..dag import build_dag

    impl = make_structurer(structurer, llm, asyncio.get_running_loop())
    return await asyncio.to_thread(build_dag, text, impl, prompt=prompt)


def parse_summaries(text: str, ids: Sequence[int]) -> dict[int, str] | None:
    """`{id: summary}` from a JSON answer covering exactly `ids`, or None."""
    try:
        data = json.loads(_FENCE_RE.sub("", text.strip()))
        out = {int(it["id"]): " ".join(str(it["summary"]).split()) for it in data["summaries"]}
    except (ValueError, KeyError, TypeError):
        return None
    if sorted(out) != sorted(ids) or not all(out.values()):
        return None
    return out


async def summarize_dag(llm: LLMClient, dag: DAG, prompt: str, *, max_chars: int = 1500,
                        max_tokens: int = 1024, invalid_retries: int = 1) -> bool:
    """Replace the super-node summaries of `dag` with one-sentence LLM summaries (one call per trace).

    Returns whether it did; an answer that is not valid JSON for exactly the super-nodes, after the retries,
    leaves the extractive summaries in place (and `dag.meta["summaries"]` says so).
    """
    ids = [s.id for s in dag.supernodes]
    if not ids:
        return False
    parts = [(s.id, clip(dag.supernode_text(s.id), max_chars)) for s in dag.supernodes]
    messages = [P.system(P.SUMMARY_SYSTEM), P.user(P.summary_user(prompt, parts))]
    answer = await ask_until_valid(llm, messages, lambda text: parse_summaries(text, ids),
                                   retries=invalid_retries, temperature=0.0, max_tokens=max_tokens,
                                   stage="summary", json_schema=P.SUMMARY_SCHEMA)
    if answer.value is None:
        dag.meta["summaries"] = "extractive (LLM answer invalid)"
        return False
    for s in dag.supernodes:
        s.summary = answer.value[s.id]
    dag.meta["summaries"] = "llm"
    return True
