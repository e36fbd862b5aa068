"""Structurers: who decides how each step attaches to the reasoning DAG.

The state machine in `thinkrm.dag` owns the DAG being built (main path, open leaves, attachment pool) and
the validation of every action; a structurer only *proposes*. That split lets a cheap cue-based heuristic,
a sentence-embedding variant and an LLM (`thinkrm.llm.structuring`) share one state machine and one set of
guarantees: whatever a structurer answers, the result is a valid DAG.

Protocol, per trace (written down as the `Structurer` and `BatchStructurer` protocols below, the types
`get_structurer` returns):

1. `start(steps, prompt=...)` once, so a structurer can precompute (embed all steps in one batch, ...);
2. then for each step after the first, either `propose(view)` returning one `Proposal`, or, for a structurer
   that defines `propose_batch(view, upcoming)`, one call labelling several upcoming steps at once. The
   state machine validates and applies those proposals in order, then asks again from the first step not
   yet labelled.

Structurers are chosen by name with `get_structurer` ("heuristic", "embedding", "llm", "llm-batch") or
passed as objects. Names resolve lazily, so the LLM client is imported only when asked for.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .steps import Step

Action = Literal["continue", "backtrack", "merge"]


@dataclass(frozen=True)
class StepRef:
    """A step as a structurer sees it: its id (index in the trace) and text."""

    id: int
    text: str


@dataclass(frozen=True)
class View:
    """The state of the DAG when a step is placed: everything a structurer may base its proposal on.

    `window` is the attachment pool's main-path part (the last 8 main-path steps, oldest first, the current
    tip last); `open_leaves` its other part (up to 5 ends of abandoned branches, oldest first). `main_path`
    holds the ids of the whole main path, root first, for structurers that want to backtrack further than
    the window (the state machine accepts any earlier main-path step).
    """

    step: StepRef
    window: tuple[StepRef, ...]
    open_leaves: tuple[StepRef, ...]
    main_path: tuple[int, ...]

    @property
    def tip(self) -> StepRef:
        return self.window[-1]


@dataclass(frozen=True)
class Proposal:
    """An action for one step. `targets`: the backtrack target, or the >= 2 ids a merge joins."""

    action: Action = "continue"
    targets: tuple[int, ...] = ()
    reason: str = ""  # e.g. the cue that fired; kept for inspection, never used for validation


@runtime_checkable
class Structurer(Protocol):
    """A structurer that proposes one action per step (`HeuristicStructurer`, `LLMStructurer`, ...)."""

    name: str

    def start(self, steps: Sequence[Step], *, prompt: str = "") -> None:
        """Called once per trace before any proposal."""

    def propose(self, view: View) -> Proposal:
        """The action for `view.step`."""


@runtime_checkable
class BatchStructurer(Protocol):
    """A structurer that labels a whole window of upcoming steps per call (e.g. one LLM request)."""

    name: str

    def start(self, steps: Sequence[Step], *, prompt: str = "") -> None: ...

    def propose_batch(self, view: View, upcoming: Sequence[StepRef]) -> Sequence[Proposal]:
        """Proposals for `upcoming` (which starts with `view.step`), in order; it may return fewer."""


# name -> "module:factory"; each factory takes **options.
STRUCTURERS: dict[str, str] = {
    "heuristic": "thinkrm.structurers:HeuristicStructurer",
    "embedding": "thinkrm.structurers:EmbeddingStructurer",
    "llm": "thinkrm.llm.structuring:LLMStructurer",
    "llm-batch": "thinkrm.llm.structuring:BatchLLMStructurer",
}


def get_structurer(spec: str | Structurer | BatchStructurer, **options: Any) -> Structurer | BatchStructurer:
    """A structurer by name (see `STRUCTURERS`), or `spec` itself when it already is one.

    The result follows `Structurer` (it has `propose`) or `BatchStructurer` (it has `propose_batch`). An
    object passed in is checked only for one of those two methods; it also needs `start`, while `name` is
    optional (`build_dag` falls back to the class name).
    """
    if not isinstance(spec, str):
        if not (hasattr(spec, "propose") or hasattr(spec, "propose_batch")):
            raise ValueError(f"{type(spec).__name__} is not a structurer (it needs propose or propose_batch)")
        return spec
    target = STRUCTURERS.get(spec)
    if target is None:
        raise ValueError(f"unknown structurer {spec!r}; choose one of {', '.join(STRUCTURERS)}")
    module_name, _, factory = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise ValueError(f"structurer {spec!r} needs {module_name}, which is not available in this "
                         "installation") from None
    try:
        cls = getattr(module, factory)
    except AttributeError:
        raise ValueError(f"structurer {spec!r}: {module_name} has no {factory}") from None
    return cls(**options)


# --- cues ------------------------------------------------------------------------------------------------
# Matched against the opening of a step (lowercased, markdown stripped). A merge joins branch results; a
# restart tries a new approach from an earlier point; a correction redoes something that was wrong; a check
# re-examines an earlier result; a conclusion ("So", "Therefore") may draw on earlier branches.
_MERGE_STRONG = re.compile(
    r"\b(combining|putting (it|this|these|that|everything|them|all)( \w+)? together"
    r"|in (both|all|either) cases?|either way|both (methods|approaches|ways|cases|results|answers)|comparing"
    r"|in both|so both|all (three|the) (methods|approaches|cases)|consolidating|together with"
    r"|from (both|all))\b")
_MERGE_WEAK = re.compile(r"(so|therefore|thus|hence|in summary|in conclusion|overall|to summari[sz]e|finally"
                         r"|so the (final )?answer|the final answer)\b")
_RESTART = re.compile(
    r"(alternatively|another (approach|way|method|idea|strategy)|(let me|let's|let us|i'll|maybe i should|"
    r"maybe we can) (try|use|consider) (a different|another|a new|an alternative|instead)|instead\b|let me "
    r"(start over|think again|try again|approach this differently|reconsider)|let's (start over|approach)"
    r"|on second thought|let me think differently|maybe there'?s (a|another) (better|simpler|different))")
_CORRECT = re.compile(
    r"(wait|no[,.!]|no\b,? (that|this|it)|actually|hold on|oops|but wait|that('s| is| was) (wrong|not right|"
    r"incorrect|a mistake)|i made (a|an) (mistake|error)|that can'?t be (right|correct)|oh[,!])")
_CHECK = re.compile(
    r"(hmm|let me (check|verify|double[- ]?check|re-?examine|recheck|confirm|re-?calculate|recompute"
    r"|make sure|re-?verify|see if|test)|let's (check|verify|double[- ]?check|confirm|make sure)"
    r"|to (verify|check|confirm)|check(ing)?\b|verif(y|ying|ication)\b|double[- ]?check|but let me)")
_INTERJECTION = re.compile(
    r"(wait|hmm+|hold on|but wait|well|ok|okay|oh)\b[\s,.!:;-]*(?:(?:wait|hmm+|but)\b[\s,.!:;-]*)*")
_QUESTION = re.compile(r"[^.!?\n]{0,100}\?")
_DECORATION = re.compile(r"[\s*#>_•\"“”(\[]+")  # hyphens and apostrophes stay: "re-examine", "let's"


def cue_of(text: str) -> str | None:
    """The kind of discourse cue a step opens with: 'merge', 'conclude', 'restart', 'correct', 'check'."""
    head = _DECORATION.sub(" ", text[:120]).strip(" -").lower()
    if _MERGE_STRONG.search(head, 0, 60):  # "So, in both cases", "Therefore, combining": anywhere early
        return "merge"
    # "Wait, let me check" is a check and "Hmm, no, that's wrong" a correction: an interjection says only
    # that the model paused, so what follows it decides; with nothing recognisable after it, "wait"
    # corrects and "hmm" checks.
    m = _INTERJECTION.match(head)
    rest = head[m.end():] if m else head
    for kind, pattern in (("restart", _RESTART), ("correct", _CORRECT), ("check", _CHECK),
                          ("conclude", _MERGE_WEAK)):
        if pattern.match(rest):
            return kind
    if m is None or m.group(1) in ("well", "ok", "okay"):  # these only pace the text
        return None
    if m.group(1).startswith("hmm") or _QUESTION.match(rest):  # "Wait, is 27 really the smallest?"
        return "check"
    return "correct"


# --- lexical/numeric overlap ---------------------------------------------------------------------------
_NUMBER_TOKEN = re.compile(r"\d+(?:\.\d+)?")
_WORD_TOKEN = re.compile(r"[A-Za-z]{3,}")
_SMALL_NUMBERS = frozenset(("0", "1", "2"))
_STOP = frozenset(
    "the and for that this with from are was were which then than have has had not but can will would should "
    "could let lets let's we our you your its it's they them there their what when where how why also into "
    "more most some such only just very each both any all one two get got use using used now since because "
    "so thus therefore hence wait hmm okay yes maybe perhaps actually alternatively check verify think need "
    "make sure again right same value find given equal equals means step first second next".split())
_HEAD_CHARS = 400  # the opening of a step says what it is about
_BODY_CHARS = 1500  # a candidate target is represented by its head and tail (where its result is)


class _Bag(NamedTuple):
    """A step's weighted token set, kept as two sets so that an overlap is two C-level set intersections
    instead of a Python loop over a dict (the structurer compares each step with up to 9 others)."""

    words: frozenset[str]  # weight 1
    numbers: frozenset[str]  # weight 2, since a repeated number is strong evidence of a reference
    norm2: int  # sum of squared weights


def _tokens(text: str) -> _Bag:
    """Weighted token set of `text`: its words (3+ letters, stopwords dropped) and numbers other than 0-2."""
    # Numbers and words are made of different characters, so scanning for each apart finds the same tokens
    # as one alternation would.
    words = frozenset(map(str.lower, _WORD_TOKEN.findall(text))) - _STOP
    numbers = frozenset(_NUMBER_TOKEN.findall(text)) - _SMALL_NUMBERS
    return _Bag(words, numbers, len(words) + 4 * len(numbers))


def _overlap(a: _Bag, b: _Bag) -> float:
    """Cosine similarity of two weighted token sets (all sums are small integers, hence exact)."""
    if not a.norm2 or not b.norm2:
        return 0.0
    inter = len(a.words & b.words) + 4 * len(a.numbers & b.numbers)
    if inter == 0:
        return 0.0
    return inter / math.sqrt(a.norm2 * b.norm2)


def _clip(text: str) -> str:
    return text if len(text) <= 2 * _BODY_CHARS else text[:_BODY_CHARS] + "\n" + text[-_BODY_CHARS:]


class CueStructurer:
    """Discourse cues choose the action; a similarity between steps chooses its target.

    - restart ("Alternatively", "another approach"): backtrack to the window step most similar to this
      one, not counting the tip; with no clear match, to the last branching point (else the root);
    - correct ("Wait", "No,", "Actually"): backtrack to the step being corrected; when that is the tip,
      to the tip's parent, so the wrong step becomes a dead end;
    - check ("Let me verify", "Hmm"): continue when it checks the tip (the tip is at least half as similar
      as the best match), else backtrack to the checked step;
    - merge ("Combining", "In both cases") / conclude ("So", "Therefore"): merge the tip with the open
      leaves this step draws on; a conclusion needs clearer evidence: a higher similarity, and at least
      that to the tip (it must use the leaf as much as the branch it continues); with none, continue.

    Subclasses define `similarities(step_id, candidate_ids)`.
    """

    name = "cue"
    min_similarity = 0.12  # below this, "most similar" is noise
    merge_similarity = 0.2
    conclude_similarity = 0.35
    max_merge_leaves = 3
    check_tip_share = 0.5  # a check stays on the tip when the tip is at least this share as similar

    def start(self, steps: Sequence[Step], *, prompt: str = "") -> None:
        raise NotImplementedError

    def similarities(self, step_id: int, candidates: Sequence[int]) -> list[float]:
        raise NotImplementedError

    def propose(self, view: View) -> Proposal:
        kind = cue_of(view.step.text)
        if kind is None:
            return Proposal("continue")
        if kind in ("merge", "conclude"):
            return self._merge(view, kind)
        window = [s.id for s in view.window]
        if len(window) < 2:
            return Proposal("continue", reason=kind)
        sims = self.similarities(view.step.id, window)
        best = max(range(len(window)), key=lambda i: (sims[i], i))
        if kind == "restart":
            earlier = max(range(len(window) - 1), key=lambda i: (sims[i], i))
            if sims[earlier] >= self.min_similarity:
                return Proposal("backtrack", (window[earlier],), reason=kind)
            return Proposal("backtrack", (self._branch_point(view),), reason=kind)
        tip_related = sims[-1] >= self.check_tip_share * sims[best]
        if kind == "check" and (sims[best] < self.min_similarity or tip_related):
            # checking the current result (substituting x = 5 back into the equation reads like the
            # equation too) moves on; only a check clearly about an earlier step goes back to it
            return Proposal("continue", reason=kind)
        if best == len(window) - 1 or sims[best] < self.min_similarity:
            return Proposal("backtrack", (window[-2],), reason=kind)
        return Proposal("backtrack", (window[best],), reason=kind)

    def _merge(self, view: View, kind: str) -> Proposal:
        if not view.open_leaves:
            return Proposal("continue", reason=kind)
        leaves = [s.id for s in view.open_leaves]
        *sims, tip_sim = self.similarities(view.step.id, leaves + [view.tip.id])
        if kind == "merge":
            need = self.merge_similarity
        else:  # a plain "So" must draw on the leaf at least as much as on the branch it continues
            need = max(self.conclude_similarity, tip_sim)
        chosen = sorted((i for i in range(len(leaves)) if sims[i] >= need), key=lambda i: -sims[i])
        if not chosen:
            return Proposal("continue", reason=kind)
        targets = sorted([view.tip.id] + [leaves[i] for i in chosen[:self.max_merge_leaves]])
        return Proposal("merge", tuple(targets), reason=kind)

    @staticmethod
    def _branch_point(view: View) -> int:
        """Where the current approach began: the earliest window step, or the root when it is in reach."""
        return view.main_path[0] if len(view.main_path) <= len(view.window) else view.window[0].id


class HeuristicStructurer(CueStructurer):
    """Cues plus lexical/numeric overlap (no model): the default, ~linear in the trace length."""

    name = "heuristic"

    def __init__(self) -> None:
        self._texts: list[str] = []
        self._heads: list[_Bag | None] = []
        self._bodies: list[_Bag | None] = []

    def start(self, steps: Sequence[Step], *, prompt: str = "") -> None:
        # Token sets are made on first use: only steps that open with a cue compare their head, and only
        # steps that some cue step looks back at need their body.
        self._texts = [s.text for s in steps]
        self._heads = [None] * len(steps)
        self._bodies = [None] * len(steps)

    def _head(self, i: int) -> _Bag:
        head = self._heads[i]
        if head is None:
            head = self._heads[i] = _tokens(self._texts[i][:_HEAD_CHARS])
        return head

    def _body(self, i: int) -> _Bag:
        body = self._bodies[i]
        if body is None:
            text = self._texts[i]
            # a step no longer than its head is its own body
            body = self._bodies[i] = self._head(i) if len(text) <= _HEAD_CHARS else _tokens(_clip(text))
        return body

    def similarities(self, step_id: int, candidates: Sequence[int]) -> list[float]:
        head = self._head(step_id)
        return [_overlap(head, self._body(c)) for c in candidates]


class EmbeddingStructurer(CueStructurer):
    """Cues plus all-MiniLM-L6-v2 similarity: finds the referenced step even when it is paraphrased.

    All steps of a trace are embedded in one batch in `start`, each by its opening (what it is about).
    MiniLM costs ~20 MFLOP per token, so the openings are clipped to share a budget of about
    `budget_chars` characters (~1,500 tokens) per trace: a short trace gets 300 characters per step, a
    30k-character trace of ~170 short steps ~30, which keeps it near a second on a 2-core laptop (see
    docs/steps-and-dag.md for the measurement and the trade-off).
    """

    name = "embedding"
    min_similarity = 0.3
    merge_similarity = 0.45
    conclude_similarity = 0.6
    max_chars = 300  # per step; MiniLM reads ~80 tokens of it
    min_chars = 24
    budget_chars = 5000

    def __init__(self, encoder: Any = None) -> None:
        self._encoder = encoder
        self._emb = None

    def start(self, steps: Sequence[Step], *, prompt: str = "") -> None:
        if self._encoder is None:
            from .embed import get_encoder

            self._encoder = get_encoder()
        clip = max(self.min_chars, min(self.max_chars, self.budget_chars // max(1, len(steps))))
        self._emb = self._encoder.encode([s.text[:clip] for s in steps])

    def similarities(self, step_id: int, candidates: Sequence[int]) -> list[float]:
        emb = self._emb
        return [float(emb[c] @ emb[step_id]) for c in candidates]
