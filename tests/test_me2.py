"""ME² signals, each checked on text or a hand-built DAG whose right value is known by construction."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinkrm.arithmetic import evaluate
from thinkrm.dag import DAG, StepNode, SuperNode
from thinkrm.me2 import DIMENSIONS, SIGNALS, Analysis, analyze
from thinkrm.steps import Step
from thinkrm.trace import Trace, load_traces

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "traces.jsonl"


def hand_dag(parts: list[str], actions: list[tuple[str, list[int]]],
             groups: list[tuple[list[int], list[int]]], answer_path: list[int]) -> DAG:
    """A DAG built by hand: steps are `parts` joined by blank lines; `groups` are (members, parent ids)."""
    text = "\n\n".join(parts)
    steps, pos = [], 0
    for i, p in enumerate(parts):
        end = pos + len(p) + (2 if i < len(parts) - 1 else 0)
        steps.append(Step(i, pos, end, p))
        pos = end
    nodes = [StepNode(i, parents, action) for i, (action, parents) in enumerate(actions)]
    supers = [SuperNode(sid, members, parents, [], [], 0, nodes[members[0]].action)
              for sid, (members, parents) in enumerate(groups)]
    for s in supers:
        for p in s.parents:
            supers[p].children.append(s.id)
        s.depth = max((supers[p].depth + 1 for p in s.parents), default=0)
        s.roles = [r for r, on in (("root", not s.parents), ("branch", len(s.children) > 1),
                                   ("merge", len(s.parents) > 1), ("leaf", not s.children)) if on]
    return DAG(text, steps, nodes, supers, answer_path[-1], answer_path)


# Three attempts from the set-up: a dead end, a second try from the same fork (reopened), and the answer.
PARTS = [
    "We need the area of a rectangle with sides 3 and 4.",
    "Try the perimeter formula: 2 * (3 + 4) = 14. That is a perimeter, not an area.",
    "Alternatively, the area is length times width, so 3 * 4 = 12.",
    "Let me verify: 4 * 3 = 12, the same.",
    "Alternatively, count unit squares: 3 rows of 4 squares is 12 squares.",
    "Therefore the area is 12.",
]
ACTIONS = [("continue", []), ("continue", [0]), ("backtrack", [0]), ("continue", [2]), ("backtrack", [0]),
           ("merge", [3, 4])]
GROUPS = [([0], []), ([1], [0]), ([2, 3], [0]), ([4], [0]), ([5], [2, 3])]


def test_macro_efficiency_counts_match_the_constructed_dag():
    dag = hand_dag(PARTS, ACTIONS, GROUPS, [0, 2, 4])
    a = analyze("", dag=dag, prompt="What is the area of a 3 by 4 rectangle?")
    me = a.signals["macro_efficiency"]
    assert me["backtracks"] == 2
    assert me["restarts"] == 2  # both backtracks return to the set-up step 0
    assert me["reopened_branches"] == 1  # the second return to step 0
    assert me["dead_ends"] == 1  # super-node 1 (the perimeter detour)
    # Only step 1 never feeds the answer: step 4 is merged into it, so it counts as on the path.
    assert me["off_path_share"] == pytest.approx(1 / 6, abs=1e-3)
    words = sum(len(p.split()) for p in PARTS)
    assert a.size == {"steps": 6, "supernodes": 5, "words": words, "chars": len(dag.text), "depth": 2}
    dead = [f for f in a.findings if f.kind == "dead_ends"]
    assert [(f.step, dag.text[f.start:f.end].strip()) for f in dead] == [(1, PARTS[1])]


def test_macro_effectiveness_coherence_and_drift():
    dag = hand_dag(PARTS, ACTIONS, GROUPS, [0, 2, 4])
    a = analyze("", dag=dag, prompt="What is the area of a 3 by 4 rectangle?")
    mf = a.signals["macro_effectiveness"]
    # answer path 0 -> 2 -> 4: {area,rectangle,sides,3,4,need} vs {alternatively... area,3,4,12,...} overlap
    assert 0 < mf["path_coherence"] <= 1
    # Steps 3 ("verify 4 * 3 = 12") and 4 ("3 rows of 4 squares") still share numbers with the prompt;
    # only a step with nothing in common with it counts as drift.
    assert mf["question_drift"] == 0.0
    drifting = hand_dag(["The area of a 3 by 4 rectangle.", "Unrelated musings on poetry and rhyme."],
                        [("continue", []), ("continue", [0])], [([0, 1], [])], [0])
    off = analyze("", dag=drifting, prompt="Area of a 3 by 4 rectangle?")
    assert off.signals["macro_effectiveness"]["question_drift"] == 0.5
    assert off.signals["macro_effectiveness"]["path_coherence"] is None  # a one-node path has no pairs
    assert analyze("x = 1").signals["macro_effectiveness"]["question_drift"] is None  # no prompt given


def test_answer_path_coherence_distinguishes_related_from_unrelated_nodes():
    def coherence(second: str) -> float:
        dag = hand_dag(["Compute the area of the square with side 5 meters.", second],
                       [("continue", []), ("backtrack", [0])], [([0], []), ([1], [0])], [0, 1])
        return analyze("", dag=dag).signals["macro_effectiveness"]["path_coherence"]

    assert coherence("The square area with side 5 is 25 square meters.") > 0.5
    assert coherence("Bananas ripen faster near apples.") == 0.0


@pytest.mark.parametrize("claim, holds", [
    ("3 + 4 = 7", True), ("3 + 4 = 8", False), ("12 * 12 = 144", True), ("7 * 8 = 54", False),
    ("2^10 = 1024", True), ("1/3 = 0.33", True), ("1/3 = 0.4", False), ("2/3 = 0.66", True),
    ("2/3 = 0.67", True), ("2/3 = 0.68", False), ("160000 / 9 = 17777.777...", True),
    ("10 - 2 + 3 = 11", True),
    ("(2 + 3) * 4 = 20", True), ("1,000 + 24 = 1,024", True), ("3 \\times 5 = 15", True),
    ("12 \\div 4 = 3", True), ("7 / 2 = 3", False), ("2 * 3 = 6 = 3 + 3", True), ("−4 + 6 = 2", True),
    # LaTeX numeric forms
    ("$\\frac{3}{4} = 0.75$", True), ("$\\dfrac{1}{3} = 0.33$", True), ("$\\frac{6}{8} = \\frac{3}{4}$", True),
    ("\\frac{1}{2} + 1 = 3", False), ("\\frac{1}{2} \\times 3 \\times 4 = 6", True),
    ("$\\binom{6}{3} = 20$", True), ("$\\binom{6}{3} = 60$", False), ("$2^{10} = 1024$", True),
    ("$2^{10} = 1000$", False), ("5! = 120", True), ("$3! \\cdot 2! = 12$", True), ("$\\sqrt{16} = 4$", True),
    ("$\\frac{1,000}{4} = 250$", True),
    # rounded decimals substituted into an expression hold; a wrong sum of them does not
    ("$\\sqrt{2} + 1 = 1.414 + 1 = 2.414$", True), ("$\\sqrt{2} - 1.4 = 1.414 - 1.4 = 0.014$", True),
    ("$\\frac{1}{4} + \\frac{1}{3} = 0.25 + 0.33 = 0.68$", False), ("1640 \\cdot 5.916 = 9699.84", False),
    # a clause-ending command before the numbers does not hide the claim
    ("$\\Rightarrow 2 + 3 = 6$", False), ("$\\quad 2 + 3 = 5$", True), ("\\geq (1 + 1 + 2 + 4)^2 = 36", False),
])
def test_arithmetic_claims_are_evaluated(claim, holds):
    s = analyze(f"We get {claim} here.").signals["micro_effectiveness"]
    assert (s["arithmetic_checked"], s["arithmetic_wrong"]) == (claim.count("="), 0 if holds else 1)


@pytest.mark.parametrize("text", [
    "x - 2 + 3 = 1",  # part of an equation with a variable
    "2x + 3 = 7",
    "2 + 2 = 4x",
    "f(2) + 3 = 9",
    "the value 7 = 7",  # no operator: not a claim
    "a_1 + 2 = 5",
    "so 3 + 4 = 7!",  # an exclamation, not a factorial
    "$\\sqrt{50} = 5\\sqrt{2}$",  # implicit product
    "$\\frac{x}{2} = 3$",
    "$2^{-1} = 0.5$",
    "$\\frac{1}{3} = 0.\\overline{3}$",  # repeating decimal
    "$2 \\frac{3}{4} = 2 + \\frac{3}{4}$",  # mixed number
    "$f''(\\sqrt{2}) = 8$",  # a function's value
    "$5 \\star 1 = 45 + 2 - 5 + 5$",  # a custom operator
    "$1000! = 5$",  # too large to evaluate
    "Check 2+3!=6 holds.",  # "not equal"
    "$\\frac{17}{5} = 3$, remainder $2$",
    "$\\frac{17}{5} = 3$ with another remainder",
    "$\\frac{17}{5} = 3 R2$",
    "$\\frac{3}{4} = 75$ percent",
    "$\\frac{3}{4} = 75%$",
    "$\\frac{1}{2} = 1 : 2$",  # a ratio
    "$2^{4} = 1 mod 5$",
    "$\\frac{1}{2} = 0,5$",  # decimal comma
    "$\\log 8 + 1 = 4$",  # operand of a function
    "2 \\cdot 120 \\cdot 120 = 28,\\!800",  # LaTeX thousands separator
    "(-1)^3 = 128 i (-1)",  # multiplied by a variable
    "9 ÷ 8 = 1 remainder 1",  # integer division
    "$111 \\div 5 = 22$ remainder $1$",
    "1234 = 1 + 2 + 3 + 4",  # digit notation, not an equality
    "2% of 2000 = 0.02 * 2000",  # the percentage is outside the numeric fragment
    "the ratio is $1^2:3^2 = 1:9$",
    "|16-4| -10 = 12 - 10",
])

def test_numbers_inside_larger_expressions_are_not_checked(text):
    assert analyze(text).signals["micro_effectiveness"]["arithmetic_checked"] == 0


def test_running_sums_check_only_the_steps():
    s = analyze("Add: 5+6+7+8 = 5+6 = 11, and 256 - 400 + 240 = 256 - 400 = -144.").flat()
    assert (s["arithmetic_checked"], s["arithmetic_wrong"]) == (2, 0)


def test_evaluation_is_safe_and_bounded():
    assert evaluate("9 ^ 9 ^ 9") is None  # would take forever as an exact integer
    assert evaluate("1 / 0") is None
    assert evaluate("__import__('os')") is None
    assert evaluate("2 ^ 3 ^ 2") == 512.0  # right-associative, as in mathematics
    assert evaluate("\\frac{1}{0}") is None
    assert evaluate("171!") is None and evaluate("\\binom{5000}{2500}") is None  # beyond a float
    assert evaluate("\\sqrt{-4}") is None
    assert evaluate("comb(1000000, 500000)") is None  # bounded however they are reached
    assert evaluate("factorial(2.5)") is None and evaluate("print(1)") is None


def test_micro_effectiveness_corrections_and_conflicts():
    text = ("Let x = 3. Then y = 10.\n\nWait, no, that's wrong: x = 5 actually. I made a mistake earlier.\n\n"
            "So y = 10 still, and 5 + 5 = 10.")
    a = analyze(text)
    s = a.signals["micro_effectiveness"]
    assert s["self_corrections"] == 2  # "Wait, no, that's wrong" counts once; "I made a mistake" once
    assert s["conflicting_values"] == 1  # x took 3 then 5; y stayed 10
    conflict = [f for f in a.findings if f.kind == "conflicting_values"]
    assert len(conflict) == 1 and text[conflict[0].start:conflict[0].end] == "x = 5"
    assert analyze("Let x = 3 + y and then x = 3.").signals["micro_effectiveness"]["conflicting_values"] == 0


def test_micro_efficiency_filler_duplicates_paraphrases_and_rechecks():
    para = [
        "So the divisors of 36 are 1, 2, 3, 4, 6, 9, 12, 18 and 36 in total.",
        "Let me check with product pairs: 1 times 36 and 2 times 18 both give 36.",
        "So the divisors of 36 are 1, 2, 3, 4, 6, 9, 12, 18 and 36 in total.",  # verbatim repeat of 0
        "Listing them again, 36 has divisors 36, 18, 12, 9, 6, 4, 3, 2, 1 altogether.",  # reworded repeat
        "Let me verify the count once more by counting the list.",
        "Let me double-check by pairing again.",
    ]
    chain = [("continue", [])] + [("continue", [i]) for i in range(5)]
    dag = hand_dag(para, chain, [(list(range(6)), [])], [0])
    s = analyze("", dag=dag).signals["micro_efficiency"]
    assert s["near_duplicate_steps"] == 1
    assert s["paraphrase_loops"] == 1
    assert s["reverifications"] == 2  # three verification steps: the first is fine, two more are re-checks
    assert s["words_per_step"] == pytest.approx(sum(len(p.split()) for p in para) / 6, abs=0.05)
    filler = analyze("Hmm, okay so, basically, let me think. The answer is 4.").signals["micro_efficiency"]
    assert filler["filler_per_1k"] == pytest.approx(1000 * 4 / 11, abs=0.01)


def test_recheck_phrases_and_certainty_claims_are_counted_anywhere_in_a_step():
    text = "So 0.8 * 60 = 48. Let's calculate 0.8 * 60 once more to make sure, and confirm it is definitely 48."
    a = analyze(text)
    assert a.signals["micro_efficiency"]["recheck_phrases"] == pytest.approx(1000 * 3 / len(text.split()), abs=0.01)
    assert [text[f.start:f.end] for f in a.findings if f.kind == "recheck_phrases"] == [
        "once more", "to make sure", "confirm"]
    assert a.signals["macro_effectiveness"]["unsupported_claims"] > 0
    assert analyze("So 0.8 * 60 = 48.").signals["micro_efficiency"]["recheck_phrases"] == 0
    # The restated steps PRMBench's redundancy rewrites insert announce themselves in these words too.
    redo = ("Let's verify: 48 / 60 = 0.8. Let me double-check and cross check it. To recap, we reiterate and "
            "revisit the count before proceeding; let's review it and recount to ensure it is 48. Verified.")
    assert [redo[f.start:f.end].lower() for f in analyze(redo).findings if f.kind == "recheck_phrases"] == [
        "let's verify", "double-check", "cross check", "recap", "reiterate", "revisit", "before proceeding",
        "review", "recount", "to ensure", "verified"]
    # Words that only start like a re-check, and obligations and conditions, are not one.
    plain = ("Record the result, reveal the card and count the rest; the reviewer recaptured the flag. "
             "It remains to verify that f is injective, and we must ensure the domain is restricted.")
    assert analyze(plain).signals["micro_efficiency"]["recheck_phrases"] == 0


def test_unused_givens_compares_values_written_as_digits_or_words():
    prompt = "Janet's ducks lay 16 eggs a day. She eats three and bakes with four. She sells the rest for $2 each."
    full = "16 - 3 - 4 = 9 eggs are left, and 9 * 2 = 18 dollars.\nA: 18"
    partial = "16 - 3 = 13 eggs are left, and 13 * 2 = 26 dollars.\nA: 26"  # ignores the four for muffins
    assert analyze(full, prompt=prompt).flat()["unused_givens"] == 0.0
    assert analyze(partial, prompt=prompt).flat()["unused_givens"] == 0.25
    assert analyze(full, prompt="Add them up.").flat()["unused_givens"] is None  # nothing given
    assert analyze(full).flat()["unused_givens"] is None  # no prompt
    assert analyze("It tends to infinity.", prompt="Is nan a number? Does it reach infinity?").flat()[
        "unused_givens"] is None  # words that float() would parse are not numbers


@pytest.mark.parametrize("text, expected", [
    ("3 * 4 = 12 and 12 + 1 = 13.\nA: 13", 0),
    ("3 * 4 = 12 and 12 + 1 = 13.\nA: 15", 1),  # the answer was never computed
    ("So $x = 7$ and the answer is \\boxed{7}.", 0),
    ("We guess it works, so the answer is \\boxed{7}.", 1),
    ("So the answer is \\boxed{\\frac{1}{2}}.", None),  # not a plain number: nothing to check
    ("No final answer here, only 3 * 4 = 12.", None),
    ("= <<13*2=26>>26 dollars\n#### 26", 0),
])
def test_answer_not_derived(text, expected):
    assert analyze(text).flat()["answer_not_derived"] == expected


def test_odd_results_is_the_share_of_negative_or_fractional_results():
    s = analyze("10 / 4 = 2.5 and 3 - 5 = -2, but 6 * 7 = 42 and 9 + 1 = 10.").flat()
    assert s["arithmetic_checked"] == 4 and s["odd_results"] == 0.5
    assert analyze("No arithmetic here.").flat()["odd_results"] == 0.0


def test_empty_and_whitespace_traces_give_zero_signals():
    for text in ("", "   \n\n  "):
        a = analyze(text)
        assert a.size["steps"] == 0 and a.dag.answer_path == []
        assert a.flat()["backtracks"] == 0 and a.flat()["off_path_share"] == 0.0 and a.findings == []


def test_analysis_serialises_every_registered_signal_once():
    a = analyze(Trace(id="t", prompt="What is 2 + 2?", reasoning="2 + 2 = 4.\n\nSo the answer is 4."))
    assert isinstance(a, Analysis) and a.id == "t"
    d = a.to_dict()
    assert set(d) == {"size", "findings", *DIMENSIONS}
    names = [k for dim in DIMENSIONS for k in d[dim]]
    assert sorted(names) == sorted(SIGNALS) and len(names) == len(set(names))
    for dim in DIMENSIONS:
        assert all(SIGNALS[k].dimension == dim for k in d[dim])
    with pytest.raises(TypeError):
        analyze(42)


def test_examples_clean_traces_beat_flawed_ones_on_the_signals():
    """Each flawed example shows its flaw in some signal where the clean trace of its problem is spotless."""
    traces = list(load_traces(EXAMPLES))
    by_problem: dict[str, dict[str, list]] = {}
    for t in traces:
        by_problem.setdefault(t.prompt, {"clean": [], "flawed": []})[t.extra["quality"]].append(analyze(t))
    assert len(by_problem) >= 3 and len(traces) >= 10
    flaw_signals = [k for k, s in SIGNALS.items() if s.better == "lower"]
    for groups in by_problem.values():
        assert groups["clean"] and groups["flawed"]
        for clean in groups["clean"]:
            # Text-level signals only: DAG-level ones depend on the structurer's heuristics.
            assert clean.flat()["arithmetic_wrong"] == 0 and clean.flat()["self_corrections"] == 0
            for bad in groups["flawed"]:
                worse = [k for k in flaw_signals if (bad.flat()[k] or 0) > (clean.flat()[k] or 0)]
                assert worse, f"flawed trace {bad.id} is no worse than {clean.id} on any signal"


PIECES = list("ab 12+-*/=().,\n xyz") + ["\n\n", " = ", "Alternatively, ", "Wait, no, ", "x = 3", "2 + 2 = 5"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=120).map("".join))
def test_any_text_gives_bounded_signals_and_valid_findings(text):
    a = analyze(text, prompt="a b")
    flat = a.flat()
    assert 0.0 <= flat["off_path_share"] <= 1.0
    assert flat["question_drift"] is None or 0.0 <= flat["question_drift"] <= 1.0
    assert flat["path_coherence"] is None or 0.0 <= flat["path_coherence"] <= 1.0
    assert 0 <= flat["arithmetic_wrong"] <= flat["arithmetic_checked"]
    for f in a.findings:
        assert 0 <= f.start <= f.end <= len(text) and 0 <= f.step < max(1, a.size["steps"])


def test_a_100k_character_trace_is_analysed_in_full():
    """Speed (well under a second of CPU) is measured by benchmarks/bench_adversarial.py on this input, and on
    real long traces (issue 2's median < 20 ms) by benchmarks/bench_pipeline.py."""
    para = ("Wait, let me check the sum again: 17 + 25 = 42 and 42 * 3 = 126, so x = 126.\n\n"
            "Alternatively, compute 126 / 3 = 42 first, then hmm, subtract 25 to get 17.\n\n"
            "So the total is 126 after all, which matches the earlier value of the expression.\n\n")
    text = (para * (100_000 // len(para) + 1))[:100_000]
    a = analyze(text, prompt="Compute 17 + 25, then triple it.")
    assert a.size["chars"] == 100_000 and a.flat()["arithmetic_checked"] > 1000


# One phrase per alternative of each pattern that opens with a first-letter lookahead (a speed-up): the
# lookahead must let every alternative through, in any letter case.
_PHRASES = {
    "_FILLER": "hmm um uh okay so ok so alright let me think let me see you know basically i mean kind of sort of "
               "i guess just to be sure anyway so yeah well,",
    "_UNSUPPORTED": "obviously clearly trivially it is easy to see that it's clear that it is well-known it's well "
                    "known definitely certainly undoubtedly unquestionably evidently without a doubt no doubt for "
                    "sure it is certain guaranteed",
    "_RECHECK": "again once more recheck recalculated re-verify recap revisited recapitulating confirmed let me "
                "verify let's verify let us verify we can verify i can verify i'll verify we'll verify i will verify "
                "we will verify now verify quickly verify and verify then verify also verify verified verifying "
                "verification double-check cross check to ensure to make sure to be certain before proceeding "
                "before moving on",
    "_CORRECTION": "no, that's wrong. that is incorrect. i made a mistake. i miscalculated. my mistake. oops. "
                   "scratch that. wait, no. that can't be right.",
}


@pytest.mark.parametrize("name", sorted(_PHRASES))
def test_first_letter_lookaheads_change_no_match(name):
    import re

    from thinkrm import me2

    pattern = getattr(me2, name)
    plain = re.compile(re.sub(r"^\(\?=\[[^\]]*\]\)", "", pattern.pattern), pattern.flags)
    assert plain.pattern != pattern.pattern
    for text in (_PHRASES[name], _PHRASES[name].upper(), _PHRASES[name].title()):
        spans = [m.span() for m in pattern.finditer(text)]
        assert spans == [m.span() for m in plain.finditer(text)]
        assert len(spans) >= 9  # the phrases do match


def test_stated_numbers_are_the_numbers_restricted_to_the_values_asked_for():
    from thinkrm.me2 import _numbers, _stated

    text = "Twelve eggs, a DOZEN boxes, 1,500 cents, 3.5 km and twice 7; x2 and v1.5 are not numbers."
    assert _numbers(text) == {12.0, 1500.0, 3.5, 2.0, 7.0}
    for values in ({12.0}, {2.0, 99.0}, {0.25, 1500.0}, set()):
        assert _stated(text, values) == _numbers(text) & values


def test_case_traps_are_every_character_that_lowering_or_ignorecase_treats_differently():
    """The lowercased-text scans are exact only if `_CASE_TRAPS` lists every non-ASCII character whose lower
    case changes length, becomes ASCII or changes word/space class, or that matches an ASCII letter under
    re.IGNORECASE; derived here from this Python's Unicode tables."""
    import re

    from thinkrm.me2 import _CASE_TRAPS

    letter = re.compile("[a-z]", re.IGNORECASE)

    def word(c: str) -> bool:
        return c.isalnum() or c == "_"

    traps = set()
    for cp in range(128, 0x110000):
        c = chr(cp)
        if 0xD800 <= cp < 0xE000:
            continue
        low = c.lower()
        if (len(low) != 1 or low.isascii() or letter.fullmatch(c) or word(low) != word(c)
                or low.isspace() != c.isspace()):
            traps.add(c)
    assert traps == set(_CASE_TRAPS.pattern[1:-1])


def test_phrase_scans_agree_on_lowered_and_original_text():
    import re

    from thinkrm.dag import build_dag
    from thinkrm.me2 import _CASED, _Analyzer

    for pattern in _CASED:
        assert not re.search("[A-Z]", pattern.pattern.replace("\\b", "")), "the fast scan needs lower case"
    for trap in ("", " \u017fcratch that, \u0130 mean"):  # with a trap character the original text is scanned
        text = _PHRASES["_RECHECK"].title() + ". " + _PHRASES["_CORRECTION"].upper() + trap
        a = _Analyzer(build_dag(text), None)
        assert (a._lowered is None) == bool(trap)
        for pattern in _CASED:
            assert a.phrases(pattern) == [m.span() for m in pattern.finditer(text)]


def test_assign_scan_matches_its_plain_form():
    """`_ASSIGN` opens with its first letter and an implied `=` look-ahead (a speed-up): same matches as the
    plain pattern."""
    import re

    from thinkrm.me2 import _ASSIGN

    plain = re.compile(r"(?<![\w\\.^])([A-Za-z][A-Za-z_]{0,15}(?:_\{?\w+\}?)?)\s*=\s*(-?\d+(?:\.\d+)?)"
                       r"(?![\w^/*+({]|\.\d|\s*[-+*/^×÷=]\s*[\w(])")
    text = ("x = 3, y=4.5 and a_1 = 2; b_{12} =\n 7 but z = 3 + y, \\alpha = 2, f.x = 1, 2x = 4, "
            "abcdefghijklmnopqrstu = 9, n_k=-1, q = 5x, p = 2.5.\nx= 5 = y, w_{ab}c = 8, T = 10^2, s = 1/2")
    spans = [(m.span(), m.groups()) for m in _ASSIGN.finditer(text)]
    assert spans == [(m.span(), m.groups()) for m in plain.finditer(text)]
    assert len(spans) >= 5


def test_last_answer_line_is_the_last_match_of_the_scan():
    from thinkrm.me2 import _ANSWER_LINE, _last_answer_line

    texts = ["The answer is 5. Then the ANSWER: 7, and\nA: 8\n#####\n#### 9\nanswer is x",
             "answer is 3, answer: 4 ,a: 5\na: 6 - 1", "no answer here", "#### 12\n####", "Answer: 1,234.5"]
    for text in texts:
        last = None
        for last in _ANSWER_LINE.finditer(text):  # noqa: B007 - the last match
            pass
        found = _last_answer_line(text, text.lower())
        assert (found and found.span()) == (last and last.span())
