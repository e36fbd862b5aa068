"""Step partitioning: the paragraph rule, the line/sentence fallbacks, fragments, limits, invariants."""

from __future__ import annotations

import json
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinkrm.delimiters import Lexicon
from thinkrm.steps import MAX_STEPS, Step, split_steps

LEX = Lexicon.of(["wait", "so", "alternatively", "hmm", "now"])


def check_invariants(text: str, steps: list[Step]) -> None:
    if not text.strip():
        assert steps == []
        return
    assert steps[0].start == 0 and steps[-1].end == len(text)
    for a, b in zip(steps, steps[1:]):
        assert a.end == b.start
    for i, s in enumerate(steps):
        assert s.index == i
        assert s.start < s.end
        assert s.text == text[s.start:s.end].strip()
        assert s.text  # no whitespace-only step
    assert "".join(text[s.start:s.end] for s in steps) == text


def texts(steps: list[Step]) -> list[str]:
    return [s.text for s in steps]


def test_empty_and_whitespace_give_no_steps():
    assert split_steps("") == []
    assert split_steps(" \n\n\t \n") == []


def test_paragraph_opens_a_step_only_with_a_delimiter():
    text = ("We need the sum of the first ten odd numbers here.\n\n"
            "The odd numbers are 1, 3, 5 and so on up to 19 in total.\n\n"
            "So the sum is 100, since the sum of the first n odd numbers is n squared.\n\n"
            "Wait, let me make sure by adding them: 1+3+5+7+9+11+13+15+17+19 = 100.\n")
    steps = split_steps(text, LEX)
    check_invariants(text, steps)
    assert [s.text.split()[0] for s in steps] == ["We", "So", "Wait,"]
    assert "The odd numbers" in steps[0].text  # a non-delimiter paragraph joins the step before


def test_first_word_ignores_markdown_and_case():
    text = ("Setting up: the triangle has sides 3, 4 and 5, so it is a right triangle.\n\n"
            "**Alternatively**, we could use Heron's formula with s = 6 to get the area.\n\n"
            "> HMM, both give an area of 6, which is consistent with the legs 3 and 4.\n")
    assert len(split_steps(text, LEX)) == 3


def test_leading_and_trailing_whitespace_stay_inside_the_steps():
    text = ("\n\n  First we compute the discriminant b^2 - 4ac = 16.\n\n"
            "So the roots are real and distinct here.\n\n\n")
    steps = split_steps(text, LEX)
    check_invariants(text, steps)
    assert len(steps) == 2


def test_lines_when_there_are_no_blank_lines():
    text = ("Janet eats 3 eggs for breakfast so she has 16 - 3 = 13 eggs left\n"
            "She bakes muffins with 4 so she has 13 - 4 = 9 eggs to sell\n"
            "She sells 9 eggs at $2 each so she makes 9 * 2 = $18 every day\n"
            "A: 18")
    steps = split_steps(text, LEX)
    check_invariants(text, steps)
    assert len(steps) == 3  # one per line; the tiny "A: 18" finishes the last step
    assert steps[-1].text.endswith("A: 18")
    formulas = "3x + 7 = 22\n3x = 22 - 7 = 15\nx = 15 / 3 = 5\nCheck: 3 * 5 + 7 = 22"
    assert texts(split_steps(formulas, LEX)) == ["3x + 7 = 22", "3x = 22 - 7 = 15", "x = 15 / 3 = 5",
                                                 "Check: 3 * 5 + 7 = 22"]


def test_sentences_for_a_single_giant_paragraph():
    sentence = "The value of x is obtained by dividing both sides of the equation by {n}. "
    text = "".join(sentence.format(n=i) for i in range(50)).strip()
    steps = split_steps(text, LEX)
    check_invariants(text, steps)
    assert len(steps) == 50


def test_tiny_lead_in_joins_the_next_step_and_formulas_join_the_previous():
    text = ("Now we expand the product (x + 1)(x - 1) using the difference of squares.\n\n"
            "Hmm.\n\n"
            "Wait, the product is x^2 - 1, not x^2 + 1, because the cross terms cancel.\n\n"
            "So\n\n"
            "\\[ x^2 - 1 = 0 \\implies x = \\pm 1 \\]\n\n"
            "So the solutions are x = 1 and x = -1, and their sum is 0 as expected.")
    steps = split_steps(text, LEX)
    check_invariants(text, steps)
    assert len(steps) == 3
    assert texts(steps)[1].startswith("Hmm.\n\nWait, the product")
    # "So" + a formula states a result without prose: it finishes the step that derived it
    assert texts(steps)[1].endswith("\\pm 1 \\]") and texts(steps)[2].startswith("So the solutions")


def test_a_short_statement_finishes_its_step_and_a_lead_in_opens_the_next():
    text = ("Speed is distance divided by time, so the speed is 180 km over 2.5 hours.\n\n"
            "So the speed is v = 90 km/h.\n\n"
            "Wait, no, that's wrong: 90 * 2.5 = 225, not 180, so the division was off.\n\n"
            "Hmm, let me redo it:\n\n"
            "Now 180 / 2.5 is the same as 360 / 5 = 72, so the speed is 72 km/h.")
    steps = split_steps(text, LEX)
    check_invariants(text, steps)
    assert len(steps) == 3
    assert texts(steps)[0].endswith("v = 90 km/h.") and texts(steps)[1].startswith("Wait, no")
    assert texts(steps)[2].startswith("Hmm, let me redo it:\n\nNow 180")


def test_a_lone_formula_line_is_not_a_step():
    text = ("We substitute the known values into the formula for the area\n"
            "A = 1/2 * 6 * 8\n"
            "which gives an area of 24 square units for the triangle")
    steps = split_steps(text, LEX)
    check_invariants(text, steps)
    assert len(steps) == 2 and "A = 1/2" in steps[0].text


def test_default_lexicon_is_used_when_none_is_given():
    text = ("Let me set up the equation for the perimeter of the rectangle first.\n\n"
            "The perimeter is 2(l + w) = 20, which gives l + w = 10 for the sides.\n\n"
            "Alternatively, we can start from the diagonal and use Pythagoras on it.\n")
    assert len(split_steps(text)) == 2


def test_a_million_characters_are_partitioned_and_capped():
    """Speed (~0.3 s here; a quadratic pass would take minutes) is measured by benchmarks/bench_adversarial.py."""
    para = ("So we continue with the computation of the next term in the series, which is {i}.\n\n"
            "The partial sum so far equals {i} squared.\n\n")
    text = "".join(para.format(i=i) for i in range(8000))[:1_000_000]
    steps = split_steps(text, LEX)
    check_invariants(text, steps)
    assert len(steps) == MAX_STEPS
    one_paragraph = "x" * 1_000_000
    steps = split_steps(one_paragraph, LEX)
    check_invariants(one_paragraph, steps)
    assert len(steps) == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("ab \n\t.!?,SoWwait$\\1") + ["So ", "Wait, ", "\n\n", ". A", "word "]),
                max_size=120).map("".join))
def test_invariants_hold_for_any_text(text):
    check_invariants(text, split_steps(text, LEX))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_invariants_hold_for_arbitrary_unicode(text):
    check_invariants(text, split_steps(text))


@pytest.mark.shared_data
def test_long_reasoners_get_ten_to_forty_steps(shared_data):
    """On the Sky-T1 long reasoners the default lexicon gives ~10-40 steps per trace."""
    from thinkrm.trace import split_response

    counts = []
    with open(shared_data / "skythought-math500" / "candidates.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["model"] == "Sky-T1-math-correct-5K-27B":
                reasoning = split_response(rec["response"])[0]
                counts.append(len(split_steps(reasoning)))
    assert len(counts) == 500
    assert 10 <= statistics.median(counts) <= 40


def test_trace_of_short_paragraphs_does_not_collapse_into_one_step():
    # Every paragraph is a fragment on its own; they must group into small steps, not one giant step.
    text = "Wait, let me recompute: 12 * 12 = 144.\n\nSo x = 144 and we go on.\n\n" * 50
    steps = split_steps(text)
    assert len(steps) == 50
    assert all(s.text.startswith("Wait") for s in steps)
    assert "".join(text[s.start:s.end] for s in steps) == text
