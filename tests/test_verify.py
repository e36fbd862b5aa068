"""The shared verifier: extraction after the reasoning, math-verify equivalence, fail closed, timeouts."""

from __future__ import annotations

import json
import threading
import time

import pytest

from thinkrm.verify import (
    VerifyError,
    answer_classes,
    extract_answer,
    get_pool,
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


def test_verify_batch_matches_verify_and_checks_lengths():
    responses = ["\\boxed{2}", "A: 7", "nothing", "<think>\\boxed{5}</think>\\boxed{6}"]
    golds = ["2", "8", "1", "6"]
    assert verify_batch(responses, golds, workers=2) == [verify(r, g) for r, g in zip(responses, golds)]
    assert verify_batch(responses, golds, workers=2) == [True, False, False, True]
    with pytest.raises(ValueError, match="3 responses but 2"):
        verify_batch(responses[:3], golds[:2])


def test_pathological_item_is_killed_and_the_worker_replaced():
    """100000000! against 4 takes sympy several seconds even with math-verify's own 1 s alarms (it retries
    per parsed form); the hard deadline must cut it, count it, and the next items must still be checked."""
    pool = get_pool(1)
    assert verify_batch(["\\boxed{1}"], ["1"], workers=1) == [True]  # the worker is up
    first = pool._procs[0]
    responses = ["\\boxed{5}", "\\boxed{100000000!}", "\\boxed{7}", "\\boxed{8}"]
    golds = ["5", "4", "7", "9"]
    start = time.monotonic()
    report = verify_batch_report(responses, golds, timeout=1.5, workers=1)
    assert report.results == [True, False, True, False]
    assert report.timeouts == 1 and report.errors == 0
    assert first.poll() is not None  # killed...
    assert pool._procs[0] is not first and pool._procs[0].poll() is None  # ...and replaced by a live worker
    assert time.monotonic() - start < 30


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


@pytest.mark.slow
@pytest.mark.shared_data
def test_agrees_with_the_graded_gsm8k_pool(shared_data):
    """GSM8K candidates carry the source's grading; our verifier must reproduce it almost exactly."""
    rows = [json.loads(line) for line in open(shared_data / "gsm8k-candidates" / "dev.jsonl")][:400]
    got = verify_batch([r["response"] for r in rows], [r["gold"] for r in rows], workers=2)
    agree = sum(g == r["correct"] for g, r in zip(got, rows)) / len(rows)
    assert agree >= 0.99, agree
