import json

import pytest

from thinkrm.evaluate import evaluate_pairs, length_matched
from thinkrm.pairs import Pair
from thinkrm.scoring import Scorer


class CountGood(Scorer):
    """Scores a reasoning by how often it says 'good'; records call sizes."""

    spec = "count-good"

    def __init__(self):
        self.calls = []

    def score(self, items):
        self.calls.append(len(items))
        return [float(r.count("good")) for _, r in items]


ROWS = [
    {"id": "p1", "prompt": "Q", "chosen": "good good", "rejected": "bad", "kind": "a"},
    {"id": "p2", "prompt": "Q", "chosen": "good.", "rejected": "good!", "kind": "a"},
    "{broken",
    {"id": "p3", "prompt": "Q", "chosen": "ok", "rejected": "good", "kind": "b"},
    {"id": "dup", "prompt": "Q", "chosen": "same", "rejected": "same"},
    {"id": "p4", "prompt": "Q", "chosen": "good", "rejected": "badbadbad"},
    {"id": "nor", "prompt": "Q", "chosen": "x"},
]


@pytest.fixture
def pairs_file(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in ROWS))
    return p


def test_accuracy_ties_kinds_length_baseline_and_bad_rows(pairs_file):
    rows = []
    scorer = CountGood()
    res = evaluate_pairs(pairs_file, scorer, chunk_size=3, on_pair=rows.append)
    assert scorer.calls == [6, 2]  # both sides of a chunk in one call
    got = (res["scorer"], res["num_pairs"], res["correct"], res["ties"], res["accuracy"])
    assert got == ("count-good", 4, 2, 1, 0.5)
    assert res["per_kind"] == {"a": {"accuracy": 0.5, "num_pairs": 2, "correct": 1, "ties": 1},
                               "b": {"accuracy": 0.0, "num_pairs": 1, "correct": 0, "ties": 0}}
    assert res["length_matched"] == {"tolerance": 0.1, "accuracy": 0.0, "num_pairs": 1, "correct": 0,
                                     "ties": 1}
    base = res["baselines"]["length"]
    assert (base["accuracy"], base["ties"]) == (0.5, 1)
    assert base["per_kind"]["a"]["correct"] == 0 and base["per_kind"]["b"]["correct"] == 1
    assert res["bad_rows"]["count"] == 3
    lines = [e.split(": ")[0] for e in res["bad_rows"]["examples"]]
    assert lines == [f"{pairs_file}:3", f"{pairs_file}:5", f"{pairs_file}:7"]
    assert "identical" in res["bad_rows"]["examples"][1] and "'rejected'" in res["bad_rows"]["examples"][2]
    assert rows == [
        {"id": "p1", "scores_chosen": 2.0, "scores_rejected": 0.0, "results": 1, "kind": "a"},
        {"id": "p2", "scores_chosen": 1.0, "scores_rejected": 1.0, "results": 0, "kind": "a"},
        {"id": "p3", "scores_chosen": 0.0, "scores_rejected": 1.0, "results": 0, "kind": "b"},
        {"id": "p4", "scores_chosen": 1.0, "scores_rejected": 0.0, "results": 1},
    ]
    json.dumps(res)  # results.json material


def test_constant_scorer_gets_zero_not_half():
    class Const(Scorer):
        def score(self, items):
            return [1.0] * len(items)

    pairs = [Pair(id=str(i), prompt="Q", chosen="a" * (i + 1), rejected="b" * (i + 5)) for i in range(5)]
    res = evaluate_pairs(pairs, Const())
    assert (res["accuracy"], res["ties"]) == (0.0, 5)
    assert res["baselines"]["length"]["accuracy"] == 1.0  # chosen is always shorter here
    assert "per_kind" not in res


def test_length_spec_matches_its_own_baseline_and_empty_input(pairs_file, tmp_path):
    res = evaluate_pairs(pairs_file, "length")
    assert {k: res[k] for k in ("accuracy", "ties", "per_kind")} == \
        {k: res["baselines"]["length"][k] for k in ("accuracy", "ties", "per_kind")}
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert evaluate_pairs(empty, "random")["accuracy"] is None


def test_length_matched_definition():
    def mk(a, b):
        return Pair(id="x", prompt="Q", chosen="c" * a, rejected="r" * b)

    assert length_matched(mk(100, 90)) and length_matched(mk(90, 100))
    assert not length_matched(mk(100, 89)) and not length_matched(mk(10, 100))


def test_scorer_returning_wrong_count_is_an_error():
    class Short(Scorer):
        spec = "short"

        def score(self, items):
            return [0.0]

    with pytest.raises(ValueError, match="'short' returned 1 scores for 2 items"):
        evaluate_pairs([Pair(id="1", prompt="Q", chosen="a", rejected="b")], Short())


@pytest.mark.slow
@pytest.mark.shared_data
def test_hf_scorer_on_shared_prmbench_sample(shared_data, tiny_reward_model, tmp_path):
    from itertools import islice

    from thinkrm.pairs import load_pairs

    pairs = list(islice(load_pairs(shared_data / "prmbench-train" / "pairs.jsonl", skip_bad=True), 16))
    res = evaluate_pairs(pairs, f"hf:{tiny_reward_model}")
    assert res["num_pairs"] == 16 and set(res["per_kind"]) == {p.kind for p in pairs}
    assert 0 <= res["accuracy"] <= 1
