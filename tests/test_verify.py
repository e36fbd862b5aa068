"""The shared verifier: extraction after the reasoning, math-verify equivalence, fail closed, timeouts."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinkrm.verify import (
    MAX_PARSE_CHARS,
    MAX_PARSE_DIGITS,
    VerifyError,
    answer_classes,
    extract_answer,
    get_pool,
    last_boxed,
    same_answer,
    verify,
    verify_batch,
    verify_batch_report,
)


@pytest.mark.parametrize("response, expected", [
    ("<think>try \\boxed{7}? no</think>So \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("The set is \\boxed{\\{1, \\{2\\}\\}} or \\boxed{x^{2}}", "x^{2}"),  # last box, nested braces
    ("<think>\\boxed{7}</think>", None),  # an answer only inside the reasoning does not count
    ("<|begin_of_thought|>x = 4<|end_of_thought|>Final: \\fbox{4}", "4"),
    ("<|begin_of_thought|>truncated, \\boxed{3}", None),
    ("16 - 3 = <<16-3=13>>13\n13 * 2 = 26\nA: $26", "26"),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("so the final answer is: $\\frac{14}{3}$. Then we stop.", "\\frac{14}{3}"),
    ("The answer is **18**.", "18"),
    ("I think it is probably 5", None),
    ("", None),
])
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize("response, gold, ok", [
    ("<think>hmm</think>\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{90}", "90^\\circ", True),
    ("A: 1,000", "1000", True),
    ("#### 1000", "999", False),
    ("\\boxed{x^2 + 2x + 1}", "(x+1)^2", True),
    ("\\boxed{3}", "\\text{(C)}", False),
    ("<think>the answer is 42</think>I give up.", "42", False),  # right number, but only in the reasoning
])
def test_verify_equivalence(response, gold, ok):
    assert verify(response, gold) is ok


def test_fail_closed_and_strict():
    assert verify("no answer here", "3") is False
    assert verify("\\boxed{3}", "") is False
    with pytest.raises(VerifyError, match="no final answer"):
        verify("no answer here", "3", strict=True)
    with pytest.raises(VerifyError, match="gold"):
        verify("\\boxed{3}", "   ", strict=True)
    assert verify("\\boxed{3}", "3", strict=True) is True


def test_verify_outside_the_main_thread_uses_the_pool():
    """math-verify's alarms cannot work in a thread; the result must still be right (and not raise)."""
    out = {}

    def run():
        out["right"] = verify("\\boxed{\\frac{2}{4}}", "0.5")
        out["wrong"] = verify("\\boxed{3}", "4")
        out["same"] = same_answer("0.5", "\\frac{1}{2}")

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert out == {"right": True, "wrong": False, "same": True}


@pytest.mark.slow
def test_verify_batch_matches_verify_and_checks_lengths():
    responses = ["\\boxed{2}", "A: 7", "nothing", "<think>\\boxed{5}</think>\\boxed{6}"]
    golds = ["2", "8", "1", "6"]
    assert verify_batch(responses, golds, workers=2) == [verify(r, g) for r, g in zip(responses, golds)]
    assert verify_batch(responses, golds, workers=2) == [True, False, False, True]
    with pytest.raises(ValueError, match="3 responses but 2"):
        verify_batch(responses[:3], golds[:2])


# Passes the size caps (each number in it is small) yet is 100000000!: sympy takes seconds even with
# math-verify's own 1 s alarms (it retries per parsed form), so only the hard deadline can cut it.
SLOW = "\\boxed{\\prod_{k=1}^{100000000} k}"


@pytest.mark.slow
def test_pathological_item_is_killed_and_the_worker_replaced():
    """The hard deadline must cut a stuck item, count it, and the next items must still be checked."""
    pool = get_pool(1)
    assert verify_batch(["\\boxed{1}"], ["1"], workers=1) == [True]  # the worker is up
    first = pool._procs[0]
    responses = ["\\boxed{5}", SLOW, "\\boxed{7}", "\\boxed{8}"]
    golds = ["5", "4", "7", "9"]
    start = time.monotonic()
    report = verify_batch_report(responses, golds, timeout=1.5, workers=1)
    assert report.results == [True, False, True, False]
    assert report.timeouts == 1 and report.errors == 0
    assert first.poll() is not None  # killed...
    assert pool._procs[0] is not first and pool._procs[0].poll() is None  # ...and replaced by a live worker
    assert time.monotonic() - start < 30


def test_a_worker_started_by_hand_as_python_m_thinkrm_verify_serves_its_tasks():
    """The pool starts `python -m thinkrm.workers thinkrm.verify`; the old entry point still works."""
    import subprocess
    import sys

    from thinkrm.workers import _PipeConnection

    p = subprocess.Popen([sys.executable, "-m", "thinkrm.verify"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    conn = _PipeConnection(p.stdout.fileno(), p.stdin.fileno())
    try:
        assert conn.recv() == "ready"
        conn.send((7, "verify", ("\\boxed{\\frac{1}{2}}", "0.5", 5.0, False)))
        assert conn.recv() == (7, True, True)
        conn.send((8, "no such task", ()))
        assert conn.recv() == (8, False, "KeyError: 'no such task'")
    finally:
        conn.close()
        p.kill()
        p.wait()
        p.stdin.close()
        p.stdout.close()


def test_a_worker_that_died_between_batches_is_restarted():
    pool = get_pool(1)
    assert verify_batch(["\\boxed{2}"], ["2"], workers=1) == [True]
    pool._procs[0].kill()  # e.g. the OOM killer
    pool._procs[0].wait()
    assert verify_batch(["\\boxed{2}", "\\boxed{3}"], ["2", "2"], workers=1) == [True, False]


def test_answer_classes_group_by_value_not_string():
    classes, failed = answer_classes([["1/2", "0.5", "\\frac{1}{2}", None, "3", "3.0", "x"], []], workers=1)
    assert failed == 0
    assert classes[0] == [0, 0, 0, None, 1, 1, 2]
    assert classes[1] == []
    assert same_answer(None, "3") is False
    assert same_answer("\\frac{6}{4}", "1.5") is True
    assert same_answer("2", "3") is False


# ---- adversarial output: every check is bounded ----------------------------------------------------------

MB = 1_000_000
# name -> (response, the answer extracted from it)
ADVERSARIAL = {
    "unclosed boxes": ("<think>hmm</think> " + "\\boxed{" * (MB // 7), None),
    "nested boxes": ("\\boxed{" * (MB // 14) + "}" * (MB // 14), None),  # the innermost box is empty
    "brace soup in a box": ("\\boxed{" + "{}" * (MB // 2), None),
    "open braces": ("{" * MB, None),
    "newlines after 'answer is'": ("The answer is" + "\n" * MB, None),
    "spaces after ####": ("####" + " " * MB + "18", "18"),
    "trailing dots and spaces": ("\\boxed{7" + ". " * (MB // 2) + "}", "7"),
    "1 MB answer": ("\\boxed{" + "1+" * (MB // 2) + "1}", "1+" * (MB // 2) + "1"),
}


def _last_boxed_reference(text: str) -> str | None:
    """The plain scan, quadratic but plainly right: from every box forward to its closing brace."""
    found = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found = text[m.end():i - 1]
    return found


BOX_PIECES = ["{", "}", "\\boxed{", "\\fbox {", "\\boxed", "\\{", "x", " ", "é", "\ud800"]
ANSWER_PIECES = ["\\boxed{", "\\fbox{", "{", "}", "{}", "\n", " ", ".", "$", "**", "\\)", "####", "A:",
                 "answer is", "The final answer is:", "x", "</think>", "<|end_of_thought|>"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(BOX_PIECES), max_size=40).map("".join))
def test_last_boxed_agrees_with_the_plain_scan(text):
    assert last_boxed(text) == _last_boxed_reference(text)


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_extraction_is_right_on_adversarial_output(name):
    response, expected = ADVERSARIAL[name]
    # A few tenths each (the quadratic scan took a minute at 56 KB): benchmarks/bench_adversarial.py.
    assert extract_answer(response) == expected


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(ANSWER_PIECES), min_size=1, max_size=12).map("".join))
def test_extraction_returns_on_any_repeated_pattern(unit):
    text = unit * (300_000 // len(unit) + 1)  # a quadratic scan would run into pytest's timeout
    answer = extract_answer(text)
    assert answer is None or isinstance(answer, str)


@pytest.mark.parametrize("answer", ["100000000!", "(10^{8})!", "10!!", "10^{10^{10}}", "9^{9^{9}}",
                                    "e^{10^{10}}", "2^{2^{2^{2^{2^{2}}}}}", "(x+1)^{10^{6}}",
                                    "1.5 \\cdot 10^{20000}"])
def test_answers_too_large_to_compute_fail_closed(answer):
    """sympy would compute these for minutes in C code; they are refused before any comparison (a timeout
    would raise TimeoutError instead)."""
    with pytest.raises(VerifyError, match=f"more than {MAX_PARSE_DIGITS} digits"):
        verify(f"\\boxed{{{answer}}}", "4", strict=True)
    with pytest.raises(VerifyError, match=f"more than {MAX_PARSE_DIGITS} digits"):
        verify("\\boxed{4}", answer, strict=True)  # gold answers are read the same way


@pytest.mark.parametrize("response, gold", [
    ("\\boxed{10!}", "3628800"),
    ("\\boxed{2^{2^{2^{2}}}}", "65536"),
    ("\\boxed{\\binom{10}{3}}", "120"),
    ("\\boxed{x^{100} + 1}", "1 + x^{100}"),
    ("\\boxed{10^{9000}}", "10^{9000}"),
    ("\\boxed{\\frac{1}{2^{50}}}", "2^{-50}"),
    # Symbols are no huge numbers (Minerva's Planck-law answers once counted as such).
    ("\\boxed{\\frac{1}{e^{h c /(\\lambda k T)}-1}}", "\\frac{1}{e^{hc/(\\lambda kT)} - 1}"),
])
def test_large_but_computable_answers_are_still_checked(response, gold):
    assert verify(response, gold, strict=True) is True


def test_overlong_answers_fail_closed():
    long = "1+" * (MAX_PARSE_CHARS // 2) + "1"
    with pytest.raises(VerifyError, match=f"longer than {MAX_PARSE_CHARS} characters"):
        verify(f"\\boxed{{{long}}}", "4", strict=True)
    assert verify(ADVERSARIAL["1 MB answer"][0], "4") is False


@pytest.mark.slow
def test_verify_on_the_main_thread_returns_within_its_timeout():
    """math-verify's alarms covered neither extraction (20,000 unclosed boxes took minutes here) nor sympy's
    C code; the whole check now runs under the pool's hard deadline."""
    assert verify("\\boxed{1}", "1")  # a worker is up: its start is not part of any check's time
    for response, timeout in [(ADVERSARIAL["unclosed boxes"][0], 5.0), (SLOW, 1.5)]:
        start = time.monotonic()
        assert verify(response, "4", timeout=timeout) is False
        assert time.monotonic() - start < timeout + 1
    with pytest.raises(TimeoutError):
        verify(SLOW, "4", timeout=1.5, strict=True)


@pytest.mark.slow
def test_verify_batch_of_adversarial_outputs_returns_within_its_timeout():
    assert verify_batch(["\\boxed{1}"] * 2, ["1"] * 2, workers=2) == [True, True]  # both workers are up
    responses = [SLOW, ADVERSARIAL["unclosed boxes"][0], ADVERSARIAL["brace soup in a box"][0],
                 ADVERSARIAL["1 MB answer"][0], "\\boxed{100000000!}", "\\boxed{10^{10^{10}}}", "\\boxed{4}"]
    start = time.monotonic()
    report = verify_batch_report(responses, ["4"] * len(responses), timeout=3.0, workers=2)
    assert time.monotonic() - start < 3.0 + 1
    assert report.results == [False] * 6 + [True]
    assert report.timeouts == 1 and report.errors == 0  # only SLOW needed the deadline


@pytest.mark.slow
def test_grouping_is_bounded_and_keeps_huge_answers_apart():
    overlong = "1+" * MAX_PARSE_CHARS + "1"
    classes, failed = answer_classes([["4", "100000000!", "2+2", "10^{10^{10}}", "100000000!", overlong]],
                                     timeout=2.0, workers=1)
    assert failed == 0  # a list whose comparisons hang times out and falls back to string equality
    assert classes == [[0, 1, 0, 2, 1, 3]]
    start = time.monotonic()
    assert same_answer(SLOW[len("\\boxed{"):-1], "4", timeout=1.5) is False  # on the main thread
    assert time.monotonic() - start < 1.5 + 1


@pytest.mark.slow
@pytest.mark.shared_data
def test_agrees_with_the_graded_gsm8k_pool(shared_data):
    """GSM8K candidates carry the source's grading; our verifier must reproduce it almost exactly."""
    rows = [json.loads(line) for line in open(shared_data / "gsm8k-candidates" / "dev.jsonl")][:400]
    got = verify_batch([r["response"] for r in rows], [r["gold"] for r in rows], workers=2)
    agree = sum(g == r["correct"] for g, r in zip(got, rows)) / len(rows)
    assert agree >= 0.99, agree
