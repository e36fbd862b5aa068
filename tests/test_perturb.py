"""The ME² perturbation generator: keeps the answer, changes only the recorded span, deterministic."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from thinkrm.cli import app
from thinkrm.perturb import OPS, Edit, parse_ops, perturb_records, perturb_trace
from thinkrm.trace import Trace, trace_from_record
from thinkrm.verify import extract_answer

THINKING = (
    "<|begin_of_thought|>\n\nOkay, so I need to find how many seconds are in 7.8 minutes.\n\n"
    "First, there are 60 seconds in one minute, so 7 minutes is 60 * 7 = 420 seconds.\n\n"
    "Then 0.8 minutes is 60 * 0.8 = 48 seconds, because each minute has 60 seconds.\n\n"
    "Let me verify: 420 + 48 = 468, and 468 / 60 = 7.8, which matches.\n\n"
    "So the total is 468 seconds.\n\n<|end_of_thought|>\n\n"
    "The number of seconds is 420 + 48 = 468.\n\n\\boxed{468}"
)
GSM8K = ("Janet has 16 eggs and eats 3 so 16 - 3 = <<16-3=13>>13 eggs are left\n"
         "She bakes 4 into muffins so 13 - 4 = <<13-4=9>>9 eggs are for sale\n"
         "She sells them for $2 each so 9 * 2 = $<<9*2=18>>18 per day\n"
         "A: 18")
PLAIN = ("We need the sum of the first 10 positive integers.\n\n"
         "Since the sum of 1..n is n(n+1)/2, the sum is 10 * 11 / 2 = 55.\n\n"
         "Let me check by pairing: (1+10) + (2+9) + ... gives 5 pairs of 11, and 5 * 11 = 55.\n\n"
         "Therefore the answer is \\boxed{55}.")


def _trace(response: str, tid: str = "t", prompt: str = "How many?", **extra) -> Trace:
    return trace_from_record({"id": tid, "prompt": prompt, "response": response, **extra}, default_id=tid)


OTHER_STEPS = ["Consider the triangle with sides 3, 4 and 5; its area is 6 because it is a right triangle.",
               "The derivative of x^2 is 2x, which is a completely different topic from this one."]


@pytest.mark.parametrize("response", [THINKING, GSM8K, PLAIN])
def test_every_op_keeps_answer_and_changes_only_its_span(response):
    trace = _trace(response)
    found = perturb_trace(trace, seed=3, detour_pool=OTHER_STEPS)
    assert {p.op for p in found} == set(OPS), "every op applies to these traces"
    for p in found:
        rejected = p.edit.apply(response)
        assert rejected != response
        assert p.dimension == OPS[p.op]
        e = p.edit
        # Everything outside the claimed span is byte-identical.
        assert rejected[:e.start] == response[:e.start]
        assert rejected[e.start + len(e.inserted):] == response[e.start + len(e.removed):]
        assert extract_answer(rejected) == extract_answer(response) is not None
        # The edit is inside the reasoning, never in the part after the end-of-thinking marker.
        assert e.start + len(e.removed) <= response.find(trace.reasoning) + len(trace.reasoning)


def test_ops_do_what_they_claim():
    trace = _trace(PLAIN)
    by_op = {p.op: p.edit for p in perturb_trace(trace, seed=0, detour_pool=OTHER_STEPS)}
    announce, *copied = by_op["restart"].inserted.strip().split("\n\n")
    assert copied and all(c in PLAIN for c in copied) and PLAIN.startswith(copied[0])  # an earlier stretch, re-run
    assert announce not in PLAIN
    assert any(s in by_op["detour"].inserted for s in OTHER_STEPS)
    assert by_op["drop_justification"].removed.strip() and "=" in by_op["drop_justification"].removed
    assert "\\boxed" not in by_op["drop_justification"].removed
    wrong = by_op["wrong_then_fixed"].inserted
    # The injected step is a copy of a real step with one number changed, followed by a retraction.
    first = wrong.split("\n\n")[0]
    original = next(s for s in PLAIN.split("\n\n") if len(s) == len(first) or s[:20] == first[:20])
    assert first != original
    assert sum(a != b for a, b in zip(first, original)) >= 1
    dup = by_op["duplicate_check"].inserted
    assert dup.split("\n\n")[1] in PLAIN  # the repeated step is verbatim


def test_deterministic_by_seed_and_seed_matters():
    traces = [_trace(THINKING, "a"), _trace(PLAIN, "b", prompt="Sum?"), _trace(GSM8K, "c", prompt="Eggs?")]
    run = lambda seed: [json.dumps(r, sort_keys=True) for r in perturb_records(traces, seed=seed)]  # noqa: E731
    assert run(0) == run(0)
    assert run(0) != run(1)


def test_incorrect_traces_are_skipped_and_fields_carried():
    traces = [_trace(PLAIN, "ok", correct=True, problem_id="p1"), _trace(GSM8K, "bad", correct=False)]
    recs = list(perturb_records(traces, ["filler"]))
    assert [r["source_id"] for r in recs] == ["ok"]
    r = recs[0]
    assert r["problem_id"] == "p1" and r["chosen"] == PLAIN and r["kind"] == "filler"
    assert r["dimension"] == "micro_efficiency"
    assert Edit(**r["edit"]).apply(r["chosen"]) == r["rejected"]


def test_short_traces_are_not_forced():
    trace = _trace("The answer is 4 because 2 + 2 = 4.")
    assert perturb_trace(trace, ["restart", "drop_justification"]) == []
    assert perturb_trace(_trace("<think></think>The answer is 4."), None) == []


def test_reasoning_that_is_not_in_the_response_is_an_input_error():
    from thinkrm.io import InputError

    trace = Trace(id="x", prompt="p", reasoning="Some other text.\n\nMore.", response=PLAIN, source="in.jsonl:3")
    with pytest.raises(InputError, match="in.jsonl:3"):
        perturb_trace(trace)


def test_bad_ops_and_bad_edits_are_reported():
    with pytest.raises(ValueError, match="unknown perturbation op"):
        parse_ops("restart,teleport")
    with pytest.raises(ValueError, match="does not match"):
        Edit(0, "x", removed="nope").apply("something else")


_SENTENCE = st.sampled_from([
    "So we compute 3 * 4 = 12 here.", "Wait, let me check that again because it matters.",
    "Alternatively, we can use the formula a + b = c directly.", "Then the total becomes 12 + 5 = 17.",
    "Hmm, this seems right since every term is positive.", "Next, note that 2^3 = 8 by definition."])


@settings(max_examples=40, deadline=None)
@given(st.lists(_SENTENCE, min_size=1, max_size=8), st.sampled_from(["\n\n", "\n"]), st.integers(0, 5))
def test_invariants_hold_on_arbitrary_traces(steps, sep, seed):
    response = sep.join(steps + ["Therefore the final answer is \\boxed{17}."])
    trace = _trace(response)
    for p in perturb_trace(trace, seed=seed, detour_pool=OTHER_STEPS):
        rejected = p.edit.apply(response)
        assert extract_answer(rejected) == "17"
        assert rejected.endswith("Therefore the final answer is \\boxed{17}.")


def test_cli_writes_pairs_and_reports_errors(tmp_path):
    src = tmp_path / "cands.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"problem_id": "1", "prompt": "Sum?", "response": PLAIN, "correct": True},
        {"problem_id": "2", "prompt": "Eggs?", "response": GSM8K, "correct": True},
        {"problem_id": "3", "prompt": "Eggs?", "response": GSM8K, "correct": False},
    ]) + "\n")
    out = tmp_path / "pairs.jsonl"
    runner = CliRunner()
    res = runner.invoke(app, ["perturb", str(src), "-o", str(out), "--ops", "filler,restart", "--seed", "7"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["kind"] for r in recs} == {"filler", "restart"}
    assert {r["problem_id"] for r in recs} == {"1", "2"}
    assert all({"prompt", "chosen", "rejected", "dimension", "edit"} <= set(r) for r in recs)

    res = runner.invoke(app, ["perturb", str(src), "-o", str(out), "--ops", "bogus"])
    assert res.exit_code == 2 and "unknown perturbation op" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "response": PLAIN}) + "\n{not json\n")
    before = out.read_text()
    res = runner.invoke(app, ["perturb", str(bad), "-o", str(out)])
    assert res.exit_code == 2 and "bad.jsonl:2" in res.output and "Traceback" not in res.output
    assert out.read_text() == before, "a failed run must not touch the previous output"
