"""ME² analysis: interpretable signals of how a trace reasons, grouped by the four ME² dimensions.

The reward models score a trace with one opaque number; these signals say *why* a trace looks wasteful or
shaky, in counts a person can check against the text: how often it backtracked, how much of it never led to
the answer, how padded its steps are, whether its arithmetic holds. They are cheap on purpose (regexes, word
sets and the DAG, no model), so `thinkrm analyze` can run over thousands of long traces on a laptop.

Every signal is registered in `SIGNALS` with its dimension, its definition and which direction is better;
docs/me2.md is the long form of the same definitions.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any, Literal

from .arithmetic import claims
from .dag import DAG

DIMENSIONS = ("macro_efficiency", "macro_effectiveness", "micro_efficiency", "micro_effectiveness")
Better = Literal["lower", "higher", "neither"]  # "neither": context, not a flaw in either direction
Value = int | float | None


@dataclass(frozen=True)
class SignalDef:
    name: str
    dimension: str
    better: Better
    definition: str


SIGNALS: dict[str, SignalDef] = {s.name: s for s in [
    SignalDef("backtracks", "macro_efficiency", "lower",
              "steps the DAG attaches by backtracking to an earlier main-path step (each one abandons the "
              "current line of thought)"),
    SignalDef("restarts", "macro_efficiency", "lower",
              "backtracks whose target lies in the root super-node, i.e. the trace starts over from the "
              "problem set-up"),
    SignalDef("reopened_branches", "macro_efficiency", "lower",
              "backtracks to a step that an earlier backtrack already returned to: the trace goes back to a "
              "fork it had already reconsidered"),
    SignalDef("off_path_share", "macro_efficiency", "lower",
              "share of steps outside the answer leaf and its ancestors (merged branches included): work "
              "that never fed the answer"),
    SignalDef("dead_ends", "macro_efficiency", "lower",
              "leaf super-nodes other than the answer leaf: branches that were abandoned without feeding "
              "into the answer"),
    SignalDef("path_coherence", "macro_effectiveness", "higher",
              "mean overlap coefficient |A∩B|/min(|A|,|B|) of the content words of consecutive answer-path "
              "super-nodes (null when the path has one node)"),
    SignalDef("question_drift", "macro_effectiveness", "lower",
              "share of steps that share no content word or number with the prompt (null without a prompt)"),
    SignalDef("unsupported_claims", "macro_effectiveness", "lower",
              "hand-waving phrases that assert instead of showing (\"obviously\", \"clearly\", "
              "\"it is easy to see\", \"definitely\", \"without a doubt\", ...) per 1,000 words"),
    SignalDef("unused_givens", "macro_effectiveness", "lower",
              "share of the distinct numbers stated in the prompt (digits or number words) that the reasoning "
              "never mentions: conditions the solution ignored (null without a prompt or when it states none)"),
    SignalDef("words_per_step", "micro_efficiency", "neither",
              "mean whitespace-separated words per step"),
    SignalDef("filler_per_1k", "micro_efficiency", "lower",
              "filler phrases (\"hmm\", \"okay so\", \"let me think\", \"basically\", ...) per 1,000 words"),
    SignalDef("near_duplicate_steps", "micro_efficiency", "lower",
              "steps whose word 3-shingles have Jaccard >= 0.5 with some earlier step (near-verbatim "
              "repetition)"),
    SignalDef("paraphrase_loops", "micro_efficiency", "lower",
              "steps that restate an earlier step in other words: content-word Jaccard >= 0.6 with it while "
              "not a near-duplicate"),
    SignalDef("reverifications", "micro_efficiency", "lower",
              "verification steps (\"let me check/verify\", \"double-check\", \"to confirm\", ...) after the "
              "first one"),
    SignalDef("recheck_phrases", "micro_efficiency", "lower",
              "phrases that redo or re-confirm finished work anywhere in a step (\"again\", \"once more\", "
              "\"recalculate\", \"re-check\", \"let me verify\", \"double-check\", \"confirm\", \"to ensure\", "
              "\"recap\", \"reiterate\", \"revisit\", ...) per 1,000 words"),
    SignalDef("self_corrections", "micro_effectiveness", "lower",
              "explicit admissions of an error (\"no, that's wrong\", \"I made a mistake\", "
              "\"that's incorrect\", ...): each marks a false step earlier"),
    SignalDef("conflicting_values", "micro_effectiveness", "lower",
              "quantities assigned two or more different numbers (\"x = 3\" ... \"x = 5\")"),
    SignalDef("arithmetic_checked", "micro_effectiveness", "neither",
              "numeric claims `a op b = c` (+ - * / ^, chains allowed; LaTeX \\frac, \\binom, \\sqrt, "
              "powers and factorials of numbers) found and evaluated"),
    SignalDef("arithmetic_wrong", "micro_effectiveness", "lower",
              "checked arithmetic claims whose two sides differ (beyond the rounding the right-hand side's "
              "decimals allow)"),
    SignalDef("answer_not_derived", "micro_effectiveness", "lower",
              "1 when the final answer (last `\\boxed{}`, `answer is`, `A:` or `####`) is a number that no "
              "earlier `= value` or computation result states: asserted, not derived; 0 when one does; null "
              "without a numeric final answer"),
    SignalDef("odd_results", "micro_effectiveness", "neither",
              "share of checked arithmetic claims whose result is negative or not a whole number (counts of "
              "people or coins cannot be; in algebra they are normal, so the reward model weighs it)"),
]}

POSTINGS = 64  # steps remembered per shingle/word when looking for repeats (see `repetitions`)
MAX_FINDINGS = 200  # per trace: enough to highlight every problem in a report, bounded for huge traces

_STOP = frozenset("""a an the and or but if then so of to in on at by for with from as is are was were be been
being it its this that these those there here we i you he she they me my our your their us them do does did
doing have has had having not no yes can could would should will shall may might must just also very too than
into out up down over under again further once only own same such both each few more most other some any all
what which who whom whose why how when where let lets let's now get got make made take like well okay ok one
wait hmm actually maybe think need see know say said""".split())

_WORD = re.compile(r"[a-z]+|\d+(?:\.\d+)?")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")

# The phrase patterns open with a lookahead on the first letters their alternatives can start with: it is
# implied by the alternatives (so the matches are the same), and it lets the engine reject most positions
# with one set test instead of trying every alternative (2-3x faster per pattern on long traces).
_FILLER = re.compile(r"(?=[huoalybiksjw])"
                     r"\b(?:hmm+|um+|uh+|okay,? so|ok,? so|alright|let me think|let me see|you know|"
                     r"basically|"
                     r"i mean|kind of|sort of|i guess|just to be (?:sure|safe)|anyway|so yeah|well,)\b",
                     re.IGNORECASE)
_UNSUPPORTED = re.compile(r"(?=[octiduewnfg])"
                          r"\b(?:obviously|clearly|trivially|it is (?:easy|clear|obvious) (?:to see )?that|"
                          r"it's (?:easy|clear|obvious) (?:to see )?that|it is well[- ]known|"
                          r"it's well[- ]known|definitely|certainly|undoubtedly|unquestionably|evidently|"
                          r"without (?:a|any) doubt|no doubt|for sure|it is certain|guaranteed)\b", re.IGNORECASE)
# Each stem takes only the endings of a re-check ("reviewed", not "reviewer"; "recap", not "recaptured"),
# and a bare "verify" counts only where the writer turns to it ("let me verify"): "it remains to verify
# that f is injective" is a proof obligation, not a re-check.
_RECHECK = re.compile(
    r"(?=[aorclwinqtvdb])"
    r"\b(?:again|once more|re-?(?:check|calculat|comput|evaluat|examin|verif|confirm|stat|iterat)\w*|"
    r"re-?(?:cap|count|visit|view)(?:s|ed|ped|ping|ing)?|recapitulat\w*|confirm\w*|"
    r"(?:let me|let[’']s|let us|we can|i can|i'll|we'll|i will|we will|now|quickly|and|then|also) "
    r"(?:\w+ )?verify|verif(?:ied|ying|ication)|(?:double|cross)[- ]?check\w*|"
    r"to (?:ensure|make sure|be certain)|before (?:proceeding|moving on))\b", re.IGNORECASE)
# Numbers as a prompt states them: digits (with thousands separators) or the common number words.
_NUMBER_WORDS = {w: float(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())} | {
    "thirty": 30.0, "forty": 40.0, "fifty": 50.0, "sixty": 60.0, "seventy": 70.0, "eighty": 80.0,
    "ninety": 90.0, "hundred": 100.0, "thousand": 1000.0, "dozen": 12.0, "half": 0.5, "twice": 2.0,
    "double": 2.0, "triple": 3.0, "thrice": 3.0, "quarter": 0.25}
# A number not glued to a word or a decimal point. The first digit is matched before the look-behind (which
# then spans it) so that the engine's fast digit search finds the candidates: twice as fast as testing the
# look-behind at every position, same matches.
_DIGITS = re.compile(r"\d(?<![\w.]\d)\d{0,14}(?:,\d{3}(?!\d))*(?:\.\d+)?")
# The final answer: the last \boxed{...} (one level of nested braces), else the last answer statement.
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_LINE = re.compile(r"(?=[a#])(?:\banswer(?: is|:)|^A:|^####)"
                          r"\s*[:=]?\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)(?!\s*[-+*/^])",
                          re.IGNORECASE | re.MULTILINE)
_RESULT = re.compile(r"=\s*\$?\s*(?:<<[^>]*>>)?\s*(-?\d[\d,]*(?:\.\d+)?)")
_CORRECTION = re.compile(r"(?=[ntimosw])(?:\bno,? (?:that's|that is|this is|it's) "
                         r"(?:wrong|not right|incorrect|not correct)|"
                         r"\bthat(?:'s| is| was) (?:wrong|incorrect|not right|a mistake)|\bi made (?:a|an) "
                         r"(?:mistake|error)|\bi (?:miscalculated|misread|messed up)|\bmy mistake\b|\boops\b|"
                         r"\bscratch that\b|\bwait,? no\b|\bthat (?:can't|cannot) be right)", re.IGNORECASE)
# Case-insensitive scans are slow at every position. The phrase patterns are written in lower case, so their
# case-sensitive twins run over the lowercased text instead, with the same spans wherever lowering keeps every
# offset and no character matches a letter only case-insensitively: everywhere except at these four
# characters (İ ı ſ K), which the test suite re-derives from the running Python's Unicode tables.
_CASE_TRAPS = re.compile("[\u0130\u0131\u017f\u212a]")
_CASED = {p: re.compile(p.pattern) for p in (_FILLER, _UNSUPPORTED, _RECHECK, _CORRECTION)}
_VERIFY = re.compile(r"^\W*(?:\w+,?\s+){0,3}?(?:let me (?:double[- ])?(?:check|verify|confirm)|"
                     r"let's (?:double[- ])?"
                     r"(?:check|verify|confirm)|double[- ]check|to (?:verify|confirm|check)|verify(?:ing)?:|"
                     r"sanity check|checking:?)", re.IGNORECASE)

# `x = 3`: an identifier assigned a plain number (not an expression: `x = 3 + y` states no value).
# The first letter comes before the look-behind (which then spans it), so the engine's fast character-set
# search finds the candidates; the look-ahead `[\w{}]*+\s*+=` is implied by the rest (the identifier is made
# of those characters and only spaces precede the `=`), so it changes no match, but it rejects a word not
# followed by `=` in one possessive pass instead of backtracking through every shorter identifier
# (~40% faster on long traces).
_ASSIGN = re.compile(r"([A-Za-z](?<![\w\\.^].)(?=[\w{}]*+\s*+=)[A-Za-z_]{0,15}(?:_\{?\w+\}?)?)"
                     r"\s*=\s*(-?\d+(?:\.\d+)?)"
                     r"(?![\w^/*+({]|\.\d|\s*[-+*/^×÷=]\s*[\w(])")



@dataclass
class Finding:
    """One located observation behind a signal, for highlighting in reports. Offsets index the reasoning."""

    kind: str  # a signal name
    start: int
    end: int
    step: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start, "end": self.end, "step": self.step, "note": self.note}


@dataclass
class Analysis:
    """The ME² analysis of one trace: its DAG, size, signals per dimension and the findings behind them."""

    dag: DAG
    signals: dict[str, dict[str, Value]]  # dimension -> signal name -> value
    size: dict[str, int]  # steps, supernodes, words, chars, depth
    findings: list[Finding] = field(default_factory=list)
    id: str | None = None

    def flat(self) -> dict[str, Value]:
        """All signals in one mapping (signal names are unique across dimensions)."""
        return {k: v for dim in DIMENSIONS for k, v in self.signals[dim].items()}

    def to_dict(self) -> dict[str, Any]:
        """The `me2` field of `analysis.jsonl` (the DAG is serialised separately, as `dag`)."""
        return {"size": self.size, **self.signals, "findings": [f.to_dict() for f in self.findings]}


def analyze(trace_or_text: Any, structurer: Any = "heuristic", *, prompt: str | None = None,
            dag: DAG | None = None) -> Analysis:
    """Analyse a `Trace` (its prompt is used) or a reasoning string.

    A prebuilt `dag` skips partitioning and structuring, so callers that already hold the DAG (the report,
    the judge) do not pay for it twice.
    """
    trace_id = None
    if isinstance(trace_or_text, str):
        text = trace_or_text
    elif hasattr(trace_or_text, "reasoning"):
        text = trace_or_text.reasoning
        trace_id = getattr(trace_or_text, "id", None)
        if prompt is None:
            prompt = getattr(trace_or_text, "prompt", None)
    else:
        raise TypeError(f"analyze() takes a Trace or a string, not {type(trace_or_text).__name__}")
    if dag is None:
        from .dag import build_dag

        dag = build_dag(text, structurer)
    return _Analyzer(dag, prompt).run(trace_id)


def content_terms(text: str) -> set[str]:
    """The words and numbers that carry a text's content (stopwords and discourse words dropped)."""
    # set algebra in C instead of a filter per token; a one-character token is a letter or a digit
    return set(_WORD.findall(text.lower())) - _STOP - _LETTERS


def _overlap(a: set[str], b: set[str]) -> float:
    return len(a & b) / min(len(a), len(b)) if a and b else 0.0


class _Analyzer:
    """One pass over one DAG; per-step word sets are computed once and shared by the signals."""

    def __init__(self, dag: DAG, prompt: str | None):
        self.dag = dag
        self.text = dag.text
        self.prompt = prompt
        self.steps = dag.steps
        self.findings: list[Finding] = []
        self._lowered = None if _CASE_TRAPS.search(self.text) else self.text.lower()
        self._starts = [s.start for s in self.steps]
        # lowering never adds or removes whitespace, so these word lists also give the word counts
        self.lower_words = [s.text.lower().split() for s in self.steps]
        self.words = [len(w) for w in self.lower_words]
        self.total_words = sum(self.words)
        self.content = [content_terms(s.text) for s in self.steps]

    def phrases(self, pattern: re.Pattern) -> list[tuple[int, int]]:
        """The spans `pattern` (one of the `_CASED` phrase patterns) matches in the text."""
        if self._lowered is not None:
            return [m.span() for m in _CASED[pattern].finditer(self._lowered)]
        return [m.span() for m in pattern.finditer(self.text)]

    def step_at(self, offset: int) -> int:
        return max(0, bisect.bisect_right(self._starts, offset) - 1)

    def find(self, kind: str, start: int, end: int, note: str = "") -> None:
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(Finding(kind, start, end, self.step_at(start), note))

    def per_1k(self, count: int) -> float:
        return round(1000.0 * count / self.total_words, 2) if self.total_words else 0.0

    def run(self, trace_id: str | None) -> Analysis:
        dag = self.dag
        size = {"steps": len(self.steps), "supernodes": len(dag.supernodes), "words": self.total_words,
                "chars": len(self.text), "depth": max((s.depth for s in dag.supernodes), default=0)}
        signals = {"macro_efficiency": self.macro_efficiency(),
                   "macro_effectiveness": self.macro_effectiveness(),
                   "micro_efficiency": self.micro_efficiency(),
                   "micro_effectiveness": self.micro_effectiveness()}
        self.findings.sort(key=lambda f: (f.start, f.kind))
        return Analysis(dag=dag, signals=signals, size=size, findings=self.findings, id=trace_id)

    # -- macro-efficiency: the shape of the DAG -------------------------------------------------------------
    def macro_efficiency(self) -> dict[str, Value]:
        dag = self.dag
        root_steps = set(dag.supernodes[0].members) if dag.supernodes else set()
        targets: set[int] = set()
        backtracks = restarts = reopened = 0
        for n in dag.nodes:
            if n.action != "backtrack" or not n.parents:
                continue
            backtracks += 1
            target = n.parents[0]
            s = self.steps[n.id]
            if target in root_steps:
                restarts += 1
                self.find("restarts", s.start, s.end, f"restarts from step {target}")
            if target in targets:
                reopened += 1
                self.find("reopened_branches", s.start, s.end, f"returns again to step {target}")
            targets.add(target)
        # Branches merged into the answer fed it: "on path" is every ancestor, not just the answer_path chain.
        feeding: set[int] = set()
        todo = [dag.answer_node] if dag.answer_node is not None else []
        while todo:
            sid = todo.pop()
            if sid not in feeding:
                feeding.add(sid)
                todo.extend(dag.supernodes[sid].parents)
        on_path = {m for sid in feeding for m in dag.supernodes[sid].members}
        dead = [s for s in dag.supernodes if not s.children and s.id != dag.answer_node]
        for s in dead:
            first, last = self.steps[s.members[0]], self.steps[s.members[-1]]
            self.find("dead_ends", first.start, last.end, f"super-node {s.id} never reaches the answer")
        off = 1.0 - len(on_path) / len(self.steps) if self.steps else 0.0
        return {"backtracks": backtracks, "restarts": restarts, "reopened_branches": reopened,
                "off_path_share": round(off, 3), "dead_ends": len(dead)}

    # -- macro-effectiveness: is the structure coherent and on target ---------------------------------------
    def macro_effectiveness(self) -> dict[str, Value]:
        dag = self.dag
        path_words = [set().union(*(self.content[m] for m in dag.supernodes[sid].members))
                      for sid in dag.answer_path]
        pairs = [_overlap(a, b) for a, b in zip(path_words, path_words[1:])]
        coherence = round(sum(pairs) / len(pairs), 3) if pairs else None
        drift: float | None = None
        if self.prompt is not None and self.steps:
            pw = content_terms(self.prompt)
            off = [i for i, c in enumerate(self.content) if not (c & pw)]
            drift = round(len(off) / len(self.steps), 3)
        unsupported = 0
        for start, end in self.phrases(_UNSUPPORTED):
            unsupported += 1
            self.find("unsupported_claims", start, end, self.text[start:end])
        unused: float | None = None
        given = _numbers(self.prompt) if self.prompt is not None else set()
        if given:
            unused = round(len(given - _stated(self.text, given)) / len(given), 3)
        return {"path_coherence": coherence, "question_drift": drift,
                "unsupported_claims": self.per_1k(unsupported), "unused_givens": unused}

    # -- micro-efficiency: are the steps concise -------------------------------------------------------------
    def micro_efficiency(self) -> dict[str, Value]:
        filler = len(self.phrases(_FILLER))
        near_dup, paraphrase = self.repetitions()
        verifications = 0
        for s in self.steps:
            if _VERIFY.match(s.text):
                verifications += 1
                if verifications > 1:
                    self.find("reverifications", s.start, s.end, f"verification #{verifications}")
        wps = round(self.total_words / len(self.steps), 1) if self.steps else 0.0
        rechecks = 0
        for start, end in self.phrases(_RECHECK):
            rechecks += 1
            self.find("recheck_phrases", start, end, self.text[start:end])
        return {"words_per_step": wps, "filler_per_1k": self.per_1k(filler), "near_duplicate_steps": near_dup,
                "paraphrase_loops": paraphrase, "reverifications": max(0, verifications - 1),
                "recheck_phrases": self.per_1k(rechecks)}

    def repetitions(self) -> tuple[int, int]:
        """(near-duplicate steps, paraphrased steps), via inverted indexes so long traces stay fast.

        Comparing every pair of steps is quadratic in text; counting shared keys through postings lists only
        touches step pairs that share something. Exact repeats are found by hashing, very common keys (in
        over half the steps, at least 20) say nothing about repetition, and each postings list keeps its
        first `POSTINGS` steps, so a trace that repeats one paragraph a thousand times stays linear.
        """
        shingles = [frozenset(map(" ".join, zip(w, w[1:], w[2:]))) for w in self.lower_words]
        dup = _similar(shingles, 0.5)
        para = _similar(self.content, 0.6, min_size=4)
        near = para_n = 0
        for i in range(len(self.steps)):
            s = self.steps[i]
            if i in dup:
                near += 1
                self.find("near_duplicate_steps", s.start, s.end, f"repeats step {dup[i]}")
            elif i in para:
                para_n += 1
                self.find("paraphrase_loops", s.start, s.end, f"restates step {para[i]}")
        return near, para_n

    # -- micro-effectiveness: is each step valid -------------------------------------------------------------
    def micro_effectiveness(self) -> dict[str, Value]:
        corrections, last_end = 0, -100
        for start, end in self.phrases(_CORRECTION):
            # "Wait, no, that's wrong" is one admission, not two; a new sentence is a new one.
            gap = self.text[max(last_end, 0):start] if start - last_end <= 20 else "."
            if any(c in gap for c in ".!?\n"):
                corrections += 1
                self.find("self_corrections", start, end, self.text[start:end])
            last_end = end
        values: dict[str, dict[float, tuple[int, int]]] = defaultdict(dict)
        for m in _ASSIGN.finditer(self.text):
            v = float(m.group(2))
            values[m.group(1)].setdefault(v, (m.start(), m.end()))
        conflicts = 0
        for name, seen in values.items():
            if len(seen) > 1:
                conflicts += 1
                vals = ", ".join(f"{v:g}" for v in seen)
                for start, end in list(seen.values())[1:]:
                    self.find("conflicting_values", start, end, f"{name} takes values {vals}")
        checked = wrong = odd = 0
        for start, end, holds, note, result in self.arithmetic_claims():
            checked += 1
            odd += result < 0 or result != int(result)
            if not holds:
                wrong += 1
                self.find("arithmetic_wrong", start, end, note)
        return {"self_corrections": corrections, "conflicting_values": conflicts,
                "arithmetic_checked": checked, "arithmetic_wrong": wrong,
                "answer_not_derived": self.answer_not_derived(),
                "odd_results": round(odd / checked, 3) if checked else 0.0}

    def answer_not_derived(self) -> int | None:
        """Whether the final numeric answer was never stated as the value of anything before it."""
        answer = _final_answer(self.text, self._lowered)
        if answer is None:
            return None
        value, at = answer
        for m in _RESULT.finditer(self.text, 0, at):
            if _as_number(m.group(1)) == value:
                return 0
        self.find("answer_not_derived", at, at + 1, f"final answer {value:g} is not the result of any step")
        return 1

    def arithmetic_claims(self):
        """Yield (start, end, holds, note, value of the right side) for each `expr = expr` pair where a side
        has an operator (`thinkrm.arithmetic.claims`)."""
        return claims(self.text)


def _as_number(token: str) -> float:
    """The value of a token matched by `_DIGITS`, `_number_words`, `_RESULT` or `_ANSWER_LINE` (digits or a
    number word)."""
    word = _NUMBER_WORDS.get(token.lower())
    return word if word is not None else float(token.replace(",", ""))


def _numbers(text: str) -> set[float]:
    """The distinct numeric values a text states (digits or number words)."""
    return _stated(text, None)


def _stated(text: str, values: set[float] | None) -> set[float]:
    """The distinct numeric values a text states, of `values` only (all when None).

    Digits and number words consist of different characters, so the two are found in separate scans. The
    case-insensitive scan for number words is the slow one; with `values` given it looks only for the words
    still missing, which for a long trace checked against a prompt is usually none or one.
    """
    found = {_as_number(t) for t in set(_DIGITS.findall(text))}  # long traces repeat the same few numbers
    if values is not None:
        found &= values
    words = tuple(w for w, v in _NUMBER_WORDS.items() if values is None or (v in values and v not in found))
    if words:
        found.update(_as_number(t) for t in set(_number_words(words).findall(text)))
    return found


@functools.lru_cache(maxsize=256)
def _number_words(words: tuple[str, ...]) -> re.Pattern:
    # the lookahead on the words' first letters lets the engine skip most positions at once
    first = "".join(sorted({w[0] for w in words}))
    return re.compile(rf"(?=[{first}])\b(?:{'|'.join(words)})\b", re.IGNORECASE)


def _final_answer(text: str, lowered: str | None = None) -> tuple[float, int] | None:
    """(value, offset) of the final answer when it is a plain number, else None.

    `lowered`: `text.lower()` when that keeps every offset (no `_CASE_TRAPS`), to find the last answer line
    faster (`_last_answer_line`).
    """
    boxed = None
    for boxed in _BOXED.finditer(text):  # noqa: B007 - the last match, without a list of all
        pass
    if lowered is not None:
        line = _last_answer_line(text, lowered)
    else:
        line = None
        for line in _ANSWER_LINE.finditer(text):  # noqa: B007 - the last match
            pass
    if boxed is not None and (line is None or boxed.start() > line.start()):
        raw = boxed.group(1).strip().strip("$").replace("\\!", "").replace("{,}", ",")
        if not re.fullmatch(r"-?\d[\d,]*(?:\.\d+)?", raw):
            return None
        return _as_number(raw), boxed.start()
    if line is not None:
        return _as_number(line.group(1)), line.start()
    return None


def _last_answer_line(text: str, lowered: str) -> re.Match | None:
    """The last match of `_ANSWER_LINE.finditer(text)`, tried only where its keywords are, from the end.

    A match opens with `answer`, `a:` or `####` (in any case: `lowered` is `text.lower()` with the same
    offsets), and no match can start inside another (the rest of a match is spaces, `:=$`, digits and `,.-`,
    and `^####` needs a line start), so the last match of the scan is the one that starts last.
    """
    keys = ("answer", "a:", "####")
    found = {k: lowered.rfind(k) for k in keys}
    while True:
        key = max(keys, key=found.__getitem__)
        at = found[key]
        if at < 0:
            return None
        m = _ANSWER_LINE.match(text, at)
        if m is not None:
            return m
        found[key] = lowered.rfind(key, 0, at + len(key) - 1)


def _similar(sets: list[set[str]] | list[frozenset[str]], threshold: float,
             min_size: int = 1) -> dict[int, int]:
    """For each set, an earlier set with Jaccard >= threshold (index -> earlier index), earliest first."""
    # Set algebra and Counter run in C; the loops left in Python touch only keys already seen in earlier steps.
    df = Counter(chain.from_iterable(sets))
    cap = max(20, len(sets) // 2)
    common = {k for k, n in df.items() if n > cap}
    postings: dict[str, list[int]] = {}
    first_seen: dict[frozenset[str], int] = {}
    found: dict[int, int] = {}
    for i, s in enumerate(sets):
        if len(s) < min_size:
            continue
        key = frozenset(s)
        if key in first_seen:
            found[i] = first_seen[key]
            continue
        first_seen[key] = i
        keys = s - common if common else s
        shared = Counter(chain.from_iterable(filter(None, map(postings.get, keys))))
        for j in sorted(shared):
            inter = shared[j]
            if inter / (len(s) + len(sets[j]) - inter) >= threshold:
                found[i] = j
                break
        # Keys seen for the first time (most of them) get their postings list in C; only keys already seen
        # are visited in Python. Every list gets step i appended once, so each stays in step order.
        new = keys.difference(postings)  # a dict argument: looks up each key, in C
        for k in postings.keys() & keys if len(new) < len(keys) else ():
            p = postings[k]
            if len(p) < POSTINGS:
                p.append(i)
        postings.update(zip(new, map(list, repeat((i,), len(new)))))
    return found
