"""Best-of-N: selection rules on hand-built pools whose right answers are known, caching, input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from thinkrm.bon import AUTO_TEMPERATURE, Candidate, _Problem, best_of_n, evaluate_bon, load_candidates
from thinkrm.io import InputError
from thinkrm.scoring import Scorer


class CountingScorer(Scorer):
    """Scores by a marker in the reasoning ("quality=K"); counts what it was asked to score."""

    spec = "counting"

    def __init__(self):
        self.seen = 0

    def score(self, items):
        self.seen += len(items)
        return [float(r.split("quality=")[1].split()[0]) if "quality=" in r else 0.0 for _, r in items]


def pool(problem: str, answers: list[tuple[str, bool, float]], gold: str | None = None) -> list[dict]:
    """Candidates answering `answer` with a reasoning of quality q; `correct` given unless gold is."""
    rows = []
    for k, (answer, correct, q) in enumerate(answers):
        rec = {"problem_id": problem, "prompt": f"problem {problem}",
               "response": f"<think>quality={q} {'x' * (10 + 20 * k)}</think> \\boxed{{{answer}}}"}
        if gold is None:
            rec["correct"] = correct
        else:
            rec["gold"] = gold
        rows.append(rec)
    return rows


def test_each_rule_on_a_pool_where_the_answer_is_known():
    # Majority says 3 (wrong, written three ways); the scorer likes the right answer 4.
    rows = pool("p", [("3", False, 0), ("3.0", False, 0), ("\\frac{6}{2}", False, 0), ("4", True, 5),
                      ("4", True, 4)])
    result = best_of_n(rows, CountingScorer(), ns=[5], repeats=3, workers=1)
    assert result["ns"] == [5]
    acc = {k: v["5"]["mean"] for k, v in {**result["strategies"], **result["baselines"]}.items()}
    assert acc["argmax"] == 1.0
    assert acc["vote"] == acc["majority-vote"] == 0.0  # "3", "3.0" and 6/2 are one answer under math-verify
    assert acc["weighted-vote"] == 1.0  # softmax(5), softmax(4) outweigh three candidates at score 0
    assert acc["oracle"] == 1.0 and acc["random"] == pytest.approx(0.4)
    assert acc["shortest"] == 0.0 and acc["longest"] == 1.0


def test_n_is_capped_at_the_pool_size_and_ci_brackets_the_mean():
    rows = []
    for i in range(30):
        rows += pool(f"p{i}", [("1", i % 2 == 0, 1), ("2", i % 3 == 0, 2), ("3", False, 0)])
    result = best_of_n(rows, CountingScorer(), ns=[1, 2, 8, 16], repeats=5, workers=1)
    assert result["ns"] == [1, 2, 3]
    for rule in (*result["strategies"].values(), *result["baselines"].values()):
        for st in rule.values():
            assert st["ci_low"] <= st["mean"] <= st["ci_high"]
    # At N=1 every rule picks the one candidate it is given.
    firsts = {v["1"]["mean"] for v in (*result["strategies"].values(), *result["baselines"].values())}
    assert len(firsts) == 1
    # Oracle dominates every rule at every N.
    for n in ("2", "3"):
        top = result["baselines"]["oracle"][n]["mean"]
        assert all(v[n]["mean"] <= top + 1e-9 for v in result["strategies"].values())


def test_seeded_subsets_are_reproducible_and_depend_on_the_seed():
    rng = np.random.default_rng(0)
    problems = [_Problem(correct=rng.random(8) < 0.5, scores=rng.normal(size=8),
                         lengths=rng.integers(10, 99, 8), classes=rng.integers(0, 3, 8)) for _ in range(40)]
    a = evaluate_bon(problems, ns=[2, 4], repeats=5, seed=1)
    assert evaluate_bon(problems, ns=[2, 4], repeats=5, seed=1) == a
    assert evaluate_bon(problems, ns=[2, 4], repeats=5, seed=2) != a
    assert set(a["differences"]) == {"argmax - random", "weighted-vote - majority-vote",
                                     "argmax - majority-vote"}


def test_correct_is_computed_by_the_verifier_when_missing():
    rows = pool("g", [("0.5", None, 1), ("\\frac{1}{2}", None, 0), ("2", None, 3)], gold="1/2")
    result = best_of_n(rows, CountingScorer(), ns=[3], repeats=2, workers=1)
    assert result["timings"]["verify"]["verified"] == 3
    assert result["baselines"]["random"]["3"]["mean"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["strategies"]["argmax"]["3"]["mean"] == 0.0  # the scorer prefers the wrong "2"
    assert result["strategies"]["vote"]["3"]["mean"] == 1.0


def test_the_verifier_is_selectable():
    # "15" is option B only for the choice verifier, which reads the options from the prompt.
    prompt = "Which is 3 * 5?\nA. 12\nB. 15\nC. 18"
    rows = [{"problem_id": "mc", "prompt": prompt, "gold": "B",
             "response": f"<think>quality={q}</think> The answer is {answer}."}
            for answer, q in (("(B)", 1), ("15", 0), ("(C)", 3))]
    result = best_of_n(rows, CountingScorer(), ns=[3], repeats=2, workers=1, verifier="choice")
    assert result["timings"]["verify"]["verifier"] == "choice" and result["timings"]["verify"]["verified"] == 3
    assert result["baselines"]["random"]["3"]["mean"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["strategies"]["argmax"]["3"]["mean"] == 0.0  # the scorer prefers the wrong (C)
    with pytest.raises(ValueError, match="unknown verifier spec 'nope'"):
        best_of_n(rows, CountingScorer(), verifier="nope")


def test_scores_are_cached_once_per_distinct_input_and_resumed(tmp_path):
    rows = pool("a", [("1", True, 1), ("2", False, 2)]) + pool("b", [("1", True, 1), ("2", False, 2)])
    rows.append(dict(rows[0]))  # a duplicate candidate: same prompt and reasoning, scored once
    first = CountingScorer()
    r1 = best_of_n(rows, first, ns=[2], repeats=2, cache_dir=tmp_path, workers=1)
    assert first.seen == 4 and r1["timings"]["scoring"]["scored"] == 4
    (cache,) = tmp_path.glob("scores-counting-*.jsonl")
    lines = cache.read_text().splitlines()
    assert len(lines) == 4
    # A killed run leaves a torn line; the rerun keeps the finished scores and redoes only the rest.
    cache.write_text("\n".join(lines[:2]) + "\n" + lines[2][:7])
    second = CountingScorer()
    r2 = best_of_n(rows, second, ns=[2], repeats=2, cache_dir=tmp_path, workers=1)
    assert second.seen == 2 and r2["timings"]["scoring"]["cached"] == 2
    assert r2["strategies"] == r1["strategies"]
    third = CountingScorer()
    best_of_n(rows, third, ns=[2], repeats=2, cache_dir=tmp_path, workers=1)
    assert third.seen == 0


def test_real_scorer_specs_run(tmp_path):
    rows = pool("a", [("1", True, 1), ("2", False, 2), ("1", True, 0)])
    for spec in ("length", "random:3"):
        result = best_of_n(rows, spec, ns=[1, 2], repeats=5, cache_dir=tmp_path, workers=1)
        assert result["scorer"] == spec
    # length prefers the shortest reasoning, which here is the first (right) candidate.
    assert result["baselines"]["shortest"]["2"]["mean"] >= 0.0


@pytest.mark.parametrize("line, fragment", [
    ('{"prompt": "p", "response": "r", "correct": true}', "field 'problem_id': missing"),
    ('{"problem_id": 1, "prompt": "p", "response": 5, "correct": true}',
     "field 'response': expected a string"),
    ('{"problem_id": 1, "prompt": "p", "response": "r", "correct": "yes"}',
     "field 'correct': expected true/false"),
    ('{"problem_id": 1, "prompt": "p", "response": "r"}', "needs 'correct' or 'gold'"),
    ('{"problem_id": 1, "prompt": "p", "response": "r", "gold": [1]}', "field 'gold'"),
    ("not json", "invalid JSON"),
])
def test_bad_candidates_name_file_line_and_field(tmp_path, line, fragment):
    path = tmp_path / "c.jsonl"
    path.write_text('{"problem_id": 0, "prompt": "p", "response": "r", "correct": false}\n' + line + "\n")
    with pytest.raises(InputError) as err:
        load_candidates(path)
    assert f"{path}:2" in str(err.value) and fragment in str(err.value)


def test_bad_options_are_rejected():
    rows = pool("a", [("1", True, 1)])
    for kwargs, fragment in [({"strategies": ["best"]}, "unknown strategy"), ({"repeats": 0}, "repeats"),
                             ({"ns": [0]}, "positive"), ({"temperature": 0}, "temperature")]:
        with pytest.raises(ValueError, match=fragment):
            best_of_n(rows, CountingScorer(), **kwargs)


def test_candidate_key_ignores_the_answer_but_not_the_reasoning():
    a = Candidate("1", "p", "<think>r</think> \\boxed{1}", True)
    b = Candidate("1", "p", "<think>r</think> \\boxed{2}", False)
    c = Candidate("1", "p", "<think>s</think> \\boxed{1}", True)
    assert a.key == b.key != c.key


@pytest.mark.slow
@pytest.mark.shared_data
def test_gsm8k_pool_reproduces_the_published_baselines(shared_data):
    rows = [json.loads(line) for line in open(shared_data / "gsm8k-candidates" / "dev.jsonl")]
    result = best_of_n(rows, "length", ns=[4], repeats=5, workers=2)
    base = {k: v["4"]["mean"] for k, v in result["baselines"].items()}
    # ../shared/README.md: random 38.2%, shortest 33.3%, longest 39.2%, oracle 66.8%.
    assert base["random"] == pytest.approx(0.382, abs=0.005)
    assert base["shortest"] == pytest.approx(0.333, abs=0.01)
    assert base["longest"] == pytest.approx(0.392, abs=0.01)
    assert base["oracle"] == pytest.approx(0.668, abs=0.002)


class ScaledScorer(CountingScorer):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def score(self, items):
        return [self.factor * s for s in super().score(items)]


def test_auto_temperature_makes_weighted_vote_scale_free():
    rows = []
    for i in range(12):
        qualities = (i % 4, 3.5 - i % 4, 1.25, 2.75)  # all distinct, so argmax has no ties
        rows += pool(f"p{i}", list(zip(["1", "2", "2", "1"], [True, False, False, True], qualities)))
    small, big = (best_of_n(rows, ScaledScorer(f), ns=[2, 4], repeats=4, workers=1) for f in (0.01, 1000.0))
    assert small["strategies"]["weighted-vote"] == big["strategies"]["weighted-vote"]
    assert big["temperature"] == pytest.approx(1e5 * small["temperature"], rel=1e-3)
    # A fixed temperature is not scale-free: at T=1 the big scores turn weighted-vote into argmax.
    fixed = best_of_n(rows, ScaledScorer(1000.0), ns=[4], repeats=4, workers=1, temperature=1.0)
    assert fixed["strategies"]["weighted-vote"]["4"] == fixed["strategies"]["argmax"]["4"]


def test_auto_temperature_lets_scores_break_ties_but_not_outvote_agreement():
    # Each problem: two candidates agree on a wrong answer, one right candidate scores 2.1-2.7 standard
    # deviations above them (under the 4 ln 2 = 2.8 at which one candidate outweighs two), and a fourth,
    # right, sits in between.
    qualities = [0.0, 0.5, 2.5, 1.0]
    rows = []
    for i in range(6):
        rows += pool(f"p{i}", list(zip(["2", "2", "1", "1"], [False, False, True, True], qualities)))
    result = best_of_n(rows, CountingScorer(), ns=[3, 4], repeats=20, workers=1)
    assert result["temperature"] == pytest.approx(AUTO_TEMPERATURE * np.std(qualities), abs=1e-5)
    acc = {**result["strategies"], **result["baselines"]}
    # N=4 is a 2-2 tie for the vote (a coin flip); the right pair's higher scores decide it.
    assert acc["majority-vote"]["4"]["mean"] == pytest.approx(0.5, abs=0.2)
    assert acc["weighted-vote"]["4"]["mean"] == 1.0
    # N=3 with both wrong candidates drawn: two agreeing votes beat the one better-scored dissenter, as
    # majority vote says; a temperature of one standard deviation would let the score outvote them.
    assert acc["weighted-vote"]["3"] == acc["majority-vote"]["3"]
    sharp = best_of_n(rows, CountingScorer(), ns=[3], repeats=20, workers=1,
                      temperature=result["temperature"] / 4)
    assert sharp["strategies"]["weighted-vote"]["3"]["mean"] > acc["majority-vote"]["3"]["mean"]


def test_subsets_do_not_depend_on_which_rules_run():
    rng = np.random.default_rng(3)
    # Integer scores and two answer classes: weighted-vote has many ties to break at random.
    problems = [_Problem(correct=rng.random(6) < 0.5, scores=rng.integers(0, 2, 6).astype(float),
                         lengths=rng.integers(10, 99, 6), classes=rng.integers(0, 2, 6)) for _ in range(30)]
    everything = evaluate_bon(problems, ns=[4], repeats=4, seed=5)
    alone = evaluate_bon(problems, strategies=["argmax"], ns=[4], repeats=4, seed=5)
    assert alone["strategies"]["argmax"] == everything["strategies"]["argmax"]
    assert alone["baselines"]["random"] == everything["baselines"]["random"]


def test_score_caches_of_long_specs_with_a_shared_prefix_stay_apart(tmp_path):
    rows = pool("a", [("1", True, 1), ("2", False, 2)])
    base = "hf:/" + "very/long/shared/checkpoint/path/" * 3
    scorers = [CountingScorer(), CountingScorer()]
    for scorer, checkpoint in zip(scorers, ["checkpoint-1000", "checkpoint-2000"]):
        scorer.spec = base + checkpoint
        best_of_n(rows, scorer, ns=[2], repeats=1, cache_dir=tmp_path, workers=1)
    assert [s.seen for s in scorers] == [2, 2]  # the second checkpoint did not read the first one's scores
    caches = sorted(p.name for p in tmp_path.glob("scores-*.jsonl"))
    assert len(caches) == 2 and all(len(name) < 100 for name in caches), caches
