"""The one answer verifier of thinkrm, built on math-verify.

Everything that needs "is this response right?" (Best-of-N, the gated RL reward, the LLM judge pipeline,
the server's `/get_reward`) calls this module, so every stage grades answers the same way:

* the final answer is taken only from the text *after* the end-of-thinking marker
  (`thinkrm.trace.split_response`): a number the model considered and rejected while thinking must not count;
* the gold answer is parsed first and passed to math-verify as gold (its comparison is not symmetric);
* it fails closed: no extractable answer, an unparsable one or a timeout is `False` (`strict=True` raises
  instead, for callers that want to see why).

math-verify bounds its own work with `signal.alarm`, which only works in the main thread and cannot interrupt
C code. So every check (`verify`, `verify_batch`, `same_answer`, `answer_classes`) runs in worker processes
(`thinkrm.workers`, running this module's `WORKER_TASKS`) with a hard wall-clock deadline per item: a
worker stuck on a pathological output is killed and replaced, and that item counts as a timeout (False).
On top of that, extraction is linear in the response and answers too large to check (`MAX_PARSE_CHARS`,
`MAX_PARSE_DIGITS`) fail closed before sympy sees them.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any, NoReturn

from . import workers as workers_mod
from .trace import THINK_END, THOUGHT_BEGIN, THOUGHT_END, split_response
from .workers import BatchReport, WorkerPool, close_pools, serve_stdio

# `BatchReport` and `close_pools` live in `thinkrm.workers`; they are re-exported for this module's callers.
__all__ = [
    "DEFAULT_TIMEOUT", "MAX_PARSE_CHARS", "MAX_PARSE_DIGITS", "BatchReport", "VerifyError", "answer_classes",
    "answer_part", "close_pools", "extract_answer", "get_pool", "last_boxed", "same_answer", "verify",
    "verify_batch", "verify_batch_report",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0

# What is handed to math-verify is capped: a few characters can keep sympy busy for hours in C code that no
# alarm interrupts (`100000000!`, `10^{10^{10}}`), so such answers fail closed at once instead of costing a
# full timeout and a killed worker. The pool's hard deadline still bounds whatever these caps miss.
MAX_PARSE_CHARS = 1000  # longer answers (gold or extracted) are not parsed; real final answers are shorter
MAX_PARSE_DIGITS = 10_000  # nor compared when a number in them would have more digits (estimated from above)

# Responses are untrusted text of any length, so every pattern below runs in linear time: no two quantifiers
# that can trade the same characters (`is\s*[:=]?\s*(.+)` backtracks quadratically over a run of newlines),
# and `(.*)` captures whose trailing space `_clean` strips, rather than `(.+?)\s*$`.
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"^[^\S\n]*####\s*(.*)", re.M)
_A_LINE = re.compile(r"^[^\S\n]*A:\s*(.*)", re.M)
_ANSWER_IS = re.compile(r"answer\s+is\s*(?:[:=]\s*)?(.*)", re.I)  # "The final answer is": same capture
# Markup around an answer written in prose ("The answer is $\frac12$.", "**18**"), never part of the value.
# The trailing part is matched on the reversed text: anchored there, one pass; an unanchored `(...)+$`
# would retry from every character of a long run of dots or spaces.
_LEADING_WRAP = re.compile(r"(?:\*\*|\$|\\\(|\\\[)*")
_TRAILING_WRAP_REVERSED = re.compile(r"(?:\*\*|\)\\|\]\\|[$.\s])*")
_CURRENCY = re.compile(r"^\\?\$\s*(?=[\d.])")


class VerifyError(ValueError):
    """Raised by `verify(..., strict=True)` instead of returning False, with the reason."""


def last_boxed(text: str) -> str | None:
    """Contents of the last-opened `\\boxed{...}` whose braces balance (a regex cannot match nested braces).

    Linear and vectorised: from the brace depth after each character, a box opened at depth d is closed by
    the first later character at depth d - 1. Scanning ahead from every `\\boxed{` was quadratic in their
    number (20,000 unclosed ones took minutes), and even a linear Python loop over the braces of a 1 MB
    response takes a second.
    """
    found = [m.end() for m in _BOX.finditer(text)]  # where each box's contents start
    if not found:
        return None
    import numpy as np

    opens = np.array(found, dtype=np.int64)
    opens = opens[opens < len(text)]
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    depth = np.cumsum(codes == ord("{"), dtype=np.int32) - np.cumsum(codes == ord("}"), dtype=np.int32)
    lowest_after = np.minimum.accumulate(depth[::-1])[::-1]  # lowest depth from each position on
    closed = opens[lowest_after[opens] < depth[opens - 1]]
    if not len(closed):
        return None
    start = int(closed[-1])
    return text[start:start + int(np.argmax(depth[start:] < depth[start - 1]))]


def _clean(ans: str) -> str | None:
    ans = ans.strip()
    ans = ans[_LEADING_WRAP.match(ans).end():]
    ans = ans[:len(ans) - _TRAILING_WRAP_REVERSED.match(ans[::-1]).end()]
    ans = _CURRENCY.sub("", ans).strip()
    return ans or None


def answer_part(response: str) -> str:
    """The part of a response that may state its answer: the text after the end-of-thinking marker (empty
    for a truncated trace), or all of it when there is no marker."""
    has_marker = any(m in response for m in (THINK_END, THOUGHT_BEGIN, THOUGHT_END))
    return split_response(response)[1] if has_marker else response


def extract_answer(response: str) -> str | None:
    """The final answer of a response, as text, or None when it states none.

    Only `answer_part(response)` is read. In order of preference: the last `\\boxed{...}`, a GSM8K `#### 18`
    line, a final `A: 18` line, "The answer is 18".
    """
    text = answer_part(response)
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return _clean(boxed)
    for pattern in (_HASHES, _A_LINE):
        hits = pattern.findall(text)
        if hits:
            return _clean(hits[-1])
    hits = _ANSWER_IS.findall(text)
    if hits:
        # Prose: the answer ends at the first sentence break ("is 18. Then..." -> "18").
        return _clean(re.split(r"\.\s|\n", hits[-1], maxsplit=1)[0])
    return None


# ---- parsing and comparison (the work a worker process does: `WORKER_TASKS`) -------------------------------

def _alarm_seconds(timeout: float | None) -> int | None:
    """math-verify's own alarm, in whole seconds (workers run items in their main thread, where it works)."""
    return None if timeout is None else max(1, math.ceil(timeout))


def _shorten(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class _TooBig(Exception):
    """Ends the walk of `_digits` at the first part past `MAX_PARSE_DIGITS`."""


def _digits(forms: list) -> float:
    """An upper estimate of the digits of the largest value anywhere in math-verify's parsed forms, read off
    the unevaluated expression tree; inf once past `MAX_PARSE_DIGITS`, where the walk stops.

    Symbols count as 1 (`e^{hc/(\\lambda kT)}` is no huge number), except as the base of a power, which
    counts at least as 10: expanding `(x+1)^{10^6}` costs as much as computing a number that size."""
    from sympy import Basic, binomial, exp, factorial, factorial2, gamma, subfactorial
    from sympy.matrices import MatrixBase

    def value(digits: float) -> float:  # the bound on the number itself
        return math.inf if digits > 300 else 10.0 ** digits

    def walk(e: Any) -> float:
        if isinstance(e, MatrixBase):
            d = max(map(walk, e), default=0.0)
        elif not isinstance(e, Basic):  # math-verify's string form
            d = 0.0
        elif e.is_Rational:
            d = math.log10(max(abs(e.p), abs(e.q)))
        elif e.is_Float:
            d = abs(math.log10(abs(float(e)) or 1.0))
        elif not e.args:  # symbols, pi, oo, True
            d = 0.0
        else:
            parts = [walk(a) for a in e.args]
            if e.is_Pow:
                base = max(parts[0], 1.0) if e.args[0].free_symbols else parts[0]
                d = base * value(parts[1]) if base else 0.0  # 1^{10^{500}} is cheap
            elif isinstance(e, exp):
                d = value(parts[0]) * math.log10(math.e)
            elif isinstance(e, (factorial, factorial2, subfactorial, gamma)):
                v = value(parts[0])
                d = v * math.log10(v) if v > 1 else 0.0
            elif isinstance(e, binomial):
                d = value(parts[0]) * math.log10(2)
            elif e.is_Mul:
                d = sum(parts)
            elif e.is_Add:
                d = max(parts) + math.log10(len(parts))
            else:
                d = max(parts)
        if not d <= MAX_PARSE_DIGITS:  # also NaN
            raise _TooBig
        return d

    try:
        return max(map(walk, forms), default=0.0)
    except (_TooBig, RecursionError, OverflowError):
        return math.inf


def _parse(text: str, timeout: float | None, *, strict: bool = False) -> list:
    """math-verify's parsed forms of an answer; [] when it cannot be read or is too large to check (with
    `strict`, math-verify's error or `VerifyError` instead)."""
    from math_verify import parse

    if len(text) > MAX_PARSE_CHARS:
        reason = f"it is longer than {MAX_PARSE_CHARS} characters"
    else:
        # `\boxed{}` makes the LaTeX extractor take the whole string as one expression ("(3, -2)" is a tuple,
        # not "-2"); the plain-expression extractor still handles "1,000" or "18 apples".
        forms = parse("\\boxed{" + text + "}", parsing_timeout=_alarm_seconds(timeout), raise_on_error=strict)
        if _digits(forms) <= MAX_PARSE_DIGITS:
            return forms
        reason = f"a number in it would have more than {MAX_PARSE_DIGITS} digits"
    if strict:
        raise VerifyError(f"cannot check {_shorten(text)}: {reason}")
    return []


def _equal(gold: list, pred: list, timeout: float | None, *, strict: bool = False) -> bool:
    from math_verify import verify as mv_verify

    return bool(mv_verify(gold, pred, timeout_seconds=_alarm_seconds(timeout), raise_on_error=strict))


def _verify_local(response: str, gold: str, timeout: float | None, strict: bool) -> bool:
    from math_verify.errors import TimeoutException

    try:
        return _verify_checked(response, gold, timeout, strict)
    except TimeoutException:  # only raised through with strict (math-verify swallows it otherwise)
        raise TimeoutError(f"math-verify took longer than {timeout}s") from None


def _verify_checked(response: str, gold: str, timeout: float | None, strict: bool) -> bool:
    if not isinstance(gold, str) or not gold.strip():
        if strict:
            raise VerifyError(f"gold answer is empty or not a string: {gold!r}")
        return False
    gold_parsed = _parse(gold, timeout, strict=strict)  # gold first: it decides how the prediction is read
    if not gold_parsed:
        if strict:
            raise VerifyError(f"cannot parse the gold answer {_shorten(gold)}")
        return False
    answer = extract_answer(response)
    if answer is None:
        if strict:
            raise VerifyError("no final answer found after the reasoning")
        return False
    pred = _parse(answer, timeout, strict=strict)
    if not pred:
        if strict:
            raise VerifyError(f"cannot parse the answer {_shorten(answer)}")
        return False
    return _equal(gold_parsed, pred, timeout, strict=strict)


def _norm(s: str) -> str:
    return re.sub(r"\s+", "", s)


def _same_local(a: str | None, b: str | None, timeout: float | None) -> bool:
    if a is None or b is None:
        return False
    if _norm(a) == _norm(b):
        return True
    pa, pb = _parse(a, timeout), _parse(b, timeout)
    return bool(pa and pb and _equal(pa, pb, timeout))


def _classes_local(answers: Sequence[str | None], timeout: float | None) -> list[int | None]:
    """Group answers into equivalence classes: each answer joins the first class whose representative it
    matches; None (no answer) gets no class. Quadratic in the number of classes, small per problem."""
    reps: list[str] = []
    out: list[int | None] = []
    for a in answers:
        if a is None:
            out.append(None)
            continue
        for k, r in enumerate(reps):
            if _same_local(r, a, timeout):
                out.append(k)
                break
        else:
            reps.append(a)
            out.append(len(reps) - 1)
    return out


WORKER_TASKS = {"verify": _verify_local, "classes": _classes_local}  # what `thinkrm.workers` runs for us


def worker_warmup() -> None:
    """Run in each worker before it says hello: import math-verify, sympy and numpy, quiet their logs."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _verify_local("\\boxed{1}", "1", 1, False)


def get_pool(workers: int | None = None) -> WorkerPool:
    """The process-wide pool of verifier workers for this worker count (`thinkrm.workers.get_pool`)."""
    return workers_mod.get_pool("thinkrm.verify", workers)


# ---- public API ------------------------------------------------------------------------------------------

def verify(response: str, gold: str, *, timeout: float = DEFAULT_TIMEOUT, strict: bool = False) -> bool:
    """True when the final answer of `response` equals `gold` under math-verify.

    The whole check, extraction included, runs in the process pool under a hard wall-clock deadline, from any
    thread: math-verify's own alarms work only in a main thread and cover neither extraction nor C code
    (sympy computing a huge product ignores them). So the caller waits at most `timeout`, plus the start of
    a worker when none is up yet. With `strict`, a missing or unparsable answer raises `VerifyError` and a
    timeout `TimeoutError`, rather than returning False.
    """
    report = get_pool().run("verify", [(response, gold, timeout, strict)], timeout, False)
    if strict and report.timeouts:
        raise TimeoutError(f"verification took longer than {timeout}s")
    if strict and report.errors:
        _raise_reported(report.error_messages[0])
    return report.results[0]


def _raise_reported(message: str) -> NoReturn:
    """Raise in the caller the error a worker reported as "Type: detail", keeping its kind."""
    kind, _, detail = message.partition(": ")
    if kind == "TimeoutError":
        raise TimeoutError(detail)
    raise VerifyError(detail if kind == "VerifyError" else message)


def verify_batch_report(responses: Sequence[str], golds: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT,
                        workers: int | None = None) -> BatchReport:
    """`verify_batch`, also reporting how many items timed out or raised (both count as False)."""
    if len(responses) != len(golds):
        raise ValueError(f"verify_batch: {len(responses)} responses but {len(golds)} gold answers")
    return get_pool(workers).run("verify", [(r, g, timeout, False) for r, g in zip(responses, golds)],
                                 timeout, False)


def verify_batch(responses: Sequence[str], golds: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT,
                 workers: int | None = None) -> list[bool]:
    """Verify many responses in worker processes, each with a hard `timeout` (seconds, wall clock).

    A pathological output cannot hang the run: its worker is killed and replaced and the item is False.
    Timeouts and errors are logged as a warning with their count (use `verify_batch_report` to get them).
    """
    report = verify_batch_report(responses, golds, timeout=timeout, workers=workers)
    if report.timeouts or report.errors:
        log.warning("verify_batch: %d of %d items timed out after %ss and %d failed; counted as wrong",
                    report.timeouts, len(responses), timeout, report.errors)
    return report.results


def same_answer(a: str | None, b: str | None, *, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether two extracted answers are the same value under math-verify ("0.5" and "\\frac12" are).

    Used to group answers for majority vote; None (no answer) equals nothing. Equal strings are decided here;
    anything else goes to the process pool, under the same hard deadline as `verify`.
    """
    if a is None or b is None:
        return False
    if _norm(a) == _norm(b):
        return True
    return bool(get_pool().run("classes", [([a, b], timeout)], timeout, [0, 1]).results[0][1] == 0)


def answer_classes(answer_lists: Sequence[Sequence[str | None]], *, timeout: float = DEFAULT_TIMEOUT,
                   workers: int | None = None) -> tuple[list[list[int | None]], int]:
    """Equivalence classes of each list of answers (one list per problem), computed in the pool.

    Returns class ids per answer (None for no answer) and how many lists timed out; a list that times out
    falls back to grouping by whitespace-insensitive string equality, so a vote still happens.
    """
    deadline = timeout * 4  # a list needs several comparisons, each allowed `timeout`
    report = get_pool(workers).run("classes", [(list(a), timeout) for a in answer_lists], deadline, None)
    out = []
    for answers, classes in zip(answer_lists, report.results):
        if classes is None:
            keys: dict[str, int] = {}
            classes = [None if a is None else keys.setdefault(_norm(a), len(keys)) for a in answers]
        out.append(classes)
    return out, report.timeouts + report.errors


def _worker_main() -> None:
    """`python -m thinkrm.verify`: a pool worker for this module's tasks. The pool itself starts
    `python -m thinkrm.workers thinkrm.verify`; this entry point is kept for workers started by hand."""
    serve_stdio(WORKER_TASKS, worker_warmup)


if __name__ == "__main__":
    _worker_main()
