"""The scorer interface's promise, one finite score per item, is checked once and holds for every consumer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from thinkrm.cli import app
from thinkrm.scoring import BACKENDS, Scorer, checked_scores


class Broken(Scorer):
    """`broken:nan` scores a reasoning with "poison" in it NaN, `broken:inf` +inf; `broken:short` drops the
    last item's score."""

    def __init__(self, arg: str = "", **_):
        self.mode = arg

    def score(self, items):
        if self.mode == "short":
            return [float(len(r)) for _, r in items][:-1]
        bad = {"nan": math.nan, "inf": math.inf}[self.mode]
        return [bad if "poison" in r else float(len(r)) for _, r in items]


@pytest.fixture
def broken(monkeypatch):
    """A `broken:MODE` scorer spec, reachable from every command like any backend."""
    monkeypatch.setitem(BACKENDS, "broken", f"{__name__}:Broken")


ITEMS = [("Q", "a"), ("Q", "poison"), ("Q", "ccc")]


@pytest.mark.parametrize("mode, message", [
    ("nan", "scorer 'broken:nan' returned nan for item 1: expected a finite number"),
    ("inf", "scorer 'broken:inf' returned inf for item 1: expected a finite number"),
    ("short", "scorer 'broken:short' returned 2 scores for 3 items"),
])
def test_bad_scores_are_refused_naming_the_scorer_and_the_item(mode, message):
    scorer = Broken(mode)
    scorer.spec = f"broken:{mode}"
    with pytest.raises(ValueError) as e:
        checked_scores(scorer, ITEMS)
    assert str(e.value) == message


def test_good_scores_pass_as_plain_floats():
    class Numpy(Scorer):
        def score(self, items):
            return np.arange(len(items), dtype=np.float32)

    scores = checked_scores(Numpy(), ITEMS)
    assert scores == [0.0, 1.0, 2.0] and all(type(s) is float for s in scores)

    class Words(Scorer):
        def score(self, items):
            return ["1.0" for _ in items]

    with pytest.raises(ValueError, match=r"scorer 'Words' returned '1.0' for item 0"):
        checked_scores(Words(), ITEMS)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("mode", ["nan", "short"])
def test_score_eval_pairs_and_bon_refuse_a_broken_scorer(tmp_path, broken, mode):
    texts = ["fine", "poison", "also fine"]
    traces = _write(tmp_path / "traces.jsonl", [{"id": str(i), "prompt": "Q", "reasoning": t}
                                                 for i, t in enumerate(texts)])
    pairs = _write(tmp_path / "pairs.jsonl", [{"id": str(i), "prompt": "Q", "chosen": "good " + t,
                                               "rejected": t} for i, t in enumerate(texts)])
    cands = _write(tmp_path / "cands.jsonl", [{"problem_id": "p", "prompt": "Q", "correct": i == 0,
                                               "response": f"<think>{t}</think> \\boxed{{{i}}}"}
                                              for i, t in enumerate(texts)])
    runs = {
        "score": ["score", traces, "--scorer", f"broken:{mode}", "-o", tmp_path / "scored.jsonl"],
        "eval-pairs": ["eval-pairs", pairs, "--scorer", f"broken:{mode}", "-o", tmp_path / "eval"],
        "bon": ["bon", cands, "--scorer", f"broken:{mode}", "-o", tmp_path / "bon", "--workers", "1"],
    }
    for command, args in runs.items():
        res = CliRunner().invoke(app, [str(a) for a in args])
        said = " ".join(res.output.split())
        assert res.exit_code == 2, (command, res.output)
        assert f"scorer 'broken:{mode}' returned" in said and "Traceback" not in said, command
    assert not (tmp_path / "eval" / "results.json").exists() and not (tmp_path / "bon" / "bon.json").exists()


def test_the_rl_reward_refuses_a_broken_scorer(broken):
    from thinkrm.rewards import ThinkingReward

    right, poisoned = "<think>3 + 4 = 7</think> \\boxed{7}", "<think>poison: 3 + 4 = 7</think> \\boxed{7}"
    with pytest.raises(ValueError, match="scorer 'broken:nan' returned nan for item 1"):
        ThinkingReward("broken:nan", normalize="none").compute(["3 + 4?"] * 2, [right, poisoned], ["7", "7"])
